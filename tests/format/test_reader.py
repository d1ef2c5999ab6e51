"""Strict reading of ``.sync`` archives (spec §1.5, §1.6, §9 D11) and the snapshot's payload reader.

Every rule in ``zip_reader``'s docstring gets an archive that breaks it, made by patching the bytes of a
valid archive (or, where a patch cannot express the shape, by writing one with ``zipfile`` or our writer),
and the test asserts the specific ``ArchiveError`` subclass and the rule's message.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
from support import outcome_beside_a_fifo

from sync_format import (
    ArchiveError,
    ArchiveSnapshot,
    MalformedArchive,
    MissingEntry,
    SyncBuilder,
    commit_payload,
    open_archive,
)
from sync_format.errors import ManifestError
from sync_format.manifest import Manifest
from sync_format.media import MAX_ACCEPTED, display_ext_problem, media_type_problem
from sync_format.reader import MAX_CONTEXT_SIZE, MAX_MANIFEST_SIZE
from sync_format.state import MAX_STATE_SIZE, ArchiveState
from sync_format.testing import (
    REFERENCE_MANIFEST_TOML,
    make_archive,
    reference_archive_bytes,
    reference_manifest,
)
from sync_format.zip_reader import ZipDirectory
from sync_format.zip_writer import ZipWriter

EMPTY_WASM = b"\x00asm\x01\x00\x00\x00"
MANIFEST = REFERENCE_MANIFEST_TOML.encode()
EOCD = struct.Struct("<4s4H2LH")

# Field offsets inside ZIP records (APPNOTE 4.3.7, 4.3.12, 4.3.16).
L_FLAGS, L_METHOD, L_CRC, L_CSIZE, L_USIZE, L_NAMELEN, L_EXTRALEN = 6, 8, 14, 18, 22, 26, 28
C_FLAGS, C_METHOD, C_CRC, C_CSIZE, C_USIZE, C_NAMELEN = 8, 10, 16, 20, 24, 28
C_DISK, C_OFFSET = 34, 42
E_DISK, E_CD_DISK, E_DISK_ENTRIES, E_ENTRIES, E_CD_SIZE, E_CD_OFFSET, E_COMMENT = 4, 6, 8, 10, 12, 16, 20


# --- helpers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """Where one entry's records are in an archive.

    Attributes:
        local: Offset of the local header.
        central: Offset of the central directory record.
    """

    local: int
    central: int


def records(data: bytes) -> dict[str, Record]:
    """Locate every entry's local and central records (independently of the library under test)."""
    eocd = len(data) - 22
    _, _, _, _, count, _, cd_offset, _ = EOCD.unpack_from(data, eocd)
    out = {}
    pos = cd_offset
    for _ in range(count):
        n, m, k = struct.unpack_from("<3H", data, pos + C_NAMELEN)
        (local,) = struct.unpack_from("<L", data, pos + C_OFFSET)
        out[data[pos + 46 : pos + 46 + n].decode("cp437")] = Record(local, pos)
        pos += 46 + n + m + k
    return out


def eocd_offset(data: bytes) -> int:
    """Offset of the end record of an archive without a comment."""
    return len(data) - 22


