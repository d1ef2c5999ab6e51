"""A seekable, bounded, read-only view of an archive's payload bytes (zero-copy reads with ``os.pread``).

The reader owns a duplicate of the snapshot's file descriptor, so it stays valid after the snapshot is
closed and keeps reading the inode it was opened on: a swap that replaces the archive mid-download never
mixes old and new bytes. Reads never go past the payload's end, whatever the caller asks for.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import blake3

from sync_format.errors import MalformedArchive

#: Block size for whole-payload passes (hashing, copying), in bytes.
READ_BLOCK = 1024 * 1024


class PayloadReader(io.RawIOBase):
    """File-like access to ``size`` bytes starting at ``offset`` of a file descriptor."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        """Wrap a span of a file.

        Args:
            fd: A file descriptor the reader takes ownership of (it is closed with the reader).
            offset: Absolute offset of the first payload byte.
            size: Payload length in bytes.
        """
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._size = size
        self._pos = 0

    @property
    def size(self) -> int:
        """Payload length in bytes."""
        return self._size

    @property
    def span(self) -> tuple[int, int, int]:
        """``(fd, offset, size)`` of the payload in the file, for ``os.sendfile``-style transfers."""
        return self._fd, self._offset, self._size

    def readable(self) -> bool:
        """Payload readers are readable."""
        return True

    def seekable(self) -> bool:
        """Payload readers are seekable."""
        return True

    def tell(self) -> int:
        """Current position relative to the payload start."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within the payload; positions past the end are allowed and read as EOF.

        Args:
            offset: Relative offset.
            whence: ``SEEK_SET``, ``SEEK_CUR`` or ``SEEK_END``.

        Returns:
            The new position.

        Raises:
            ValueError: The new position would be negative or ``whence`` is unknown.
        """
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all remaining bytes when negative or None).

        Args:
            size: Maximum number of bytes.

        Returns:
            The bytes; empty at the end of the payload.
        """
        self._check_closed()
        remaining = self._size - self._pos
        if remaining <= 0:
            return b""
        n = remaining if size is None or size < 0 else min(size, remaining)
        data = os.pread(self._fd, n, self._offset + self._pos)
        if len(data) < n and self._pos + len(data) < self._size:
            # The file shrank under us: an archive is never truncated in place by us, so this is outside
            # interference; report it instead of returning a silently short payload.
            raise MalformedArchive("archive file shrank while its payload was being read")
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        """Read to the end of the payload.

        Returns:
            The remaining bytes.
        """
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # RawIOBase takes any writable buffer
        """Read into a caller's buffer without an intermediate copy.

        Args:
            buffer: A writable buffer.

        Returns:
            Number of bytes read; 0 at the end.
        """
        self._check_closed()
        remaining = self._size - self._pos
        if remaining <= 0:
            return 0
        view = buffer if isinstance(buffer, bytearray) else memoryview(buffer).cast("B")
        if len(view) > remaining:
            view = memoryview(view)[:remaining]
        # The common case (a bytearray inside the payload) passes the caller's buffer to preadv untouched:
        # no view, no slice, no copy.
        got = os.preadv(self._fd, [view], self._offset + self._pos)
        self._pos += got
        return got

    def iter_blocks(self, block: int = READ_BLOCK) -> Iterator[bytes]:
        """Yield the rest of the payload in blocks.

        Args:
            block: Block size in bytes.

        Yields:
            Consecutive blocks until the end.
        """
        while True:
            data = self.read(block)
            if not data:
                return
            yield data

    def close(self) -> None:
        """Close the reader and its file descriptor (idempotent)."""
        if not self.closed:
            os.close(self._fd)
        super().close()

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed payload reader")


@dataclass(frozen=True)
class PayloadDigest:
    """Digests of a payload computed in one pass.

    Attributes:
        size: Bytes read.
        crc32: CRC-32 (as stored in ZIP records).
        blake3: Lowercase hex BLAKE3.
    """

    size: int
    crc32: int
    blake3: str


def digest_stream(reader: io.RawIOBase | PayloadReader, block: int = READ_BLOCK) -> PayloadDigest:
    """Hash everything a reader yields, in blocks.

    Args:
        reader: A readable binary stream.
        block: Block size in bytes.

    Returns:
        Size, CRC-32 and BLAKE3 of the bytes read.
    """
    hasher = blake3.blake3()
    crc = 0
    size = 0
    while True:
        data = reader.read(block)
        if not data:
            break
        hasher.update(data)
        crc = zlib.crc32(data, crc)
        size += len(data)
    return PayloadDigest(size=size, crc32=crc, blake3=hasher.hexdigest())
