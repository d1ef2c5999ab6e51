"""Strict, one-pass reading of a ZIP central directory and its local headers (spec §1.5, §1.6, §9 D11).

Everything the reference leaves unchecked is checked here, before any consumer sees an offset:
the end record is where it claims to be; the central directory lies inside the file; entry names are
plain (no absolute, ``..``, backslash or NUL, no duplicates); nothing is encrypted; only STORED and (for
small non-payload entries) DEFLATE are accepted; every local header matches its central record (name,
method, sizes, CRC); data offsets come from the local header; entries do not overlap and end before the
central directory. ZIP64 records and extra fields are understood. Every failure is a ``MalformedArchive``
that says where.

Opening is on the path of a first listing (every archive of a never-seen store is opened once), so the
usual case is kept lean: the tail read first holds the whole of a small archive, and a local header inside
it that agrees with its central record in every checked field is accepted inline; any other header, and
every refusal, goes through the one full check (``_Parser._local_header``). Tests compare both ways on the
malformed and fuzzed archives of ``tests/format``.

This module knows ZIP, not ``.sync``: which entries must exist and how they are decoded is the job of
``reader.py``.
"""

from __future__ import annotations

# Imported now, not at the first entry name without the UTF-8 flag: a process forked from a threaded one
# (mountd.dav.parallel_opens) may have copied the import lock while another thread held it.
import encodings.cp437  # noqa: F401
import os
import re
import struct
import zlib
from operator import attrgetter
from typing import NamedTuple

from sync_format.errors import MalformedArchive

EOCD_SIG = b"PK\x05\x06"
ZIP64_EOCD_SIG = b"PK\x06\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
CENTRAL_SIG = b"PK\x01\x02"
LOCAL_SIG = b"PK\x03\x04"

EOCD_SIZE = 22
ZIP64_LOCATOR_SIZE = 20
ZIP64_EOCD_SIZE = 56
CENTRAL_SIZE = 46
LOCAL_SIZE = 30
MAX_COMMENT = 0xFFFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF

METHOD_STORED = 0
METHOD_DEFLATED = 8
FLAG_ENCRYPTED = 0x0001
FLAG_DATA_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
ZIP64_EXTRA_ID = 0x0001

#: Bytes read at a time while opening: the tail first, then around each local header not yet read.
WINDOW = 8 * 1024
#: At most this many entries: a .sync needs six; the rest is room for extra entries, not for zip bombs.
MAX_ENTRIES = 256
#: Central directories larger than this (bytes) are refused before they are read.
MAX_CENTRAL_DIRECTORY = 4 * 1024 * 1024
#: Deflate never expands data by more than a few bytes per block, so compressed input above twice the
#: uncompressed limit is refused unread.
MAX_DEFLATE_INPUT_FACTOR = 2

#: C0 control characters and DEL, never part of an entry name a writer means.
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")
#: Entry names every .sync archive uses, already checked: their records skip decoding and name checks.
_KNOWN_NAMES = {
    raw.encode("ascii"): raw
    for raw in ("manifest.toml", "payload", "sync.wasm", "state.json", "context.json", "sync.proof")
}

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
#: The fields of a central record the reader uses (signature, flags, method, CRC, sizes, the three lengths,
#: disk, header offset), skipping the others: fewer values to make per entry.
_CENTRAL_USED = struct.Struct("<4s4x2H4x3L4H6xL")
_LOCAL = struct.Struct("<4s5H3L2H")
_U16 = struct.Struct("<H")
_by_header_offset = attrgetter("header_offset")


class EntryInfo(NamedTuple):
    """One validated entry (a named tuple: an open makes several, and a frozen dataclass cost 2 µs each).

    Attributes:
        name: Entry name as stored.
        method: 0 (stored) or 8 (deflated).
        flags: General-purpose flags from the central directory.
        crc32: CRC-32 of the uncompressed data.
        compressed_size: Bytes of data in the file.
        size: Uncompressed size.
        header_offset: Offset of the local file header.
        data_offset: Offset of the first data byte, from the local header's own lengths.
    """

    name: str
    method: int
    flags: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int

    @property
    def data_end(self) -> int:
        """Offset one past the last data byte."""
        return self.data_offset + self.compressed_size