def patch(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """``data`` with ``struct.pack(fmt, *values)`` written at ``offset``."""
    packed = struct.pack(fmt, *values)
    return data[:offset] + packed + data[offset + len(packed) :]


def rename(data: bytes, old: str, new: str, *, local: bool = True, central: bool = True) -> bytes:
    """Rename an entry in place (same length) in its local header and/or central record."""
    assert len(old) == len(new)
    rec = records(data)[old]
    raw = new.encode("utf-8") if new.isascii() else new.encode("cp437")
    if local:
        data = data[: rec.local + 30] + raw + data[rec.local + 30 + len(raw) :]
    if central:
        data = data[: rec.central + 46] + raw + data[rec.central + 46 + len(raw) :]
    return data


def writer_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    """An archive written by our own ZIP writer with exactly these entries (it does not validate names)."""
    out = io.BytesIO()
    writer = ZipWriter(out)
    for name, data in entries:
        writer.add_bytes(name, data)
    writer.finish()
    return out.getvalue()


def zipfile_bytes(entries: list[tuple[str, bytes, int]], *, comment: bytes = b"") -> bytes:
    """An archive written by Python's ``zipfile`` with ``(name, data, method)`` entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, data)
        zf.comment = comment
    return out.getvalue()


def base_entries(payload: bytes = b"hello") -> list[tuple[str, bytes]]:
    """The TV-1 entries with another payload."""
    return [("manifest.toml", MANIFEST), ("payload", payload), ("sync.wasm", EMPTY_WASM)]


@functools.cache
def tv1() -> bytes:
    """TV-1: the reference builder archive (manifest, payload ``hello``, empty module), 704 bytes."""
    return writer_bytes(base_entries())


def test_tv1_helper_matches_the_builder(tmp_path: Path) -> None:
    """The bytes the mutations start from are exactly what the builder writes for TV-1."""
    assert tv1() == reference_archive_bytes(tmp_path)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[bytes], Path]:
    """Write archive bytes to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def _write(data: bytes) -> Path:
        path = tmp_path / f"case{next(counter)}.sync"
        path.write_bytes(data)
        return path

    return _write


def _tv1_patch(kind: str, name: str, offset: int, fmt: str, *values: int) -> Callable[[], bytes]:
    """A mutation of TV-1 at a field of ``name``'s local (``L``) or central (``C``) record."""

    def build() -> bytes:
        data = tv1()
        rec = records(data)[name]
        base = rec.local if kind == "L" else rec.central
        return patch(data, base + offset, fmt, *values)

    return build


def _eocd_patch(offset: int, fmt: str, *values: int) -> Callable[[], bytes]:
    return lambda: patch(tv1(), eocd_offset(tv1()) + offset, fmt, *values)


def _both(name: str, local_offset: int, central_offset: int, fmt: str, *values: int) -> Callable[[], bytes]:
    """Patch the same field in the local header and the central record of ``name``."""

    def build() -> bytes:
        data = tv1()
        rec = records(data)[name]
        data = patch(data, rec.local + local_offset, fmt, *values)
        return patch(data, rec.central + central_offset, fmt, *values)

    return build


def _duplicate() -> bytes:
    data = writer_bytes([*base_entries(), ("payloaX", b"other")])
    return rename(data, "payloaX", "payload")


def _non_utf8_name() -> bytes:
    data = rename(tv1(), "sync.wasm", "sync.was\xff")
    rec = records(tv1())["sync.wasm"]
    data = data[: rec.central + 46 + 8] + b"\xff" + data[rec.central + 46 + 9 :]
    return patch(data, rec.central + C_FLAGS, "<H", 0x0800)


def _truncated(size: int) -> Callable[[], bytes]:
    return lambda: tv1()[:size]


def _garbage_eocd_signature_in_payload() -> bytes:
    # An end record signature inside the data (not at its own end) is not taken for the real one.
    return writer_bytes(base_entries(b"PK\x05\x06" + bytes(18)))[:-22] + b"\x00" * 22


def _manifest_crc() -> bytes:
    data = tv1()
    pos = data.index(b"builder")
    return data[:pos] + b"Builder" + data[pos + 7 :]


def _overlong_manifest() -> bytes:
    padding = b"# " + b"x" * MAX_MANIFEST_SIZE + b"\n"
    return writer_bytes([*base_entries()[1:], ("manifest.toml", MANIFEST + padding)])


def _central_reversed(data: bytes) -> bytes:
    """``data`` with its central records in the reverse order of their entries (sizes and offsets kept)."""
    found = sorted(records(data).values(), key=lambda rec: rec.central)
    eocd = eocd_offset(data)
    ends = [rec.central for rec in found[1:]] + [eocd]
    pieces = [data[rec.central : end] for rec, end in zip(found, ends, strict=True)]
    return data[: found[0].central] + b"".join(reversed(pieces)) + data[eocd:]


def _reversed_and_overlapping() -> bytes:
    return _central_reversed(_both("payload", L_CSIZE, C_CSIZE, "<2L", 10, 10)())


MALFORMED = [
    # The end record is where it claims to be and the central directory lies inside the file.
    pytest.param(_truncated(21), "too short", id="shorter-than-eocd"),
    pytest.param(lambda: b"\x00" * 100, "no end-of-central-directory", id="no-eocd"),
    pytest.param(_truncated(700), "no end-of-central-directory", id="truncated-eocd"),
    pytest.param(lambda: tv1()[22:], "central directory|local header", id="leading-bytes-cut"),
    pytest.param(_eocd_patch(E_COMMENT, "<H", 5), "no end-of-central-directory", id="eocd-comment-too-long"),
    pytest.param(_eocd_patch(E_CD_OFFSET, "<L", 10_000), "extends past", id="eocd-cd-offset-past-end"),
    pytest.param(_eocd_patch(E_CD_SIZE, "<L", 168), "extends past", id="eocd-cd-size-too-large"),
    pytest.param(_eocd_patch(E_CD_SIZE, "<L", 166), "overruns the directory", id="eocd-cd-size-too-small"),
    pytest.param(_eocd_patch(E_CD_SIZE, "<L", 5 << 20), "too large", id="eocd-cd-over-limit"),
    pytest.param(_eocd_patch(E_DISK_ENTRIES, "<2H", 4, 4), "ends inside a record", id="eocd-count-too-high"),
    pytest.param(_eocd_patch(E_DISK_ENTRIES, "<2H", 2, 2), "size does not match", id="eocd-count-too-low"),
    pytest.param(_eocd_patch(E_DISK_ENTRIES, "<H", 2), "multi-disk", id="eocd-disk-entries-differ"),
    pytest.param(_eocd_patch(E_DISK, "<H", 1), "multi-disk", id="eocd-disk-number"),
    pytest.param(_eocd_patch(E_CD_DISK, "<H", 1), "multi-disk", id="eocd-cd-disk-number"),
    pytest.param(_eocd_patch(E_DISK_ENTRIES, "<2H", 257, 257), "257 entries", id="eocd-count-over-limit"),
    pytest.param(_eocd_patch(E_CD_OFFSET, "<L", 0xFFFFFFFF), "ZIP64 locator", id="zip64-marker-no-locator"),
    pytest.param(_garbage_eocd_signature_in_payload, "no end-of-central-directory", id="eocd-zeroed"),
    # Central records are well-formed.
    pytest.param(_tv1_patch("C", "payload", 0, "<L", 0), "bad central directory signature", id="central-sig"),
    pytest.param(_tv1_patch("C", "sync.wasm", C_NAMELEN, "<H", 500), "overruns", id="central-name-overruns"),
    pytest.param(_tv1_patch("C", "payload", C_DISK, "<H", 1), "another disk", id="central-disk-start"),
    pytest.param(
        _tv1_patch("C", "payload", C_CSIZE, "<2L", 0xFFFFFFFF, 0xFFFFFFFF),
        "no ZIP64 extra",
        id="zip64-sizes-without-extra",
    ),
    # Names are plain and unique.
    pytest.param(_duplicate, "duplicate entry 'payload'", id="duplicate-name"),
    pytest.param(_non_utf8_name, "not valid UTF-8", id="name-not-utf8"),
    # Nothing is encrypted, only STORED and DEFLATE.
    pytest.param(_tv1_patch("C", "payload", C_FLAGS, "<H", 1), "encrypted", id="encrypted-central"),
    pytest.param(_tv1_patch("L", "payload", L_FLAGS, "<H", 1), "method or flags", id="encrypted-local"),
    pytest.param(
        _both("payload", L_METHOD, C_METHOD, "<H", 12),
        "unsupported compression method 12",
        id="method-bzip2-payload",
    ),
    pytest.param(
        _both("sync.wasm", L_METHOD, C_METHOD, "<H", 99),
        "unsupported compression method 99",
        id="method-aes-wasm",
    ),
    # Every local header matches its central record.
    pytest.param(_tv1_patch("L", "payload", 0, "<L", 0), "bad local header signature", id="local-sig"),
    pytest.param(_tv1_patch("C", "payload", C_OFFSET, "<L", 10_000), "outside the file", id="local-outside"),
    pytest.param(
        _tv1_patch("L", "sync.wasm", L_EXTRALEN, "<H", 1000), "overruns the file", id="local-extra-overruns"
    ),
    pytest.param(
        lambda: rename(tv1(), "payload", "payloaX", central=False),
        "name does not match",
        id="local-name-mismatch",
    ),
    pytest.param(
        _tv1_patch("L", "payload", L_METHOD, "<H", 8), "method or flags", id="local-method-mismatch"
    ),
    pytest.param(_tv1_patch("L", "payload", L_CRC, "<L", 0), "CRC or sizes", id="local-crc-mismatch"),
    pytest.param(_tv1_patch("L", "payload", L_CSIZE, "<2L", 4, 4), "CRC or sizes", id="local-sizes-mismatch"),
    pytest.param(_tv1_patch("L", "payload", L_USIZE, "<L", 6), "CRC or sizes", id="local-usize-mismatch"),
    pytest.param(_tv1_patch("C", "payload", C_CSIZE, "<L", 6), "different sizes", id="stored-sizes-differ"),
    # Entries do not overlap and end before the central directory.
    pytest.param(_both("payload", L_CSIZE, C_CSIZE, "<2L", 10, 10), "overlaps", id="overlap"),
    pytest.param(_reversed_and_overlapping, "overlaps", id="overlap-listed-out-of-order"),
    pytest.param(
        _both("sync.wasm", L_CSIZE, C_CSIZE, "<2L", 20, 20),
        "runs into the central directory",
        id="data-into-central-directory",
    ),
    pytest.param(
        _tv1_patch("C", "sync.wasm", C_OFFSET, "<L", 426), "name does not match", id="two-records-one-header"
    ),
    # Entries read at open are checked completely.
    pytest.param(_manifest_crc, "CRC-32", id="manifest-crc"),
    pytest.param(_overlong_manifest, "more than the limit", id="manifest-over-limit"),
]


@pytest.mark.parametrize(("build", "message"), MALFORMED)
def test_inline_local_headers_refuse_malformed_archives_like_the_full_check(
    tmp_path: Path, build: Callable[[], bytes], message: str
) -> None:
    """Every malformed archive gets the same refusal (or the same directory, when the fault is found after
    the directory is read) with the reader's inline acceptance of local headers as without it."""
    from inline_check import read_both_ways  # here: mountd's tests import this module as a package

    inline, full = read_both_ways(build(), tmp_path / "case.sync")
    assert inline == full


#: Archives that must open, written in ways our writer does not: a local header differing from its central
#: record only in fields the reader does not compare (version needed, time, date) is not taken by the
#: reader's byte-for-byte shortcut, and central records out of file order skip its overlap shortcut.
UNUSUAL_BUT_VALID = [
    pytest.param(_tv1_patch("L", "payload", 4, "<H", 45), id="local-version-differs"),
    pytest.param(_tv1_patch("L", "manifest.toml", 10, "<2H", 0x6000, 0x5821), id="local-time-date-differ"),
    pytest.param(lambda: _central_reversed(tv1()), id="central-records-out-of-order"),
    pytest.param(
        lambda: zipfile_bytes([("manifest.toml", MANIFEST, zipfile.ZIP_DEFLATED), ("payload", b"x", 0)]),
        id="zipfile-written",
    ),
]


@pytest.mark.parametrize("build", UNUSUAL_BUT_VALID)
def test_unusual_but_valid_archives_open_with_the_same_entries_both_ways(
    tmp_path: Path, build: Callable[[], bytes]
) -> None:
    """Each opens, to the same directory with the inline acceptance of local headers as without it, and to
    the entries and data offsets the test finds itself."""
    from inline_check import read_both_ways  # here: mountd's tests import this module as a package

    data = build()
    inline, full = read_both_ways(data, tmp_path / "case.sync")
    assert isinstance(inline, ZipDirectory)
    assert inline == full
    found = records(data)
    assert {entry.name: entry.header_offset for entry in inline.entries} == {
        name: rec.local for name, rec in found.items()
    }
    for entry in inline.entries:
        n, m = struct.unpack_from("<2H", data, entry.header_offset + L_NAMELEN)
        assert entry.data_offset == entry.header_offset + 30 + n + m


@pytest.mark.parametrize(("build", "message"), MALFORMED)
def test_malformed_archives_are_refused(
    write: Callable[[bytes], Path], build: Callable[[], bytes], message: str
) -> None:
    """Each broken ZIP rule raises ``MalformedArchive`` naming that rule and the archive path."""
    path = write(build())
    with pytest.raises(MalformedArchive, match=message) as info:
        open_archive(path)
    assert info.value.path == path


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../escape", id="dotdot"),
        pytest.param("a/../../b", id="nested-dotdot"),
        pytest.param("..", id="bare-dotdot"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("dir\\file", id="backslash"),
        pytest.param("nul\x00name", id="nul"),
        pytest.param("read, CRC-32 ok\n  ok    signature: forged\nintact", id="newline"),
        pytest.param("hidden\x1b[8m", id="escape"),
        pytest.param("del\x7f", id="del"),
        pytest.param("C:drive", id="drive-letter"),
        pytest.param("", id="empty"),
    ],
)
def test_unsafe_entry_names_are_refused(write: Callable[[bytes], Path], name: str) -> None:
    """An extra entry whose name is absolute, has ``..``, a backslash, a drive or a control character (NUL,
    a newline, ESC, DEL: names are printed by ``syncctl verify``) is refused."""
    path = write(writer_bytes([*base_entries(), (name, b"x")]))
    with pytest.raises(MalformedArchive, match="name"):
        open_archive(path)


