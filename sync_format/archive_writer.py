"""Write a complete archive into a synced temp file: the one writing path of builder and swap.

Entries are written STORED in the order given, the payload is streamed once (CRC-32 and BLAKE3 computed in
the same pass) and ``state.json`` is written last, describing the payload just written. The result is a
temp file next to the target that the caller publishes (``atomic.publish``) when its own checks pass;
on any error the temp file is removed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import blake3

from sync_format.atomic import create_temp, discard, sync_file
from sync_format.errors import ArchiveError
from sync_format.payload_io import PayloadDigest
from sync_format.reader import PAYLOAD_ENTRY, open_regular
from sync_format.state import STATE_ENTRY, ArchiveState
from sync_format.zip_writer import Progress, ZipWriter

#: Largest payload we write by default: no limit but the filesystem's (ZIP64 is written when needed).
UNLIMITED = -1


@dataclass(frozen=True)
class _OpenedPayload:
    file: IO[bytes]
    stat: os.stat_result


def _regular_payload(path: Path) -> _OpenedPayload:
    # ``path`` opened when it is a regular file (``open_regular``: a FIFO is refused at once, not waited on).
    try:
        fd, st = open_regular(path)
    except OSError as exc:
        raise ArchiveError(f"cannot read payload: {exc.strerror}", path=path) from exc
    return _OpenedPayload(os.fdopen(fd, "rb"), st)


@dataclass(frozen=True)
class PayloadSource:
    """Where payload bytes come from, with their size known before writing starts.

    Attributes:
        size: Exact number of bytes the source yields.
        description: For error messages (a path, or "bytes").
    """

    size: int
    description: str
    _open: Callable[[], IO[bytes]]
    _owned: bool = True

    @classmethod
    def from_bytes(cls, data: bytes) -> PayloadSource:
        """Payload held in memory.

        Args:
            data: The payload.

        Returns:
            The source.
        """
        return cls(len(data), "bytes", lambda: io.BytesIO(data))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> PayloadSource:
        """Payload streamed from a file.

        Args:
            path: A regular file.

        Returns:
            The source.

        Raises:
            ArchiveError: The file cannot be stat'ed or is not a regular file.
        """
        p = Path(path)
        measured = _regular_payload(p)
        measured.file.close()
        st = measured.stat
        version = (st.st_dev, st.st_ino, st.st_size)

        def reopen() -> IO[bytes]:
            # The file is opened again when written: it must still be the one measured (not swapped for
            # another, nor for a FIFO that would block the open), or its size would not hold.
            opened = _regular_payload(p)
            now = opened.stat
            if (now.st_dev, now.st_ino, now.st_size) != version:
                opened.file.close()
                raise ArchiveError("payload source changed since it was measured", path=p)
            return opened.file

        return cls(st.st_size, str(p), reopen)

    @classmethod
    def from_stream(cls, stream: IO[bytes], size: int) -> PayloadSource:
        """Payload read from an open stream that yields exactly ``size`` bytes (not closed by us).

        Args:
            stream: Readable binary stream.
            size: Number of bytes it will yield.

        Returns:
            The source.
        """
        return cls(size, "stream", lambda: stream, _owned=False)

    def open(self) -> IO[bytes]:
        """Open the underlying stream.

        Returns:
            A readable binary stream.
        """
        return self._open()


@dataclass(frozen=True)
class TempArchive:
    """A fully written, synced archive in a temp file that has not been published yet.

    Attributes:
        temp: The temp file's path (next to the target).
        target: Where it will be published.
        digest: Size, CRC-32 and BLAKE3 of the payload written.
        payload_offset: Data offset of the payload in the new file.
        state: The state written into ``state.json``, or None when none was written.
    """

    temp: Path
    target: Path
    digest: PayloadDigest
    payload_offset: int
    state: ArchiveState | None


def write_temp_archive(
    target: Path,
    leading: Sequence[tuple[str, bytes]],
    payload: PayloadSource,
    trailing: Sequence[tuple[str, bytes]] = (),
    *,
    state_for: Callable[[PayloadDigest], ArchiveState] | None = None,
    max_payload_size: int = UNLIMITED,
    progress: Progress | None = None,
) -> TempArchive:
    """Write ``leading`` entries, the payload, ``trailing`` entries and the state into a temp file.

    Args:
        target: The archive path the temp file will replace (its directory must exist).
        leading: Entries before the payload, in order.
        payload: The payload source.
        trailing: Entries after the payload, in order.
        state_for: Builds the ``state.json`` content from the payload digest; None writes no state.
        max_payload_size: Refuse payloads larger than this many bytes (``UNLIMITED`` for no cap).
        progress: Called with the number of payload bytes copied so far.

    Returns:
        The synced temp archive.

    Raises:
        ArchiveError: A name is reserved or repeated, the payload is too large or its source misbehaves,
            or the file cannot be written. The temp file is removed.
    """
    names = [name for name, _ in (*leading, *trailing)]
    reserved = {PAYLOAD_ENTRY, STATE_ENTRY} & set(names)
    if reserved or len(set(names)) != len(names):
        raise ArchiveError(f"entry names must be unique and not reserved: {sorted(names)}", path=target)
    if 0 <= max_payload_size < payload.size:
        raise ArchiveError(
            f"payload of {payload.size} bytes exceeds the limit of {max_payload_size}", path=target
        )
    temp, handle = create_temp(target)
    try:
        with handle:
            writer = ZipWriter(handle)
            for name, data in leading:
                writer.add_bytes(name, data)
            hasher = blake3.blake3()
            source = payload.open()
            try:
                entry = writer.add_stream(
                    PAYLOAD_ENTRY, source, payload.size, on_block=hasher.update, progress=progress
                )
            finally:
                if payload._owned:
                    source.close()
            digest = PayloadDigest(size=entry.size, crc32=entry.crc32, blake3=hasher.hexdigest())
            for name, data in trailing:
                writer.add_bytes(name, data)
            state = None
            if state_for is not None:
                state = state_for(digest)
                writer.add_bytes(STATE_ENTRY, state.to_json())
            writer.finish()
            sync_file(handle)
    except OSError as exc:
        discard(temp)
        raise ArchiveError(f"cannot write archive: {exc.strerror}", path=target) from exc
    except BaseException:
        discard(temp)
        raise
    return TempArchive(temp, target, digest, entry.data_offset, state)