class ZipDirectory(NamedTuple):
    """The validated central directory of one file (a named tuple, as ``EntryInfo``: one per open).

    Attributes:
        entries: Entries in central-directory order.
        cd_offset: Offset of the central directory.
        file_size: Size of the file the directory was read from.
    """

    entries: tuple[EntryInfo, ...]
    cd_offset: int
    file_size: int

    def get(self, name: str) -> EntryInfo | None:
        """Look up an entry by exact name.

        Args:
            name: Entry name.

        Returns:
            The entry, or None when absent.
        """
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


class FileWindows:
    """Byte ranges of one file already read during an open, so that nothing is read twice.

    Opening an archive touches the end records, the central directory, a local header per entry and the
    manifest and state entries. In a small archive all of them lie in the one tail read; in a large one
    they cluster at the start and the end. A miss reads at least ``WINDOW`` bytes, so the manifest that
    follows its local header usually comes with it. Holds the bytes only while an open runs.
    """

    __slots__ = ("_fd", "_path", "_size", "_spans")

    def __init__(self, fd: int, file_size: int, path: str | None = None) -> None:
        self._fd = fd
        self._size = file_size
        self._path = path
        self._spans: list[tuple[int, bytes]] = []

    def load(self, size: int, offset: int) -> bytes:
        """Read exactly ``size`` bytes at ``offset`` with one ``pread`` and remember them.

        Raises:
            MalformedArchive: The file ends early or the read fails.
        """
        data = _pread_exact(self._fd, size, offset, self._path)
        self._spans.append((offset, data))
        return data

    def read(self, size: int, offset: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, from a remembered range or one ``pread``.

        Raises:
            MalformedArchive: The file ends before ``offset + size`` or the read fails.
        """
        for start, data in self._spans:
            rel = offset - start
            if rel >= 0 and rel + size <= len(data):
                return data[rel : rel + size]
        want = max(size, min(WINDOW, self._size - offset))
        if want == size:
            return _pread_exact(self._fd, size, offset, self._path)
        return self.load(want, offset)[:size]


def read_directory(fd: int, file_size: int, *, path: str | None = None) -> ZipDirectory:
    """Read and validate the central directory and every local header.

    Args:
        fd: An open file descriptor of the archive (read with ``os.pread``; its offset is untouched).
        file_size: The file's size from ``fstat`` on the same fd.
        path: Used in error messages only.

    Returns:
        The validated directory.

    Raises:
        MalformedArchive: On any violation; ``offset`` points at the record at fault.
    """
    return _Parser(FileWindows(fd, file_size, path), file_size, path).parse()


def read_directory_windows(
    fd: int, file_size: int, *, path: str | None = None
) -> tuple[ZipDirectory, FileWindows]:
    """``read_directory``, also returning the ranges it read (``read_entry_data`` can reuse them).

    Args:
        fd: An open file descriptor of the archive.
        file_size: The file's size from ``fstat`` on the same fd.
        path: Used in error messages only.

    Returns:
        The validated directory and the file ranges read while validating it.

    Raises:
        MalformedArchive: As ``read_directory``.
    """
    windows = FileWindows(fd, file_size, path)
    return _Parser(windows, file_size, path).parse(), windows


def read_entry_data(
    fd: int, entry: EntryInfo, *, limit: int, path: str | None = None, windows: FileWindows | None = None
) -> bytes:
    """Read an entry's bytes completely, inflating if needed, capped, and check its CRC-32.

    Args:
        fd: Archive file descriptor.
        entry: A validated entry of that archive.
        limit: Largest uncompressed size accepted, in bytes.
        path: Used in error messages only.
        windows: Ranges already read during the open (they are used when they cover the entry).

    Returns:
        The entry's uncompressed bytes.

    Raises:
        MalformedArchive: The entry is larger than ``limit``, fails to inflate, or its CRC does not match.
    """
    if entry.size > limit or entry.compressed_size > limit * MAX_DEFLATE_INPUT_FACTOR:
        raise MalformedArchive(
            f"entry {entry.name!r} is {entry.size} bytes, more than the limit of {limit}",
            path=path,
            offset=entry.header_offset,
        )
    if windows is not None:
        raw = windows.read(entry.compressed_size, entry.data_offset)
    else:
        raw = _pread_exact(fd, entry.compressed_size, entry.data_offset, path)
    if entry.method == METHOD_DEFLATED:
        # Compressed size is bounded by the caller's limit times a generous ratio; the output is capped
        # by max_length so a deflate bomb cannot allocate beyond ``limit + 1`` bytes.
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise MalformedArchive(
                f"entry {entry.name!r} does not inflate: {exc}", path=path, offset=entry.data_offset
            ) from exc
        if len(data) != entry.size or inflater.unconsumed_tail:
            raise MalformedArchive(
                f"entry {entry.name!r} inflates to a size other than the declared {entry.size}",
                path=path,
                offset=entry.data_offset,
            )
    else:
        data = raw
    if zlib.crc32(data) != entry.crc32:
        raise MalformedArchive(
            f"entry {entry.name!r} fails its CRC-32 check", path=path, offset=entry.data_offset
        )
    return data


def _pread_exact(fd: int, size: int, offset: int, path: str | None) -> bytes:
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise MalformedArchive(f"read failed: {exc.strerror}", path=path, offset=offset) from exc
    if len(data) != size:
        raise MalformedArchive("file ends early", path=path, offset=offset)
    return data


def check_entry_name(name: str) -> str | None:
    """Say why an entry name is refused, or None when it is acceptable.

    Args:
        name: Decoded entry name.

    Returns:
        A reason, or None.
    """
    if not name:
        return "empty entry name"
    if "\x00" in name:
        return "entry name contains NUL"
    if _CONTROL.search(name):
        return "entry name contains a control character"  # (names are printed: a newline forges lines)
    if "\\" in name:
        return "entry name contains a backslash"
    if name.startswith("/"):
        return "absolute entry name"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return "entry name with a drive letter"
    if any(part == ".." for part in name.split("/")):
        return "entry name with a '..' component"
    return None


class _Parser:
    #: Accept usual local headers inline (``_central_records``); tests turn it off to compare both paths.
    inline_local_headers = True

    def __init__(self, windows: FileWindows, file_size: int, path: str | None) -> None:
        self.windows = windows
        self.size = file_size
        self.path = path
        # The tail read first (the whole file when it is small): ``_central_records`` accepts local headers
        # inside it without a call per entry.
        self.tail = b""
        self.tail_start = file_size

    def fail(self, message: str, offset: int | None = None) -> MalformedArchive:
        return MalformedArchive(message, path=self.path, offset=offset)

    def read(self, size: int, offset: int) -> bytes:
        return self.windows.read(size, offset)

    def parse(self) -> ZipDirectory:
        if self.size < EOCD_SIZE:
            raise self.fail(f"{self.size} bytes is too short to be a ZIP archive")
        # First the last WINDOW bytes (the end record, and for our archives the whole central directory);
        # only when the end record is not there, the full range an archive comment allows. Scanning
        # backwards, both find the same record.
        tail_size = min(self.size, WINDOW)
        tail_start = self.size - tail_size
        tail = self.windows.load(tail_size, tail_start)
        eocd_pos = self._find_eocd(tail)
        if eocd_pos < 0 and tail_size < min(self.size, EOCD_SIZE + MAX_COMMENT):
            tail_size = min(self.size, EOCD_SIZE + MAX_COMMENT)
            tail_start = self.size - tail_size
            tail = self.windows.load(tail_size, tail_start)
            eocd_pos = self._find_eocd(tail)
        if eocd_pos < 0:
            raise self.fail("no end-of-central-directory record (not a ZIP archive)")
        if self.inline_local_headers:
            self.tail, self.tail_start = tail, tail_start
        eocd_abs = tail_start + eocd_pos
        (_, disk, cd_disk, disk_entries, total_entries, cd_size, cd_offset, _) = _EOCD.unpack_from(
            tail, eocd_pos
        )
        cd_limit = eocd_abs
        if U16_MAX in (disk, cd_disk, disk_entries, total_entries) or U32_MAX in (cd_size, cd_offset):
            disk, cd_disk, disk_entries, total_entries, cd_size, cd_offset, cd_limit = self._zip64(eocd_abs)
        if disk != 0 or cd_disk != 0 or disk_entries != total_entries:
            raise self.fail("multi-disk archives are not supported", eocd_abs)
        if total_entries > MAX_ENTRIES:
            raise self.fail(f"{total_entries} entries, more than the limit of {MAX_ENTRIES}", eocd_abs)
        if cd_size > MAX_CENTRAL_DIRECTORY:
            raise self.fail(f"central directory of {cd_size} bytes is too large", eocd_abs)
        if cd_offset + cd_size > cd_limit:
            raise self.fail("central directory extends past its end record", cd_offset)
        if cd_offset >= tail_start and cd_offset + cd_size <= self.size:
            cd = tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
        else:
            cd = self.read(cd_size, cd_offset)
        # ``in_order``: the entries, in directory order, are already known not to overlap (``_check_overlaps``
        # would find nothing).
        entries, in_order = self._central_records(cd, cd_offset, total_entries)
        if not in_order:
            self._check_overlaps(entries, cd_offset)
        return ZipDirectory(entries, cd_offset, self.size)

    def _find_eocd(self, tail: bytes) -> int:
        # Scan backwards: the record whose comment length reaches exactly the end of the file wins, so a
        # signature inside a comment cannot be mistaken for the record.
        pos = len(tail) - EOCD_SIZE
        while pos >= 0:
            pos = tail.rfind(EOCD_SIG, 0, pos + 4)
            if pos < 0:
                return -1
            (comment_len,) = _U16.unpack_from(tail, pos + 20)
            if pos + EOCD_SIZE + comment_len == len(tail):
                return pos
            pos -= 1
        return -1

    def _zip64(self, eocd_abs: int) -> tuple[int, int, int, int, int, int, int]:
        loc_pos = eocd_abs - ZIP64_LOCATOR_SIZE
        if loc_pos < 0:
            raise self.fail("ZIP64 markers without a ZIP64 locator", eocd_abs)
        sig, _, z64_offset, _ = _ZIP64_LOCATOR.unpack(self.read(ZIP64_LOCATOR_SIZE, loc_pos))
        if sig != ZIP64_LOCATOR_SIG:
            raise self.fail("ZIP64 markers without a ZIP64 locator", loc_pos)
        if z64_offset + ZIP64_EOCD_SIZE > loc_pos:
            raise self.fail("ZIP64 end record outside the file", loc_pos)
        fields = _ZIP64_EOCD.unpack(self.read(ZIP64_EOCD_SIZE, z64_offset))
        sig, _, _, _, disk, cd_disk, disk_entries, total_entries, cd_size, cd_offset = fields
        if sig != ZIP64_EOCD_SIG:
            raise self.fail("bad ZIP64 end-of-central-directory signature", z64_offset)
        return disk, cd_disk, disk_entries, total_entries, cd_size, cd_offset, z64_offset

    def _central_records(self, cd: bytes, cd_offset: int, count: int) -> tuple[tuple[EntryInfo, ...], bool]:
        entries: list[EntryInfo] = []
        names: set[str] = set()
        pos = 0
        cd_size = len(cd)
        tail, tail_start, size = self.tail, self.tail_start, self.size
        unpack_central = _CENTRAL_USED.unpack_from
        unpack_local = _LOCAL.unpack_from
        new_entry = tuple.__new__  # ``EntryInfo(...)`` without its Python-level ``__new__`` (4 per open)
        previous_end = 0
        in_order = True
        for _ in range(count):
            start = pos
            try:
                (sig, flags, method, crc, csize, usize, n, m, k, disk_start, hoff) = unpack_central(cd, pos)
            except struct.error:
                raise self.fail("central directory ends inside a record", cd_offset + start) from None
            if sig != CENTRAL_SIG:
                raise self.fail("bad central directory signature", cd_offset + start)
            extra_at = pos + CENTRAL_SIZE + n
            pos = extra_at + m + k
            if pos > cd_size:
                raise self.fail("central directory record overruns the directory", cd_offset + start)
            raw_name = cd[start + CENTRAL_SIZE : extra_at]
            name = _KNOWN_NAMES.get(raw_name) or self._decode_name(raw_name, flags, cd_offset + start)
            if name in names:
                raise self.fail(f"duplicate entry {name!r}", cd_offset + start)
            names.add(name)
            if flags & FLAG_ENCRYPTED:
                raise self.fail(f"entry {name!r} is encrypted", cd_offset + start)
            if method not in (METHOD_STORED, METHOD_DEFLATED):
                raise self.fail(
                    f"entry {name!r} uses unsupported compression method {method}", cd_offset + start
                )
            if m or U32_MAX in (usize, csize, hoff):
                usize, csize, hoff, disk_start = self._apply_zip64_extra(
                    cd[extra_at : extra_at + m], usize, csize, hoff, disk_start, cd_offset + start
                )
            if disk_start != 0:
                raise self.fail(f"entry {name!r} starts on another disk", cd_offset + start)
            if method == METHOD_STORED and csize != usize:
                raise self.fail(f"stored entry {name!r} has different sizes", cd_offset + start)
            # The usual cases, accepted inline: a local header inside the tail already read, agreeing with
            # its central record in every field ``_local_header`` checks, without data descriptor or ZIP64
            # sizes. Anything else (including every refusal) goes through ``_local_header``, which checks
            # from scratch: this only skips work when its answer would be this same data offset.
            rel = hoff - tail_start
            data_offset = -1
            if rel >= 0 and hoff + LOCAL_SIZE <= size:
                if (
                    # Most writers (ours, the reference's) repeat the central record's bytes from "version
                    # needed" to the name length in the local header: one comparison checks flags, method,
                    # CRC, both sizes and the name length at once. Without central extra fields (``m``),
                    # no size is a ZIP64 marker here (``_apply_zip64_extra`` refused those).
                    not m
                    and not flags & FLAG_DATA_DESCRIPTOR
                    and tail.startswith(LOCAL_SIG, rel)
                    and tail[rel + 4 : rel + 28] == cd[start + 6 : start + 30]
                    and tail.startswith(raw_name, rel + LOCAL_SIZE)
                ):
                    data_offset = hoff + LOCAL_SIZE + n + (tail[rel + 28] | tail[rel + 29] << 8)
                    if data_offset > size:
                        data_offset = -1
                else:
                    (lsig, _, lflags, lmethod, _, _, lcrc, lcsize, lusize, ln, lm) = unpack_local(tail, rel)
                    if (
                        lsig == LOCAL_SIG
                        and hoff + LOCAL_SIZE + ln + lm <= size
                        and ln == n
                        and tail.startswith(raw_name, rel + LOCAL_SIZE)
                        and lmethod == method
                        and not lflags & (FLAG_ENCRYPTED | FLAG_DATA_DESCRIPTOR)
                        and U32_MAX not in (lcsize, lusize)
                        and lcrc == crc
                        and lcsize == csize
                        and lusize == usize
                    ):
                        data_offset = hoff + LOCAL_SIZE + ln + lm
            if data_offset < 0:
                data_offset = self._local_header(name, raw_name, flags, method, crc, csize, usize, hoff)
            # Overlaps are judged after every record was read (``parse``); the usual layout (entries in
            # header order, each starting after the previous one's data, all before the directory) is
            # recognised here so that ``_check_overlaps`` need not sort and walk them again.
            if hoff < previous_end or data_offset + csize > cd_offset:
                in_order = False
            previous_end = data_offset + csize
            entries.append(new_entry(EntryInfo, (name, method, flags, crc, csize, usize, hoff, data_offset)))
        if pos != cd_size:
            raise self.fail("central directory size does not match its records", cd_offset)
        return tuple(entries), in_order

    def _decode_name(self, raw: bytes, flags: int, offset: int) -> str:
        known = _KNOWN_NAMES.get(raw)
        if known is not None:  # ASCII and plain: both decodings agree and every check passes
            return known
        try:
            name = raw.decode("utf-8") if flags & FLAG_UTF8 else raw.decode("cp437")
        except UnicodeDecodeError as exc:
            raise self.fail("entry name is not valid UTF-8", offset) from exc
        reason = check_entry_name(name)
        if reason:
            raise self.fail(f"{reason}: {name!r}", offset)
        return name

    def _apply_zip64_extra(
        self, extra: bytes, usize: int, csize: int, hoff: int, disk: int, offset: int
    ) -> tuple[int, int, int, int]:
        values = _zip64_values(extra)
        if values is None:
            if U32_MAX in (usize, csize, hoff):
                raise self.fail("ZIP64 sizes marked but no ZIP64 extra field", offset)
            return usize, csize, hoff, disk
        wanted = [usize == U32_MAX, csize == U32_MAX, hoff == U32_MAX, disk == U16_MAX]
        needed = sum(wanted)
        if len(values) < needed:
            raise self.fail("ZIP64 extra field is too short", offset)
        it = iter(values)
        if wanted[0]:
            usize = next(it)
        if wanted[1]:
            csize = next(it)
        if wanted[2]:
            hoff = next(it)
        if wanted[3]:
            disk = next(it)
        return usize, csize, hoff, disk

    def _local_header(
        self,
        name: str,
        raw_name: bytes,
        flags: int,
        method: int,
        crc: int,
        csize: int,
        usize: int,
        hoff: int,
    ) -> int:
        if hoff + LOCAL_SIZE > self.size:
            raise self.fail(f"local header of {name!r} is outside the file", hoff)
        # One read for the fixed part and the name it should carry (extra fields are rare).
        wanted = min(LOCAL_SIZE + len(raw_name), self.size - hoff)
        header = self.read(wanted, hoff)
        (sig, _, lflags, lmethod, _, _, lcrc, lcsize, lusize, n, m) = _LOCAL.unpack_from(header)
        if sig != LOCAL_SIG:
            raise self.fail(f"bad local header signature for {name!r}", hoff)
        if hoff + LOCAL_SIZE + n + m > self.size:
            raise self.fail(f"local header of {name!r} overruns the file", hoff)
        if LOCAL_SIZE + n + m <= wanted:
            tail = header[LOCAL_SIZE : LOCAL_SIZE + n + m]
        else:
            tail = self.read(n + m, hoff + LOCAL_SIZE)
        if tail[:n] != raw_name:
            raise self.fail(f"local header name does not match central record {name!r}", hoff)
        if lmethod != method or (lflags & FLAG_ENCRYPTED):
            raise self.fail(f"local header method or flags of {name!r} differ from the central record", hoff)
        if not lflags & FLAG_DATA_DESCRIPTOR:
            if U32_MAX in (lcsize, lusize):
                values = _zip64_values(tail[n:]) or ()
                if len(values) < 2:
                    raise self.fail(f"local ZIP64 sizes of {name!r} missing", hoff)
                lusize, lcsize = values[0], values[1]
            if (lcrc, lcsize, lusize) != (crc, csize, usize):
                raise self.fail(f"local header CRC or sizes of {name!r} differ from the central record", hoff)
        data_offset: int = hoff + LOCAL_SIZE + n + m
        return data_offset

    def _check_overlaps(self, entries: tuple[EntryInfo, ...], cd_offset: int) -> None:
        previous_end = 0
        previous_name = ""
        for entry in sorted(entries, key=_by_header_offset):
            if entry.header_offset < previous_end:
                raise self.fail(f"entry {entry.name!r} overlaps {previous_name!r}", entry.header_offset)
            data_end = entry.data_offset + entry.compressed_size  # ``data_end``, without a property call
            if data_end > cd_offset:
                raise self.fail(f"data of {entry.name!r} runs into the central directory", entry.data_offset)
            previous_end = data_end
            previous_name = entry.name


def _zip64_values(extra: bytes) -> tuple[int, ...] | None:
    """The 64-bit values of a ZIP64 extra field (header 0x0001), or None when there is none."""
    pos = 0
    while pos + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if header_id == ZIP64_EXTRA_ID:
            count = len(body) // 8
            return struct.unpack_from(f"<{count}Q", body)
        pos += 4 + size
    return None