def test_too_many_entries_are_refused(write: Callable[[bytes], Path]) -> None:
    """An archive with 257 real entries is refused while one with 256 opens."""
    extras = [(f"x{i}", b"", zipfile.ZIP_STORED) for i in range(253)]
    base = [(n, d, zipfile.ZIP_STORED) for n, d in base_entries()]
    with open_archive(write(zipfile_bytes(base + extras))) as snap:
        assert len(snap.entry_names) == 256
    with pytest.raises(MalformedArchive, match="257 entries"):
        open_archive(write(zipfile_bytes([*base, *extras, ("one-more", b"", zipfile.ZIP_STORED)])))


# --- deflate --------------------------------------------------------------------------------------------

BOMB_SIZE = 256 << 20


@pytest.fixture(scope="module")
def bomb_archive() -> bytes:
    """A valid archive plus ``manifest.tomX``: 256 MiB of zeros deflated to about 256 KiB."""
    out = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in base_entries():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        info = zipfile.ZipInfo("manifest.tomX", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as f:
            for _ in range(BOMB_SIZE // len(chunk)):
                f.write(chunk)
    data = out.getvalue()
    assert len(data) < 400_000
    return data


@pytest.fixture
def no_inflate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to inflate fail the test loudly."""

    def refuse(*_args: object) -> None:
        raise AssertionError("the reader tried to inflate")

    monkeypatch.setattr(zlib, "decompressobj", refuse)


def test_manifest_deflate_bomb_is_refused_unread(
    write: Callable[[bytes], Path], bomb_archive: bytes, no_inflate: None
) -> None:
    """A manifest declared as 256 MiB deflated raises ``MalformedArchive`` without being inflated."""
    data = rename(bomb_archive, "manifest.toml", "manifest.tomY")
    data = rename(data, "manifest.tomX", "manifest.toml")
    with pytest.raises(MalformedArchive, match="more than the limit"):
        open_archive(write(data))


def test_extra_entry_deflate_bomb_is_refused_unread(
    write: Callable[[bytes], Path], bomb_archive: bytes, no_inflate: None
) -> None:
    """An unknown 256 MiB deflated entry does not stop the open, but reading it is refused uninflated."""
    with open_archive(write(bomb_archive)) as snap:
        assert snap.read_payload() == b"hello"
        with pytest.raises(MalformedArchive, match="more than the limit"):
            snap.read_entry("manifest.tomX")


def test_lying_deflate_bomb_is_capped(write: Callable[[bytes], Path], bomb_archive: bytes) -> None:
    """A deflated manifest declaring 100 bytes but inflating to 256 MiB is refused after a capped inflate."""
    data = rename(bomb_archive, "manifest.toml", "manifest.tomY")
    data = rename(data, "manifest.tomX", "manifest.toml")
    rec = records(data)["manifest.toml"]
    data = patch(data, rec.central + C_USIZE, "<L", 100)
    data = patch(data, rec.local + L_USIZE, "<L", 100)
    with pytest.raises(MalformedArchive, match="inflates to a size other"):
        open_archive(write(data))


def _deflated_manifest() -> bytes:
    return zipfile_bytes(
        [
            ("manifest.toml", MANIFEST, zipfile.ZIP_DEFLATED),
            ("payload", b"hello", zipfile.ZIP_STORED),
            ("sync.wasm", EMPTY_WASM, zipfile.ZIP_STORED),
        ]
    )


def test_deflated_manifest_opens(write: Callable[[bytes], Path]) -> None:
    """A deflated (non-payload) manifest is inflated and parsed."""
    with open_archive(write(_deflated_manifest())) as snap:
        assert snap.manifest == reference_manifest()


@pytest.mark.parametrize(
    ("byte", "message"),
    [
        pytest.param(0xFF, "does not inflate", id="invalid-block-type"),
        pytest.param(None, "inflates to a size other", id="truncated-stream"),
    ],
)
def test_broken_deflate_stream_is_refused(
    write: Callable[[bytes], Path], byte: int | None, message: str
) -> None:
    """A deflated manifest whose stream is corrupt or ends early raises ``MalformedArchive``."""
    data = _deflated_manifest()
    rec = records(data)["manifest.toml"]
    start = rec.local + 30 + len("manifest.toml")
    if byte is not None:
        data = data[:start] + bytes([byte]) + data[start + 1 :]
    else:
        # Keep the sizes but make the stream stop early: a non-final stored block of 0 bytes, repeated.
        (csize,) = struct.unpack_from("<L", data, rec.local + L_CSIZE)
        data = (
            data[:start]
            + b"\x00\x00\x00\xff\xff" * (csize // 5)
            + b"\x00" * (csize % 5)
            + data[start + csize :]
        )
    with pytest.raises(MalformedArchive, match=message):
        open_archive(write(data))


def test_deflated_payload_is_refused(write: Callable[[bytes], Path]) -> None:
    """A deflated payload is refused even though deflate is understood for other entries."""
    data = zipfile_bytes(
        [
            ("manifest.toml", MANIFEST, zipfile.ZIP_STORED),
            ("payload", b"hello" * 20, zipfile.ZIP_DEFLATED),
            ("sync.wasm", EMPTY_WASM, zipfile.ZIP_STORED),
        ]
    )
    with pytest.raises(MalformedArchive, match="payload must be stored"):
        open_archive(write(data))


# --- ZIP64, comments, layout ---------------------------------------------------------------------------


def _zipfile_zip64() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in base_entries():
            with zf.open(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                f.write(data)
    return out.getvalue()


def test_zipfile_force_zip64_opens(write: Callable[[bytes], Path]) -> None:
    """An archive written by ``zipfile`` with ``force_zip64=True`` (ZIP64 local extras) opens."""
    data = _zipfile_zip64()
    rec = records(data)["payload"]
    with open_archive(write(data)) as snap:
        assert snap.read_payload() == b"hello"
        assert snap.manifest == reference_manifest()
        # The data offset comes from the local header (20 bytes of ZIP64 extra), not the central one (none).
        assert snap.payload_offset == rec.local + 30 + len("payload") + 20


def with_zip64_end(data: bytes) -> bytes:
    """Rewrite the end of an archive as ZIP64 end record + locator + an end record full of markers."""
    eocd = eocd_offset(data)
    _, _, _, _, count, cd_size, cd_offset, _ = EOCD.unpack_from(data, eocd)
    zip64_eocd = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:eocd] + zip64_eocd + locator + end


def with_zip64_central(data: bytes, name: str) -> bytes:
    """Move ``name``'s sizes and local header offset into a ZIP64 extra field of its central record."""
    eocd = eocd_offset(data)
    _, _, _, _, count, _, cd_offset, _ = EOCD.unpack_from(data, eocd)
    pos = cd_offset
    out = []
    for _ in range(count):
        n, m, k = struct.unpack_from("<3H", data, pos + C_NAMELEN)
        rec = bytearray(data[pos : pos + 46 + n + m + k])
        if rec[46 : 46 + n] == name.encode():
            (csize, usize) = struct.unpack_from("<2L", rec, C_CSIZE)
            (offset,) = struct.unpack_from("<L", rec, C_OFFSET)
            extra = struct.pack("<HH3Q", 1, 24, usize, csize, offset)
            struct.pack_into("<2L", rec, C_CSIZE, 0xFFFFFFFF, 0xFFFFFFFF)
            struct.pack_into("<L", rec, C_OFFSET, 0xFFFFFFFF)
            struct.pack_into("<H", rec, C_NAMELEN + 2, m + len(extra))
            rec = rec[: 46 + n + m] + extra + rec[46 + n + m :]
        out.append(bytes(rec))
        pos += 46 + n + m + k
    cd = b"".join(out)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(cd), cd_offset, 0)
    return data[:cd_offset] + cd + end


def _short_zip64_extra() -> bytes:
    data = with_zip64_central(tv1(), "payload")
    rec = records(tv1())["payload"]
    central = rec.central  # the first records are unchanged, so the payload record is still here
    n = len("payload")
    # Declare the extra's body as 16 bytes (two values) although three are needed.
    return patch(data, central + 46 + n + 2, "<H", 16)


#: Where ``with_zip64_end(tv1())`` puts the ZIP64 end record: at TV-1's classic end record.
ZIP64_EOCD_AT = 682


def test_zip64_end_records_open(write: Callable[[bytes], Path]) -> None:
    """A ZIP64 end record and locator (with 0xFFFF markers in the classic end record) are understood."""
    with open_archive(write(with_zip64_end(tv1()))) as snap:
        assert snap.entry_names == ("manifest.toml", "payload", "sync.wasm")
        assert (snap.payload_offset, snap.read_payload()) == (463, b"hello")


def test_zip64_central_extra_opens(write: Callable[[bytes], Path]) -> None:
    """Sizes and offsets marked 0xFFFFFFFF are taken from the central record's ZIP64 extra field."""
    with open_archive(write(with_zip64_end(with_zip64_central(tv1(), "payload")))) as snap:
        assert (snap.payload_offset, snap.payload_size, snap.read_payload()) == (463, 5, b"hello")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: patch(with_zip64_end(tv1()), len(with_zip64_end(tv1())) - 22 - 20 + 8, "<Q", 10**6),
            "ZIP64 end record outside the file",
            id="locator-points-outside",
        ),
        pytest.param(
            lambda: patch(with_zip64_end(tv1()), ZIP64_EOCD_AT, "<L", 0),
            "bad ZIP64 end",
            id="zip64-eocd-signature",
        ),
        pytest.param(
            lambda: patch(with_zip64_end(tv1()), len(with_zip64_end(tv1())) - 22 - 20, "<L", 0),
            "without a ZIP64 locator",
            id="locator-signature",
        ),
        pytest.param(
            lambda: patch(with_zip64_end(tv1()), ZIP64_EOCD_AT + 24, "<2Q", 300, 300),
            "300 entries",
            id="zip64-count-over-limit",
        ),
        pytest.param(
            lambda: patch(with_zip64_end(tv1()), ZIP64_EOCD_AT + 48, "<Q", 2**63),
            "extends past",
            id="zip64-cd-offset-huge",
        ),
        pytest.param(_short_zip64_extra, "ZIP64 extra field is too short", id="zip64-extra-too-short"),
    ],
)
def test_broken_zip64_records_are_refused(
    write: Callable[[bytes], Path], build: Callable[[], bytes], message: str
) -> None:
    """ZIP64 records that point outside the file, lack signatures or are short raise ``MalformedArchive``."""
    with pytest.raises(MalformedArchive, match=message):
        open_archive(write(build()))


