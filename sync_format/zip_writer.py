"""Write STORED ZIP records exactly as the reference writer does (spec §1.4), with ZIP64 when needed.

For archives under 4 GiB the output is byte-identical to the reference's ``zip`` 2.4.2 without optional
features: version 10, DOS date 1980-01-01, no extra fields, external attributes 0644, CRC patched after the
data. Entries or offsets past 4 GiB - 1 get ZIP64 extra fields and end records (the reference cannot write
these at all, spec §9 D21). Data is streamed in blocks; nothing is buffered whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, BinaryIO

from sync_format.errors import ArchiveError
from sync_format.zip_reader import (
    CENTRAL_SIG,
    EOCD_SIG,
    FLAG_UTF8,
    LOCAL_SIG,
    MAX_ENTRIES,
    U16_MAX,
    U32_MAX,
    ZIP64_EOCD_SIG,
    ZIP64_EXTRA_ID,
    ZIP64_LOCATOR_SIG,
)

#: Copy block size in bytes: large enough that per-block Python overhead vanishes, small enough for RSS.
COPY_BLOCK = 1024 * 1024

_VERSION_NEEDED = 10
_VERSION_NEEDED_ZIP64 = 45
_MADE_BY_UNIX = 0x0300
_DOS_TIME = 0x0000
_DOS_DATE = 0x0021  # 1980-01-01: the reference's zip library is built without its "time" feature
_EXTERNAL_ATTRS = 0o100644 << 16

#: Called with the number of bytes copied so far; used for progress bars.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class WrittenEntry:
    """What the writer recorded about one entry (for the central directory and for callers).

    Attributes:
        name: Entry name.
        header_offset: Offset of its local header.
        data_offset: Offset of its first data byte.
        size: Data length.
        crc32: CRC-32 of the data.
        zip64: Whether the local header carries a ZIP64 extra field.
    """

    name: str
    header_offset: int
    data_offset: int
    size: int
    crc32: int
    zip64: bool


class ZipWriter:
    """Append STORED entries to a seekable, writable binary file, then finish with the directory."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._entries: list[WrittenEntry] = []
        self._pos = out.tell()
        if self._pos != 0:
            raise ArchiveError("ZipWriter must start at the beginning of an empty file")

    @property
    def entries(self) -> tuple[WrittenEntry, ...]:
        """Entries written so far, in order."""
        return tuple(self._entries)

    def add_bytes(self, name: str, data: bytes) -> WrittenEntry:
        """Write an entry from memory.

        Args:
            name: Entry name.
            data: Its bytes.

        Returns:
            The recorded entry.
        """
        return self._add(name, len(data), lambda out: self._write_block(out, data))

    def add_stream(
        self,
        name: str,
        source: IO[bytes],
        size: int,
        *,
        on_block: Callable[[bytes], object] | None = None,
        progress: Progress | None = None,
    ) -> WrittenEntry:
        """Write an entry by copying exactly ``size`` bytes from ``source`` in blocks.

        Args:
            name: Entry name.
            source: Readable binary stream positioned at the data.
            size: Number of bytes that must follow; fewer or more is an error.
            on_block: Called with each block (e.g. to hash the data in the same pass).
            progress: Called with the running byte count.

        Returns:
            The recorded entry.

        Raises:
            ArchiveError: The source ended early or had more data than declared.
        """

        def copy(out: BinaryIO) -> int:
            crc = 0
            done = 0
            while done < size:
                block = source.read(min(COPY_BLOCK, size - done))
                if not block:
                    raise ArchiveError(f"{name}: source ended after {done} of {size} bytes")
                crc = zlib.crc32(block, crc)
                out.write(block)
                if on_block is not None:
                    on_block(block)
                done += len(block)
                if progress is not None:
                    progress(done)
            if source.read(1):
                raise ArchiveError(f"{name}: source has more than the declared {size} bytes")
            return crc

        return self._add(name, size, copy)

    @staticmethod
    def _write_block(out: BinaryIO, data: bytes) -> int:
        out.write(data)
        return zlib.crc32(data)

    def _add(self, name: str, size: int, write_data: Callable[[BinaryIO], int]) -> WrittenEntry:
        if len(self._entries) >= MAX_ENTRIES:
            raise ArchiveError(f"more than {MAX_ENTRIES} entries")
        raw_name = name.encode("utf-8")
        flags = 0 if name.isascii() else FLAG_UTF8
        header_offset = self._pos
        zip64 = size >= U32_MAX
        extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, size, size) if zip64 else b""
        header = struct.pack(
            "<4s5H3L2H",
            LOCAL_SIG,
            _VERSION_NEEDED_ZIP64 if zip64 else _VERSION_NEEDED,
            flags,
            0,
            _DOS_TIME,
            _DOS_DATE,
            0,  # CRC-32, patched below once the data is written
            U32_MAX if zip64 else size,
            U32_MAX if zip64 else size,
            len(raw_name),
            len(extra),
        )
        out = self._out
        out.write(header + raw_name + extra)
        data_offset = header_offset + len(header) + len(raw_name) + len(extra)
        crc = write_data(out)
        end = data_offset + size
        out.seek(header_offset + 14)
        out.write(struct.pack("<L", crc))
        out.seek(end)
        self._pos = end
        entry = WrittenEntry(name, header_offset, data_offset, size, crc, zip64)
        self._entries.append(entry)
        return entry

    def finish(self) -> int:
        """Write the central directory and end records.

        Returns:
            The total file size.
        """
        cd_offset = self._pos
        records = []
        for e in self._entries:
            raw_name = e.name.encode("utf-8")
            big_size = e.size >= U32_MAX
            big_offset = e.header_offset >= U32_MAX
            values = ([e.size, e.size] if big_size else []) + ([e.header_offset] if big_offset else [])
            extra = (
                struct.pack(f"<HH{len(values)}Q", ZIP64_EXTRA_ID, 8 * len(values), *values) if values else b""
            )
            needed = _VERSION_NEEDED_ZIP64 if (e.zip64 or values) else _VERSION_NEEDED
            records.append(
                struct.pack(
                    "<4s6H3L5H2L",
                    CENTRAL_SIG,
                    _MADE_BY_UNIX | needed,
                    needed,
                    0 if e.name.isascii() else FLAG_UTF8,
                    0,
                    _DOS_TIME,
                    _DOS_DATE,
                    e.crc32,
                    U32_MAX if big_size else e.size,
                    U32_MAX if big_size else e.size,
                    len(raw_name),
                    len(extra),
                    0,
                    0,
                    0,
                    _EXTERNAL_ATTRS,
                    U32_MAX if big_offset else e.header_offset,
                )
                + raw_name
                + extra
            )
        cd = b"".join(records)
        count = len(self._entries)
        cd_end = cd_offset + len(cd)
        tail = b""
        needs_zip64 = cd_offset >= U32_MAX or len(cd) >= U32_MAX or count >= U16_MAX
        if needs_zip64:
            tail += struct.pack(
                "<4sQ2H2L4Q",
                ZIP64_EOCD_SIG,
                44,
                _MADE_BY_UNIX | _VERSION_NEEDED_ZIP64,
                _VERSION_NEEDED_ZIP64,
                0,
                0,
                count,
                count,
                len(cd),
                cd_offset,
            )
            tail += struct.pack("<4sLQL", ZIP64_LOCATOR_SIG, 0, cd_end, 1)
        tail += struct.pack(
            "<4s4H2LH",
            EOCD_SIG,
            0,
            0,
            min(count, U16_MAX),
            min(count, U16_MAX),
            min(len(cd), U32_MAX),
            min(cd_offset, U32_MAX),
            0,
        )
        self._out.write(cd + tail)
        self._pos = cd_end + len(tail)
        return self._pos
