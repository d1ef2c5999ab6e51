"""Robustness of the reader against damaged archives: every failure is an ``ArchiveError``, nothing hangs.

Valid archives (the reference layout, ours with ``state.json``, one with ``context.json`` and ``sync.proof``,
one with a deflated manifest, one with ZIP64 local extras and one with ZIP64 end records) are damaged by
overwriting bytes, truncating or inserting bytes. ``open_archive`` must then either succeed or raise
``ArchiveError``; when it succeeds, every read the snapshot offers must obey the same rule. Runs are
derandomized and use no example database, so CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inline_check import read_both_ways

from sync_format import ArchiveError, open_archive
from sync_format.testing import REFERENCE_MANIFEST_TOML, make_archive, reference_archive_bytes

EMPTY_WASM = b"\x00asm\x01\x00\x00\x00"
MANIFEST = REFERENCE_MANIFEST_TOML.encode()

FUZZ = settings(
    max_examples=300,
    # No per-example deadline, as the other property tests: a stall of the shared machine took one example
    # past 2 s (DeadlineExceeded) in a full run; pytest's own timeout still bounds the test.
    deadline=None,
    derandomize=True,
    database=None,
)


@dataclass(frozen=True)
class StoredEntry:
    """Where a STORED entry's data and CRC fields are, so its content can be changed consistently.

    Attributes:
        name: Entry name.
        data_offset: First data byte.
        size: Data length.
        local_crc: Offset of the CRC field in the local header.
        central_crc: Offset of the CRC field in the central record.
    """

    name: str
    data_offset: int
    size: int
    local_crc: int
    central_crc: int


@dataclass(frozen=True)
class Base:
    """A valid archive to damage.

    Attributes:
        name: Label for failure reports.
        data: The archive bytes.
        hot: Offsets inside ZIP records (local headers, central directory, end records), where damage
            exercises the parser rather than the CRC check.
    """

    name: str
    data: bytes
    hot: tuple[int, ...]
    stored: tuple[StoredEntry, ...]


def _zipfile_archive(*, zip64: bool, deflate_manifest: bool) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in (("manifest.toml", MANIFEST), ("payload", b"hello"), ("sync.wasm", EMPTY_WASM)):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if deflate_manifest and name == "manifest.toml":
                info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
    return out.getvalue()


def _with_zip64_end(data: bytes) -> bytes:
    """The same archive ending in a ZIP64 end record, its locator and a classic record full of markers."""
    eocd = len(data) - 22
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", data, eocd)
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:eocd] + zip64 + locator + end


def _layout(data: bytes) -> tuple[tuple[int, ...], tuple[StoredEntry, ...]]:
    """Offsets of every local header byte and everything from the central directory on; STORED entries."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        central = zf.start_dir
    hot: list[int] = []
    stored: list[StoredEntry] = []
    for info in infos:
        (n, m) = struct.unpack_from("<2H", data, info.header_offset + 26)
        hot.extend(range(info.header_offset, info.header_offset + 30 + n + m))
        if info.compress_type == zipfile.ZIP_STORED:
            data_offset = info.header_offset + 30 + n + m
            stored.append(
                StoredEntry(info.filename, data_offset, info.file_size, info.header_offset + 14, central + 16)
            )
        (cn, cm, ck) = struct.unpack_from("<3H", data, central + 28)
        central += 46 + cn + cm + ck
    hot.extend(range(zf.start_dir, len(data)))
    return tuple(hot), tuple(stored)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, ...]:
    """The valid archives every strategy starts from."""
    root = tmp_path_factory.mktemp("fuzz-bases")
    make_archive(root / "state.sync")
    make_archive(root / "full.sync", b"payload with context", context=b'{"value":true}', proof=b"proof")
    raw = {
        "reference": reference_archive_bytes(root),
        "state": (root / "state.sync").read_bytes(),
        "context-proof-state": (root / "full.sync").read_bytes(),
        "deflated-manifest": _zipfile_archive(zip64=False, deflate_manifest=True),
        "zip64-local": _zipfile_archive(zip64=True, deflate_manifest=False),
        "zip64-end": _with_zip64_end(reference_archive_bytes(root)),
    }
    built = tuple(Base(name, data, *_layout(data)) for name, data in raw.items())
    for base in built:  # every base must be valid, or the fuzzing proves nothing
        path = root / f"{base.name}.check.sync"
        path.write_bytes(base.data)
        with open_archive(path) as snap:
            assert snap.read_payload()
    return built


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file each example writes its damaged archive to."""
    return tmp_path_factory.mktemp("fuzz") / "case.sync"


def exercise(path: Path) -> None:
    """Open an archive and use everything it offers; only ``ArchiveError`` may escape (and is swallowed)."""
    try:
        snap = open_archive(path)
    except ArchiveError:
        return
    reads: list[Callable[[], object]] = [
        snap.read_payload,
        snap.digest_payload,
        snap.read_wasm,
        snap.read_context,
        lambda: snap.expiry().is_expired(),
        snap.manifest.to_toml,
        snap.manifest.normalized,
    ]
    reads.extend(lambda name=name: snap.read_entry(name) for name in snap.entry_names)
    with snap:
        for read in reads:
            try:
                read()
            except ArchiveError:
                continue
        with snap.open_payload() as reader:
            reader.seek(snap.payload_size // 2)
            with contextlib.suppress(ArchiveError):
                reader.read()


# Mutation recipes: (offset selector, payload). Offsets are drawn as large integers and reduced modulo the
# base's length (or its list of hot offsets) at run time, so the strategies do not depend on the fixtures.
_OVERWRITES = st.one_of(
    st.binary(min_size=1, max_size=1),
    st.sampled_from(
        [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]
    ),
    st.sampled_from([b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"]),
    st.binary(min_size=2, max_size=8),
)


@dataclass(frozen=True)
class Overwrite:
    """Overwrite bytes at an offset (``hot`` picks from the record offsets, else anywhere)."""

    hot: bool
    where: int
    data: bytes
    xor: bool


_OVERWRITE = st.builds(
    Overwrite,
    hot=st.booleans(),
    where=st.integers(0, 2**32),
    data=_OVERWRITES,
    xor=st.booleans(),
)


def _apply(base: Base, edits: list[Overwrite]) -> bytes:
    data = bytearray(base.data)
    for edit in edits:
        pos = base.hot[edit.where % len(base.hot)] if edit.hot else edit.where % len(data)
        for i, value in enumerate(edit.data[: len(data) - pos]):
            data[pos + i] = data[pos + i] ^ value if edit.xor else value
    return bytes(data)


@FUZZ
@given(which=st.integers(0, 2**16), edits=st.lists(_OVERWRITE, min_size=1, max_size=8))
def test_overwritten_bytes(bases: tuple[Base, ...], target: Path, which: int, edits: list[Overwrite]) -> None:
    """Archives with bytes flipped or overwritten at several places open or fail with ``ArchiveError``."""
    base = bases[which % len(bases)]
    target.write_bytes(_apply(base, edits))
    exercise(target)


@FUZZ
@given(which=st.integers(0, 2**16), cut=st.integers(0, 2**32), near_end=st.booleans())
def test_truncated(bases: tuple[Base, ...], target: Path, which: int, cut: int, near_end: bool) -> None:
    """Archives cut at any length (often inside the end records) open or fail with ``ArchiveError``."""
    base = bases[which % len(bases)]
    size = len(base.data) - 1 - cut % 128 if near_end else cut % len(base.data)
    target.write_bytes(base.data[: max(size, 0)])
    exercise(target)


@FUZZ
@given(
    which=st.integers(0, 2**16),
    where=st.integers(0, 2**32),
    hot=st.booleans(),
    inserted=st.one_of(
        st.binary(min_size=1, max_size=64),
        st.sampled_from([b"PK\x05\x06" + bytes(18), b"PK\x03\x04", b"PK\x01\x02", b"\x00" * 4]),
    ),
)
def test_inserted_bytes(
    bases: tuple[Base, ...], target: Path, which: int, where: int, hot: bool, inserted: bytes
) -> None:
    """Archives with bytes inserted anywhere (shifting later offsets) open or fail with ``ArchiveError``."""
    base = bases[which % len(bases)]
    pos = base.hot[where % len(base.hot)] if hot else where % (len(base.data) + 1)
    target.write_bytes(base.data[:pos] + inserted + base.data[pos:])
    exercise(target)


def test_bases_are_distinct(bases: tuple[Base, ...]) -> None:
    """Each base archive exercises a different layout (no two are byte-identical)."""
    assert len({base.data for base in bases}) == len(bases)
    assert {base.name for base in bases} >= {"zip64-local", "zip64-end", "context-proof-state"}


_TEXTUAL = st.one_of(
    st.binary(min_size=1, max_size=8),
    st.sampled_from(
        [
            b"=",
            b"[",
            b"]",
            b'"',
            b"'",
            b"\\",
            b"\n",
            b"{",
            b"}",
            b",",
            b"#",
            b"-1",
            b"9" * 8,
            b"nan",
            b"\x00",
            b"\xff",
        ]
    ),
)


@FUZZ
@given(
    which=st.integers(0, 2**16),
    entry=st.integers(0, 2**16),
    edits=st.lists(st.tuples(st.integers(0, 2**32), _TEXTUAL), min_size=1, max_size=6),
)
def test_entry_content_with_valid_crc(
    bases: tuple[Base, ...], target: Path, which: int, entry: int, edits: list[tuple[int, bytes]]
) -> None:
    """Entries whose content is damaged but whose CRCs are recomputed open or fail with ``ArchiveError``."""
    base = bases[which % len(bases)]
    # The payload's CRC is not read at open, so damaging it says nothing new; the other entries are parsed.
    candidates = [e for e in base.stored if e.name != "payload"]
    chosen = candidates[entry % len(candidates)]
    data = bytearray(base.data)
    content = bytearray(data[chosen.data_offset : chosen.data_offset + chosen.size])
    for where, value in edits:
        if not content:
            break
        pos = where % len(content)
        content[pos : pos + len(value)] = value[: len(content) - pos]
    data[chosen.data_offset : chosen.data_offset + chosen.size] = content
    crc = struct.pack("<L", zlib.crc32(content))
    data[chosen.local_crc : chosen.local_crc + 4] = crc
    data[chosen.central_crc : chosen.central_crc + 4] = crc
    target.write_bytes(bytes(data))
    exercise(target)


@FUZZ
@given(
    which=st.integers(0, 2**16),
    edits=st.lists(_OVERWRITE, min_size=0, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 2**32)),
)
def test_inline_local_headers_refuse_exactly_what_the_full_check_refuses(
    bases: tuple[Base, ...], target: Path, which: int, edits: list[Overwrite], cut: int | None
) -> None:
    """The reader's inline acceptance of usual local headers gives the same directory, or the same refusal
    (type, message, offset), as checking every local header with ``_local_header``, on damaged archives."""
    base = bases[which % len(bases)]
    data = _apply(base, edits)
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    inline, full = read_both_ways(data, target)
    assert inline == full