@pytest.mark.parametrize(
    "comment",
    [
        pytest.param(b"a comment", id="plain"),
        pytest.param(b"PK\x05\x06 is the end-record signature, inside a comment", id="embedded-signature"),
        pytest.param(b"x" * 65535, id="maximum-length"),
    ],
)
def test_archive_comment_is_tolerated(write: Callable[[bytes], Path], comment: bytes) -> None:
    """An archive comment, even one containing an end-record signature, does not disturb the open."""
    data = zipfile_bytes([(n, d, zipfile.ZIP_STORED) for n, d in base_entries()], comment=comment)
    with open_archive(write(data)) as snap:
        assert snap.read_payload() == b"hello"


def test_our_archive_with_appended_comment_opens(write: Callable[[bytes], Path]) -> None:
    """A comment appended to one of our archives (length patched) is tolerated."""
    data = _eocd_patch(E_COMMENT, "<H", 7)() + b"comment"
    with open_archive(write(data)) as snap:
        assert snap.payload_offset == 463


def test_extra_and_directory_entries_are_tolerated(write: Callable[[bytes], Path]) -> None:
    """Unknown entries and directory entries are kept in the listing and readable."""
    data = writer_bytes([*base_entries(), ("docs/", b""), ("docs/readme.txt", b"hi")])
    with open_archive(write(data)) as snap:
        assert snap.entry_names[-2:] == ("docs/", "docs/readme.txt")
        assert snap.read_entry("docs/readme.txt") == b"hi"
        assert snap.read_entry("absent") is None


def test_entry_order_does_not_matter(write: Callable[[bytes], Path]) -> None:
    """The payload is found wherever it is, e.g. last as after a reference update."""
    data = writer_bytes([("sync.wasm", EMPTY_WASM), ("manifest.toml", MANIFEST), ("payload", b"hello")])
    with open_archive(write(data)) as snap:
        assert snap.read_payload() == b"hello"


# --- CRC checks -----------------------------------------------------------------------------------------


def _damaged_payload() -> bytes:
    data = tv1()
    return data[:463] + b"j" + data[464:]


def test_payload_crc_is_checked_on_full_reads_only(write: Callable[[bytes], Path]) -> None:
    """A damaged payload opens (its data is not read), but ``read_payload`` detects the CRC mismatch."""
    with open_archive(write(_damaged_payload())) as snap:
        assert snap.payload_size == 5
        with pytest.raises(MalformedArchive, match="CRC-32") as info:
            snap.read_payload()
        assert info.value.path == snap.path
        digest = snap.digest_payload()
        assert digest.crc32 != snap.payload.crc32
        assert digest.crc32 == zlib.crc32(b"jello")
        with snap.open_payload() as reader:
            assert reader.read() == b"jello"


def test_entry_crc_is_checked(write: Callable[[bytes], Path]) -> None:
    """A damaged ``sync.wasm`` raises ``MalformedArchive`` when it is read."""
    data = tv1()
    data = data[:507] + b"\x01" + data[508:]
    with open_archive(write(data)) as snap, pytest.raises(MalformedArchive, match="CRC-32"):
        snap.read_wasm()


def test_entry_size_limits(write: Callable[[bytes], Path]) -> None:
    """A ``context.json`` over its 1 MiB limit is refused when read, not at open."""
    data = writer_bytes([*base_entries(), ("context.json", b" " * (MAX_CONTEXT_SIZE + 1))])
    with open_archive(write(data)) as snap:
        assert snap.has_context
        with pytest.raises(MalformedArchive, match="limit"):
            snap.read_context()


# --- files that are not archives -----------------------------------------------------------------------


def test_missing_file_is_an_archive_error(tmp_path: Path) -> None:
    """Opening a path that does not exist raises ``ArchiveError`` carrying the path."""
    with pytest.raises(ArchiveError, match="cannot open") as info:
        open_archive(tmp_path / "absent.sync")
    assert info.value.path == tmp_path / "absent.sync"


def test_directory_is_malformed(tmp_path: Path) -> None:
    """Opening a directory raises ``MalformedArchive`` (not a regular file)."""
    with pytest.raises(MalformedArchive, match="not a regular file"):
        open_archive(tmp_path)


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """A FIFO where an archive was expected (a local user's, or one renamed over an archive) raises
    ``MalformedArchive`` at once: opening it for reading does not wait for a writer that never comes."""
    fifo = tmp_path / "trap.sync"
    os.mkfifo(fifo)
    refused = outcome_beside_a_fifo(lambda: open_archive(fifo), fifo)
    assert isinstance(refused, MalformedArchive)
    assert "not a regular file" in str(refused)


def test_a_payload_file_is_the_regular_file_that_was_measured(tmp_path: Path) -> None:
    """``with_payload_file`` measures the file, and opens it again when writing: a FIFO is refused at once,
    and a file swapped for another since it was measured is refused, not packed with the wrong size."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ArchiveError, match="not a regular file"):
        SyncBuilder().with_manifest(reference_manifest()).with_payload_file(fifo)
    source = tmp_path / "payload.csv"
    source.write_bytes(b"a,b\n1,2\n")
    builder = SyncBuilder().with_manifest(reference_manifest()).with_payload_file(source)
    swapped = tmp_path / "other"
    swapped.write_bytes(b"something else entirely")
    os.replace(swapped, source)
    with pytest.raises(ArchiveError, match="changed since it was measured"):
        builder.write_to(tmp_path / "out.sync")
    assert not (tmp_path / "out.sync").exists()


def test_missing_payload_is_a_missing_entry(write: Callable[[bytes], Path]) -> None:
    """An archive without ``payload`` raises ``MissingEntry`` naming it."""
    with pytest.raises(MissingEntry) as info:
        open_archive(write(writer_bytes([("manifest.toml", MANIFEST), ("sync.wasm", EMPTY_WASM)])))
    assert info.value.entry == "payload"


def test_failed_open_closes_its_descriptor(write: Callable[[bytes], Path]) -> None:
    """A refused archive leaves no file descriptor behind."""
    path = write(_manifest_crc())
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(MalformedArchive):
            open_archive(path)
    assert len(os.listdir("/proc/self/fd")) == before


# --- state.json -----------------------------------------------------------------------------------------


def _state_of(path: Path) -> bytes:
    with open_archive(path) as snap:
        data = snap.read_entry("state.json")
    assert data is not None
    return data


@pytest.mark.parametrize(
    "new_payload", [pytest.param(b"HELLO!", id="other-size"), pytest.param(b"jello", id="same-size")]
)
def test_state_goes_stale_when_another_tool_replaces_the_payload(
    tmp_path: Path, write: Callable[[bytes], Path], new_payload: bytes
) -> None:
    """A payload replaced with ``state.json`` copied unchanged marks the state stale and untrusted."""
    original = tmp_path / "original.sync"
    make_archive(original)
    state = _state_of(original)
    # What the reference's updater does: copy every other entry, payload last.
    path = write(
        writer_bytes(
            [
                ("manifest.toml", MANIFEST),
                ("sync.wasm", EMPTY_WASM),
                ("state.json", state),
                ("payload", new_payload),
            ]
        )
    )
    with open_archive(path) as snap:
        assert snap.state.stale
        assert snap.state.trusted_blake3 is None
        assert snap.state.payload_blake3 == blake3.blake3(b"hello").hexdigest()
        assert snap.generation == 0
        assert snap.read_payload() == new_payload


def test_fresh_state_is_trusted(archive: Path) -> None:
    """A state written with its payload is not stale and its hash is trusted."""
    with open_archive(archive) as snap:
        assert not snap.state.stale
        assert snap.state.trusted_blake3 == blake3.blake3(b"hello").hexdigest()
        assert snap.state.payload_size == 5
        assert snap.state.updated_at is None


def test_archive_without_state_has_generation_zero(write: Callable[[bytes], Path]) -> None:
    """An archive without ``state.json`` (e.g. from the reference) has an empty, untrusted state."""
    with open_archive(write(tv1())) as snap:
        assert snap.state == ArchiveState()
        assert snap.state.trusted_blake3 is None


#: Marks a key that ``_state_json`` leaves out.
_DROP = object()
_GOOD_STATE = {
    "generation": 3,
    "updated_at": "2026-01-01T00:00:00Z",
    "payload_size": 5,
    "payload_crc32": zlib.crc32(b"hello"),
    "payload_blake3": blake3.blake3(b"hello").hexdigest(),
}


def _state_json(**changes: object) -> bytes:
    doc: dict[str, object] = {**_GOOD_STATE, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


def test_valid_state_is_read(write: Callable[[bytes], Path]) -> None:
    """A well-formed ``state.json`` is decoded into generation, time and hashes."""
    with open_archive(write(writer_bytes([*base_entries(), ("state.json", _state_json())]))) as snap:
        assert snap.generation == 3
        assert snap.state.updated_at == "2026-01-01T00:00:00Z"
        assert snap.state.trusted_blake3 == _GOOD_STATE["payload_blake3"]


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(_state_json(generation=_DROP), id="missing-key"),
        pytest.param(_state_json(extra=1), id="extra-key"),
        pytest.param(_state_json(generation=-1), id="negative-generation"),
        pytest.param(_state_json(generation=True), id="bool-generation"),
        pytest.param(_state_json(generation=1.5), id="float-generation"),
        pytest.param(_state_json(generation=2**63), id="generation-over-i64"),
        pytest.param(_state_json(payload_size="5"), id="string-size"),
        pytest.param(_state_json(payload_crc32=2**32), id="crc-over-u32"),
        pytest.param(_state_json(payload_blake3="AB" * 32), id="uppercase-hash"),
        pytest.param(_state_json(payload_blake3="ab"), id="short-hash"),
        pytest.param(_state_json(updated_at=5), id="numeric-updated-at"),
        pytest.param(
            _state_json().replace(b'"generation": 3', b'"generation": ' + b"1" * 5000),
            id="int-over-digit-limit",
        ),
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="deep-nesting"),
        pytest.param(b" " * (MAX_STATE_SIZE + 1), id="over-limit"),
    ],
)
def test_malformed_state_is_refused(write: Callable[[bytes], Path], state: bytes) -> None:
    """A ``state.json`` that is not exactly our object raises ``MalformedArchive`` at open."""
    with pytest.raises(MalformedArchive, match=r"state\.json|limit"):
        open_archive(write(writer_bytes([*base_entries(), ("state.json", state)])))


# --- the payload reader --------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 40


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """An archive with a 10 KiB payload followed by ``sync.wasm`` and ``state.json``."""
    path = tmp_path / "big.sync"
    make_archive(path, PAYLOAD)
    return path


def test_reader_seek_tell_read(big: Path) -> None:
    """Reads advance ``tell``; ``seek`` works from start, current position and end."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        assert (reader.readable(), reader.seekable(), reader.size) == (True, True, len(PAYLOAD))
        assert reader.read(10) == PAYLOAD[:10]
        assert reader.tell() == 10
        assert reader.seek(100) == 100
        assert reader.read(5) == PAYLOAD[100:105]
        assert reader.seek(-5, io.SEEK_CUR) == 100
        assert reader.seek(-10, io.SEEK_END) == len(PAYLOAD) - 10
        assert reader.read() == PAYLOAD[-10:]
        assert reader.tell() == len(PAYLOAD)
        reader.seek(0)
        assert b"".join(reader.iter_blocks(3000)) == PAYLOAD
        fd, offset, size = reader.span
        assert (offset, size) == (snap.payload_offset, len(PAYLOAD))
        assert os.pread(fd, 4, offset) == PAYLOAD[:4]


def test_reader_is_bounded(big: Path) -> None:
    """Reads never go past the payload into the following entries, whatever size is asked."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        assert reader.read(len(PAYLOAD) + 1000) == PAYLOAD
        assert reader.read(1) == b""
        reader.seek(0)
        assert reader.read(None) == PAYLOAD
        reader.seek(0)
        assert reader.readall() == PAYLOAD
        reader.seek(0)
        assert reader.read(-1) == PAYLOAD


def test_reader_past_end(big: Path) -> None:
    """Seeking past the end is allowed and reads there return nothing."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        assert reader.seek(len(PAYLOAD) + 100) == len(PAYLOAD) + 100
        assert reader.read() == b""
        assert reader.read(10) == b""
        assert reader.readinto(bytearray(10)) == 0
        assert reader.tell() == len(PAYLOAD) + 100


def test_reader_readinto(big: Path) -> None:
    """``readinto`` fills bytearrays and memoryviews and stops at the payload's end."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        buffer = bytearray(100)
        assert reader.readinto(buffer) == 100
        assert buffer == PAYLOAD[:100]
        reader.seek(len(PAYLOAD) - 30)
        view = memoryview(bytearray(64))
        assert reader.readinto(view) == 30
        assert view[:30].tobytes() == PAYLOAD[-30:]
        assert reader.readinto(bytearray(0)) == 0
        reader.seek(0)
        assert io.BufferedReader(reader, buffer_size=777).read() == PAYLOAD


@pytest.mark.parametrize(
    ("offset", "whence"),
    [
        pytest.param(-1, io.SEEK_SET, id="negative-set"),
        pytest.param(-4, io.SEEK_CUR, id="negative-cur"),
        pytest.param(-(len(PAYLOAD) + 1), io.SEEK_END, id="before-start-end"),
        pytest.param(0, 7, id="bad-whence"),
    ],
)
def test_reader_refuses_bad_seeks(big: Path, offset: int, whence: int) -> None:
    """A seek before the start or with an unknown ``whence`` raises ``ValueError`` and keeps the position."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        reader.read(3)
        with pytest.raises(ValueError, match=r"seek|whence"):
            reader.seek(offset, whence)
        assert reader.tell() == 3


def test_closed_reader_refuses_reads(big: Path) -> None:
    """A closed reader raises ``ValueError`` on reads and closing twice is harmless."""
    with open_archive(big) as snap:
        reader = snap.open_payload()
        reader.close()
        reader.close()
        with pytest.raises(ValueError, match="closed"):
            reader.read()
        with pytest.raises(ValueError, match="closed"):
            reader.readinto(bytearray(4))


def test_reader_survives_snapshot_close(big: Path) -> None:
    """A reader opened from a snapshot keeps working after the snapshot is closed."""
    snap = open_archive(big)
    reader = snap.open_payload()
    snap.close()
    snap.close()
    assert snap.closed
    with reader:
        assert reader.read() == PAYLOAD
    with pytest.raises(ValueError, match="closed"):
        snap.open_payload()


def test_reader_keeps_the_old_inode_after_replace(big: Path, tmp_path: Path) -> None:
    """After ``os.replace`` of the archive, an open snapshot and its reader still read the old bytes."""
    snap = open_archive(big)
    reader = snap.open_payload()
    reader.read(7)
    other = tmp_path / "other.sync"
    make_archive(other, b"entirely different payload")
    os.replace(other, big)
    try:
        assert reader.read() == PAYLOAD[7:]
        assert snap.read_payload() == PAYLOAD
        assert snap.identity.inode != os.stat(big).st_ino
        with open_archive(big) as fresh:
            assert fresh.read_payload() == b"entirely different payload"
    finally:
        reader.close()
        snap.close()


def test_reader_keeps_the_old_payload_across_a_commit(big: Path) -> None:
    """A payload swap by ``commit_payload`` does not change what an already open reader returns."""
    with open_archive(big) as snap, snap.open_payload() as reader:
        commit_payload(big, snap.generation, b"new")
        assert reader.read() == PAYLOAD
    with open_archive(big) as fresh:
        assert (fresh.read_payload(), fresh.generation) == (b"new", 1)


def test_snapshot_facts(big: Path) -> None:
    """A snapshot reports its file identity, entries and a streaming digest of the payload."""
    with open_archive(big) as snap:
        st = os.stat(big)
        assert (snap.identity.inode, snap.identity.size, snap.identity.mtime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        )
        assert snap.entry_names == ("manifest.toml", "payload", "sync.wasm", "state.json")
        digest = snap.digest_payload()
        assert (digest.size, digest.crc32, digest.blake3) == (
            len(PAYLOAD),
            zlib.crc32(PAYLOAD),
            blake3.blake3(PAYLOAD).hexdigest(),
        )
        assert snap.read_entry("payload") == PAYLOAD


# --- large archives: what the open reads lies in several windows of the file ----------------------------


@pytest.fixture
def large_committed(tmp_path: Path) -> Path:
    """An archive whose payload (256 KiB) is far larger than the read window, after one commit.

    After the commit ``state.json`` follows the payload, so the open needs the file's start (manifest),
    its end (directory, state) and nothing between.
    """
    path = tmp_path / "large.sync"
    make_archive(path, b"old")
    commit_payload(path, 0, os.urandom(256 * 1024))
    return path


def test_large_archive_opens_with_manifest_and_state(large_committed: Path) -> None:
    """Manifest, state and payload of a large archive are the ones stored, read from the right places."""
    data = large_committed.read_bytes()
    with open_archive(large_committed) as snap:
        assert snap.generation == 1
        assert snap.payload_size == 256 * 1024
        assert snap.read_payload() == data[snap.payload_offset : snap.payload_offset + 256 * 1024]
        assert snap.manifest_bytes == MANIFEST
        assert snap.state.stale is False


@pytest.mark.parametrize("entry", ["manifest.toml", "state.json"])
def test_large_archive_local_header_damage_is_found(large_committed: Path, entry: str) -> None:
    """A local header CRC that disagrees with the central record is refused at either end of a large file."""
    data = large_committed.read_bytes()
    rec = records(data)[entry]
    (crc,) = struct.unpack_from("<L", data, rec.local + 14)
    large_committed.write_bytes(patch(data, rec.local + 14, "<L", crc ^ 1))
    with pytest.raises(MalformedArchive, match="local header CRC or sizes"):
        open_archive(large_committed)


@pytest.mark.parametrize("entry", ["manifest.toml", "state.json"])
def test_large_archive_entry_data_damage_is_found(large_committed: Path, entry: str) -> None:
    """A flipped byte in the manifest or state data of a large archive fails the CRC check of the open."""
    data = large_committed.read_bytes()
    rec = records(data)[entry]
    (n, m) = struct.unpack_from("<2H", data, rec.local + 26)
    at = rec.local + 30 + n + m
    large_committed.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :])
    with pytest.raises(MalformedArchive, match="CRC-32"):
        open_archive(large_committed)


def test_an_open_reads_each_end_of_the_file_once(
    large_committed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening reads a small archive with one ``pread`` and a large one with two (its start and its end):
    the directory, every local header, the manifest and the state come from those reads."""
    small = tmp_path / "small.sync"
    make_archive(small)
    calls: list[tuple[int, int]] = []
    real_pread = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        calls.append((size, offset))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting)
    for path, expected in ((small, 1), (large_committed, 2)):
        calls.clear()
        open_archive(path).close()
        assert len(calls) == expected, calls


# --- served strings (issue 11 finding 4): content_type and display_ext become a header and a file name ---


def _with_sync_fields(content_type: str, display_ext: str) -> bytes:
    """TV-1 with these two ``[sync]`` values (TOML basic strings, so control characters are escapes)."""
    text = MANIFEST.decode()
    original = Manifest.from_bytes(MANIFEST).sync
    encoded = {k: json.dumps(v) for k, v in (("content_type", content_type), ("display_ext", display_ext))}
    text = text.replace(
        f'content_type = "{original.content_type}"', f"content_type = {encoded['content_type']}"
    )
    text = text.replace(f'display_ext = "{original.display_ext}"', f"display_ext = {encoded['display_ext']}")
    assert Manifest.from_toml(text).sync.content_type == content_type
    return writer_bytes([("manifest.toml", text.encode()), ("payload", b"hello"), ("sync.wasm", EMPTY_WASM)])


@pytest.mark.parametrize(
    ("content_type", "display_ext", "field"),
    [
        ("text/html\r\nSet-Cookie: pwned=1", "csv", "sync.content_type"),
        ("text/html\nX: y", "csv", "sync.content_type"),
        ("text/\u00e9t\u00e9", "csv", "sync.content_type"),
        ("text/plain; charset=\x1b[8m", "csv", "sync.content_type"),
        ("texthtml", "csv", "sync.content_type"),
        ("text/csv", "/../../tmp/pwn", "sync.display_ext"),
        ("text/csv", "..", "sync.display_ext"),
        ("text/csv", "a\\b", "sync.display_ext"),
        ("text/csv", "csv\x00", "sync.display_ext"),
        ("text/csv", "x" * 33, "sync.display_ext"),
    ],
    ids=[
        "crlf-header",
        "lf",
        "non-latin1",
        "esc-param",
        "no-slash",
        "dot-path",
        "dotdot",
        "backslash",
        "nul",
        "long",
    ],
)
def test_served_strings_that_are_not_a_media_type_or_extension_are_refused(
    write: Callable[[bytes], Path], content_type: str, display_ext: str, field: str
) -> None:
    """The strict reader refuses a content_type that is not an RFC 9110 media type and a display_ext that is
    not a short run of letters, digits, ``_``, ``-`` (dot-separated labels), with one error naming the
    field, the value escaped (finding 4: the CR LF became a Set-Cookie header in mountd)."""
    with pytest.raises(ManifestError) as caught:
        open_archive(write(_with_sync_fields(content_type, display_ext)))
    assert caught.value.field == field
    assert not set(str(caught.value)) & {"\n", "\r", "\x1b"}


@pytest.mark.parametrize(
    ("content_type", "display_ext"),
    [
        ("text/plain; charset=utf-8", "txt"),
        ('multipart/mixed; boundary="a b"', "tar.gz"),
        ("application/vnd.ms-excel", "xls"),
        ("application/octet-stream", ""),
    ],
)
def test_served_strings_of_real_archives_are_kept(
    write: Callable[[bytes], Path], content_type: str, display_ext: str
) -> None:
    """Media types with parameters, dotted extensions and no extension at all still open."""
    with open_archive(write(_with_sync_fields(content_type, display_ext))) as snap:
        assert (snap.manifest.sync.content_type, snap.manifest.sync.display_ext) == (
            content_type,
            display_ext,
        )


def test_remembered_served_strings_never_admit_a_refused_one() -> None:
    """Values accepted once are remembered (every open checks them), but only exact ``str`` values: a
    refused value is refused every time, even after many accepted ones and after the memory was emptied,
    and a ``str`` subclass that compares equal to an accepted value is checked itself."""

    class Sneaky(str):  # equal to everything, hashed like an accepted value
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("csv" if "/" not in self else "text/csv")

    for _ in range(2):
        assert media_type_problem("text/csv") is None
        assert display_ext_problem("csv") is None
        assert media_type_problem("text/csv\r\nSet-Cookie: a=b") is not None
        assert display_ext_problem("../csv") is not None
        assert media_type_problem(Sneaky("text/csv\r\nX: y")) is not None
        assert display_ext_problem(Sneaky("csv/..")) is not None
    for i in range(MAX_ACCEPTED + 5):  # past the bound: the memory is emptied, never wrong
        assert media_type_problem(f"text/x-{i}") is None
    assert media_type_problem("text/csv\n") is not None
    assert media_type_problem("text/csv") is None


def test_snapshots_and_states_made_without_their_constructors_have_every_field(tmp_path: Path) -> None:
    """``open_archive`` fills a snapshot, and the written-state fast path fills a state, without their frozen
    ``__init__``: each must have every field of its class, in order (a field added to the class and not to
    those two places would otherwise be missing, or silently keep its class default)."""
    path = tmp_path / "a.sync"
    make_archive(path)
    with open_archive(path) as snapshot:
        made = {name: value for name, value in vars(snapshot).items() if name != "path"}  # (cached_property)
        assert list(made) == [field.name for field in dataclasses.fields(ArchiveSnapshot)]
        state = snapshot.state
        assert state.generation == 0
        assert state.payload_blake3 is not None  # the fast path's answer, not ArchiveState()
        assert list(vars(state)) == [field.name for field in dataclasses.fields(ArchiveState)]
        assert state == ArchiveState(**vars(state))
