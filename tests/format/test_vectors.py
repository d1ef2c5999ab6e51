"""The spec's test vectors (sync-format.md §10) as parametrized tests whose ids are the vector names.

Covered here: TV-1 (builder layout), TV-2 (payload update), TV-3 (rejections and acceptances), TV-4
(Info-ZIP layouts, rebuilt in Python), TV-8 (TTL and timestamps), TV-9 (display and store names) and
TV-10 (host allow-lists). The signature vectors TV-5…TV-7 live in their own module. Archives are built on
demand with ``sync_format.testing`` or, for shapes our writer never produces, with ``zipfile`` or raw bytes.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import blake3
import pytest

from sync_format import (
    ArchiveError,
    MalformedArchive,
    ManifestError,
    MissingEntry,
    SyncBuilder,
    commit_payload,
    display_name,
    expiry,
    host_allowed,
    invalid_entries,
    open_archive,
    parse_timestamp_ns,
    store_path_for,
    url_allowed,
    writable_display_name,
)
from sync_format.freshness import NS
from sync_format.signing.manifest_signature import manifest_hash
from sync_format.testing import (
    REFERENCE_MANIFEST_TOML,
    make_archive,
    make_manifest,
    reference_archive_bytes,
    reference_manifest,
)
from sync_format.zip_writer import ZipWriter

EMPTY_WASM = b"\x00asm\x01\x00\x00\x00"
MANIFEST_BYTES = REFERENCE_MANIFEST_TOML.encode()

# ---------------------------------------------------------------------------------------------------------
# TV-1 Builder archive layout
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Expected byte layout of one builder archive.

    Attributes:
        context: ``context.json`` given to the builder, if any.
        proof: ``sync.proof`` given to the builder, if any.
        file_size: Expected file size.
        entries: ``(name, header offset, data offset, size, CRC-32 or None)`` in order.
        cd_offset: Expected central directory offset.
        whole_blake3: Expected BLAKE3 of the whole file, when the spec gives one.
    """

    context: dict[str, object] | None
    proof: bytes | None
    file_size: int
    entries: tuple[tuple[str, int, int, int, int | None], ...]
    cd_offset: int
    whole_blake3: str | None


_TV1_COMMON = (
    ("manifest.toml", 0, 43, 383, None),
    ("payload", 426, 463, 5, 0x3610A686),
    ("sync.wasm", 468, 507, 8, 0x1C4B33CE),
)

TV1_LAYOUTS = [
    pytest.param(
        Layout(
            context=None,
            proof=None,
            file_size=704,
            entries=_TV1_COMMON,
            cd_offset=515,
            whole_blake3="00fdfd81351b258081d628cd086969b1e80d12002eae9249f7b3bbd5f6820fbc",
        ),
        id="TV-1",
    ),
    pytest.param(
        Layout(
            context={"value": True},
            proof=b"proof",
            file_size=919,
            entries=(
                *_TV1_COMMON,
                ("context.json", 515, 557, 14, None),
                ("sync.proof", 571, 611, 5, None),
            ),
            cd_offset=616,
            whole_blake3=None,
        ),
        id="TV-1-context-proof",
    ),
]


def _build_tv1(path: Path, layout: Layout) -> None:
    builder = (
        SyncBuilder()
        .with_manifest(reference_manifest())
        .with_payload_bytes(b"hello")
        .with_wasm_bytes(EMPTY_WASM)
        .without_state()
    )
    if layout.context is not None:
        builder.with_context_json(layout.context)
    if layout.proof is not None:
        builder.with_proof_bytes(layout.proof)
    builder.write_to(path)


@pytest.mark.parametrize("layout", TV1_LAYOUTS)
def test_tv1_builder_layout(tmp_path: Path, layout: Layout) -> None:
    """The builder writes the reference's exact bytes: sizes, offsets, CRCs, records and whole-file hash."""
    path = tmp_path / "tv1.sync"
    _build_tv1(path, layout)
    data = path.read_bytes()

    assert len(data) == layout.file_size
    if layout.whole_blake3 is not None:
        assert blake3.blake3(data).hexdigest() == layout.whole_blake3
    eocd = layout.file_size - 22
    sig, _, _, count, total, cd_size, cd_offset, comment = struct.unpack_from("<4s4H2LH", data, eocd)
    assert (sig, count, total, cd_offset, comment) == (
        b"PK\x05\x06",
        len(layout.entries),
        len(layout.entries),
        layout.cd_offset,
        0,
    )
    assert cd_offset + cd_size == eocd

    with open_archive(path) as snap:
        got = [(e.name, e.header_offset, e.data_offset, e.size, e.crc32) for e in snap.directory.entries]
        for (name, header, offset, size, crc), entry in zip(layout.entries, got, strict=True):
            assert entry[:4] == (name, header, offset, size)
            if crc is not None:
                assert entry[4] == crc
            assert entry[4] == zlib.crc32(data[offset : offset + size])
            # §1.4 local header: version 10, no flags, STORED, DOS time 0 / date 0x21, no extra field.
            local = struct.unpack_from("<4s5H3L2H", data, header)
            assert local == (b"PK\x03\x04", 10, 0, 0, 0, 0x21, entry[4], size, size, len(name), 0)
        assert snap.payload_offset == 463
        assert snap.payload_size == 5
        assert snap.has_wasm
        assert snap.has_context is (layout.context is not None)
        assert snap.has_proof is (layout.proof is not None)
        assert snap.manifest_bytes == MANIFEST_BYTES
        assert snap.read_payload() == b"hello"
        if layout.context is not None:
            assert snap.read_context() == b'{"value":true}'

    pos = layout.cd_offset
    for name, header, *_ in layout.entries:
        record = struct.unpack_from("<4s6H3L5H2L", data, pos)
        assert record[0] == b"PK\x01\x02"
        assert record[1:3] == (0x030A, 10)  # made by Unix / spec 1.0, needed 1.0
        assert record[15:] == (0x81A40000, header)  # regular file 0644, local header offset
        pos += 46 + record[10]
        assert data[pos - record[10] : pos] == name.encode()
    assert pos == eocd


# ---------------------------------------------------------------------------------------------------------
# TV-2 Payload update
# ---------------------------------------------------------------------------------------------------------


def _reference_updated_bytes() -> bytes:
    """What the reference writes for TV-2: manifest, sync.wasm, then the payload, all STORED."""
    out = io.BytesIO()
    writer = ZipWriter(out)
    writer.add_bytes("manifest.toml", MANIFEST_BYTES)
    writer.add_bytes("sync.wasm", EMPTY_WASM)
    writer.add_bytes("payload", b"updated payload bytes")
    writer.finish()
    return out.getvalue()


@pytest.mark.parametrize("new_payload", [pytest.param(b"updated payload bytes", id="TV-2")])
def test_tv2_payload_update(tmp_path: Path, new_payload: bytes) -> None:
    """A commit keeps the manifest bytes, moves the payload last and lays it out as the reference does."""
    path = tmp_path / "tv1.sync"
    path.write_bytes(reference_archive_bytes(tmp_path / "build"))

    result = commit_payload(path, 0, new_payload)

    data = path.read_bytes()
    reference = _reference_updated_bytes()
    assert len(reference) == 720
    with open_archive(path) as snap:
        # Our commit appends state.json after the payload; everything up to the payload's end matches.
        assert snap.entry_names == ("manifest.toml", "sync.wasm", "payload", "state.json")
        assert (snap.payload.header_offset, snap.payload_offset, snap.payload_size) == (473, 510, 21)
        assert (snap.payload_offset, snap.payload_size) != (463, 5)
        assert snap.manifest_bytes == MANIFEST_BYTES
        assert snap.read_payload() == new_payload
        assert snap.generation == 1
        assert snap.state.trusted_blake3 == blake3.blake3(new_payload).hexdigest()
    assert data[: 510 + 21] == reference[: 510 + 21]
    assert result.payload_offset == 510
    assert result.generation == 1


# ---------------------------------------------------------------------------------------------------------
# TV-3 Rejections and acceptances
# ---------------------------------------------------------------------------------------------------------

STORED = zipfile.ZIP_STORED
DEFLATED = zipfile.ZIP_DEFLATED


def raw_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A ZIP written by Python's ``zipfile`` with the given ``(name, data, method)`` entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, data)
    return out.getvalue()


def _with_manifest(text: str) -> bytes:
    return raw_zip(
        [
            ("manifest.toml", text.encode(), STORED),
            ("payload", b"hello", STORED),
            ("sync.wasm", EMPTY_WASM, STORED),
        ]
    )


_REF = REFERENCE_MANIFEST_TOML
_NO_POLICY = _REF.replace("[policy]\nttl = 3600\ntimeout = 30\n\n", "")
_TTL_NEGATIVE = _REF.replace("ttl = 3600", "ttl = -1")
_VARIANT_VAULT = _REF.replace('variant = "plain"', 'variant = "Vault"')
_UNQUOTED_DATE = _REF.replace('created_at = "2099-01-23T12:00:00Z"', "created_at = 2026-01-01T00:00:00Z")
# Deliberately stricter than the reference (docs/format.md, "Served strings"): header and path injection.
_CONTENT_TYPE_CRLF = _REF.replace(
    'content_type = "text/plain"', 'content_type = "text/html\\r\\nSet-Cookie: a=1"'
)
_DISPLAY_EXT_PATH = _REF.replace('display_ext = "txt"', 'display_ext = "/../../tmp/pwn"')
_EXTRA_TABLES = _REF.replace('hash_algo = "blake3"\n', 'hash_algo = "blake3"\nspec_version = "1.0"\n') + (
    '\n[x-vendor]\nnote = "kept"\n'
)


@dataclass(frozen=True)
class Rejection:
    """A TV-3 archive and the error it must raise.

    Attributes:
        data: The archive bytes.
        error: The ``ArchiveError`` subclass expected.
        detail: Expected ``entry`` (for ``MissingEntry``) or ``field`` (for ``ManifestError``), if any.
    """

    data: Callable[[], bytes]
    error: type[ArchiveError]
    detail: str | None = None


TV3_REJECTIONS = [
    pytest.param(
        Rejection(
            lambda: raw_zip([("payload", b"hello", STORED), ("sync.wasm", EMPTY_WASM, STORED)]),
            MissingEntry,
            "manifest.toml",
        ),
        id="TV-3a",
    ),
    pytest.param(Rejection(lambda: raw_zip([]), MissingEntry, "manifest.toml"), id="TV-3c"),
    pytest.param(
        Rejection(lambda: raw_zip([("sync.wasm", EMPTY_WASM, STORED)]), MissingEntry, "manifest.toml"),
        id="TV-3c-wasm-only",
    ),
    pytest.param(
        Rejection(
            lambda: raw_zip(
                [
                    ("manifest.toml", MANIFEST_BYTES, STORED),
                    ("payload", b"hello hello hello hello", DEFLATED),
                    ("sync.wasm", EMPTY_WASM, STORED),
                ]
            ),
            MalformedArchive,
        ),
        id="TV-3d",
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_NO_POLICY), ManifestError, "policy"), id="TV-3f-no-policy"
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_TTL_NEGATIVE), ManifestError, "policy.ttl"), id="TV-3f-ttl-negative"
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_VARIANT_VAULT), ManifestError, "sync.variant"),
        id="TV-3f-variant-Vault",
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_UNQUOTED_DATE), ManifestError, "meta.created_at"),
        id="TV-3f-unquoted-created-at",
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_CONTENT_TYPE_CRLF), ManifestError, "sync.content_type"),
        id="stricter-content-type-header-injection",
    ),
    pytest.param(
        Rejection(lambda: _with_manifest(_DISPLAY_EXT_PATH), ManifestError, "sync.display_ext"),
        id="stricter-display-ext-path",
    ),
]


@pytest.mark.parametrize("case", TV3_REJECTIONS)
def test_tv3_rejections(tmp_path: Path, case: Rejection) -> None:
    """Each TV-3 rejection raises its specific ``ArchiveError`` subclass naming the entry or field."""
    path = tmp_path / "bad.sync"
    path.write_bytes(case.data())
    with pytest.raises(case.error) as info:
        open_archive(path)
    assert info.value.path == path
    if isinstance(info.value, MissingEntry):
        assert info.value.entry == case.detail
    if isinstance(info.value, ManifestError):
        assert info.value.field == case.detail


def _check_no_wasm(snap_path: Path) -> None:
    with open_archive(snap_path) as snap:
        assert not snap.has_wasm
        assert snap.read_wasm() is None
        assert snap.read_payload() == b"hello"


def _check_deflated_manifest(snap_path: Path) -> None:
    with open_archive(snap_path) as snap:
        assert snap.manifest == reference_manifest()
        assert snap.manifest_bytes == MANIFEST_BYTES
        entry = snap.directory.get("manifest.toml")
        assert entry is not None
        assert entry.method == DEFLATED


def _check_extra_tables(snap_path: Path) -> None:
    with open_archive(snap_path) as snap:
        assert snap.manifest.meta.extra == {"spec_version": "1.0"}
        assert snap.manifest.extra_tables == {"x-vendor": {"note": "kept"}}
        assert snap.manifest.normalized() == reference_manifest().normalized()


TV3_ACCEPTANCES = [
    pytest.param(
        lambda: raw_zip([("manifest.toml", MANIFEST_BYTES, STORED), ("payload", b"hello", STORED)]),
        _check_no_wasm,
        id="TV-3b",
    ),
    pytest.param(
        lambda: raw_zip(
            [
                ("manifest.toml", MANIFEST_BYTES, DEFLATED),
                ("payload", b"hello", STORED),
                ("sync.wasm", EMPTY_WASM, STORED),
            ]
        ),
        _check_deflated_manifest,
        id="TV-3e",
    ),
    pytest.param(lambda: _with_manifest(_EXTRA_TABLES), _check_extra_tables, id="TV-3g"),
]


@pytest.mark.parametrize(("data", "check"), TV3_ACCEPTANCES)
def test_tv3_acceptances(tmp_path: Path, data: Callable[[], bytes], check: Callable[[Path], None]) -> None:
    """Archives the reference refuses but we accept on purpose, and manifests with unknown keys, open."""
    path = tmp_path / "ok.sync"
    path.write_bytes(data())
    check(path)


# ---------------------------------------------------------------------------------------------------------
# TV-4 Web-viewer samples (Info-ZIP layout rebuilt in Python)
# ---------------------------------------------------------------------------------------------------------

#: Info-ZIP 3.0 on Linux: "UT" (mtime, atime) + "ux" (uid, gid) in local headers; "UT" (mtime) + "ux"
#: in the central directory.
INFOZIP_LOCAL_EXTRA = struct.pack("<HHBLL", 0x5455, 9, 3, 0x67A0_0000, 0x67A0_0000) + struct.pack(
    "<HHBBLBL", 0x7875, 11, 1, 4, 1000, 4, 1000
)
INFOZIP_CENTRAL_EXTRA = struct.pack("<HHBL", 0x5455, 5, 3, 0x67A0_0000) + struct.pack(
    "<HHBBLBL", 0x7875, 11, 1, 4, 1000, 4, 1000
)


def infozip_archive(entries: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, int]]:
    """A STORED ZIP shaped like Info-ZIP's ``zip -0`` output: 28-byte local and 24-byte central extras.

    Returns:
        The bytes and each entry's local header offset.
    """
    assert len(INFOZIP_LOCAL_EXTRA) == 28
    assert len(INFOZIP_CENTRAL_EXTRA) == 24
    body = b""
    central = b""
    offsets: dict[str, int] = {}
    for name, data in entries:
        raw = name.encode()
        crc = zlib.crc32(data)
        offsets[name] = len(body)
        body += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 10, 0, 0, 0x6000, 0x5A42, crc, len(data), len(data), len(raw), 28
        )
        body += raw + INFOZIP_LOCAL_EXTRA + data
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            0x031E,
            10,
            0,
            0,
            0x6000,
            0x5A42,
            crc,
            len(data),
            len(data),
            len(raw),
            24,
            0,
            0,
            1,
            0x81A40000,
            offsets[name],
        )
        central += raw + INFOZIP_CENTRAL_EXTRA
    eocd = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0
    )
    return body + central + eocd, offsets


@dataclass(frozen=True)
class Sample:
    """One web-viewer sample of TV-4 (payload bytes are synthetic; sizes and manifests are the spec's).

    Attributes:
        name: Sample file name.
        content_type: ``sync.content_type``.
        display_ext: ``sync.display_ext``.
        ttl: ``policy.ttl``.
        timeout: ``policy.timeout``.
        payload_size: Payload length in bytes.
        manifest_hash: Normalised manifest hash (hex) from the spec.
        shown_as: Read-only display name.
    """

    name: str
    content_type: str
    display_ext: str
    ttl: int
    timeout: int
    payload_size: int
    manifest_hash: str
    shown_as: str


_SAMPLE_EXTRA = """
[permissions]
allow_hosts = ["api.example.com"]
allow_env = ["NODE_ENV"]

[ownership]
owner_capsule = "capsule://demo/config"
write_allowed = true

[verification]
enabled = true
vm_type = "wasm"
proof_type = "zk-snark"
"""

TV4_SAMPLES = [
    Sample(
        "hello.sync",
        "text/plain",
        "txt",
        86400,
        30,
        211,
        "2ba7f8c5722b04ee22efe06b8fd9b0ff2543537a1f6150f205005542804f5978",
        "hello.txt",
    ),
    Sample(
        "data.sync",
        "text/csv",
        "csv",
        604800,
        60,
        503,
        "cfbd2492d0a35d0cd36e2c3ad6b5884655d12b23229fb376195c896fe5df8b8c",
        "data.csv",
    ),
    Sample(
        "config.sync",
        "application/json",
        "json",
        3600,
        30,
        607,
        "54de6d3d0852a84ac8376eae0cc3b83427934c53d82c9d39c346c7c25f622c4e",
        "config.json",
    ),
    Sample(
        "image.sync",
        "image/svg+xml",
        "svg",
        2592000,
        30,
        1201,
        "e841e9b642e9501de0df182d9ca8db3bc22c77235830a40c1d6f3491e098b1bc",
        "image.svg",
    ),
    Sample(
        "readme.sync",
        "text/markdown",
        "md",
        86400,
        30,
        882,
        "ddc40c0ee18cd3c024dd3af14c9699cc8298b00bba3552a715d0da07b2e2aca6",
        "readme.md",
    ),
    Sample(
        "widget.sync",
        "text/html",
        "html",
        3600,
        30,
        1847,
        "84c8326e7130a06cc406602615837ca565fc7d3c8e6027502ff54028adc3efb6",
        "widget.html",
    ),
]


def _sample_manifest(sample: Sample) -> str:
    text = (
        "[sync]\n"
        'version = "1.0"\n'
        f'content_type = "{sample.content_type}"\n'
        f'display_ext = "{sample.display_ext}"\n\n'
        "[meta]\n"
        'created_by = "web-viewer-samples"\n'
        'created_at = "2026-02-02T12:00:00Z"\n'
        'hash_algo = "blake3"\n\n'
        "[policy]\n"
        f"ttl = {sample.ttl}\n"
        f"timeout = {sample.timeout}\n"
    )
    return text + (_SAMPLE_EXTRA if sample.name == "config.sync" else "")


@pytest.mark.parametrize("sample", [pytest.param(s, id=f"TV-4-{s.name}") for s in TV4_SAMPLES])
def test_tv4_infozip_layout(tmp_path: Path, sample: Sample) -> None:
    """The payload offset comes from the local header (28-byte extras), not the central one (24 bytes)."""
    payload = bytes((i * 7 + len(sample.name)) % 251 for i in range(sample.payload_size))
    entries = [("manifest.toml", _sample_manifest(sample).encode()), ("payload", payload)]
    context = json.dumps({"last_updated": "2026-02-02T12:00:00Z", "update_source": "demo", "checksum": "x"})
    if sample.name == "config.sync":
        entries.append(("context.json", context.encode()))
    entries.append(("sync.wasm", EMPTY_WASM))
    data, offsets = infozip_archive(entries)
    path = tmp_path / sample.name
    path.write_bytes(data)

    with open_archive(path) as snap:
        expected_offset = offsets["payload"] + 30 + len("payload") + 28
        assert snap.payload_offset == expected_offset
        assert snap.payload_offset != offsets["payload"] + 30 + len("payload") + 24
        assert snap.payload_size == sample.payload_size
        assert snap.read_payload() == payload
        with snap.open_payload() as reader:
            assert reader.read() == payload
        assert snap.digest_payload().blake3 == blake3.blake3(payload).hexdigest()
        assert snap.read_wasm() == EMPTY_WASM
        assert snap.has_context is (sample.name == "config.sync")
        assert manifest_hash(snap.manifest) == f"blake3:{sample.manifest_hash}"
        assert snap.manifest.sync.content_type == sample.content_type
        assert display_name(path, snap.manifest.sync.display_ext) == sample.shown_as


# ---------------------------------------------------------------------------------------------------------
# TV-8 TTL and timestamps
# ---------------------------------------------------------------------------------------------------------

_MIDNIGHT_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize("ttl", [pytest.param(3600, id="TV-8-boundary")])
def test_tv8_expiry_boundary(ttl: int) -> None:
    """At exactly ``created_at + ttl`` an archive is fresh and one nanosecond later it is expired."""
    exp = expiry(make_manifest(created_at="2026-01-01T00:00:00Z", ttl=ttl))
    at = parse_timestamp_ns("2026-01-01T01:00:00Z")
    assert exp.at_ns == at
    assert exp.at_text() == "2026-01-01T01:00:00Z"
    assert not exp.never
    assert not exp.is_expired(at)
    assert exp.is_expired(at + 1)
    assert not exp.is_expired(at - 1)
    assert exp.expires_in(at - 1800 * NS) == 1800.0
    assert exp.expires_in(at + 1) == 0.0


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        pytest.param("2026-01-01T00:00:00Z", _MIDNIGHT_NS, id="TV-8-accept-Z"),
        pytest.param("2026-01-01 00:00:00+00:00", _MIDNIGHT_NS, id="TV-8-accept-space-offset"),
        pytest.param("2026-01-01T09:00:00+0900", _MIDNIGHT_NS, id="TV-8-accept-offset-without-colon"),
        pytest.param("2026-01-01T00:00:00.5Z", _MIDNIGHT_NS + NS // 2, id="TV-8-accept-fraction"),
        pytest.param("2026-01-01t00:00:00z", _MIDNIGHT_NS, id="TV-8-accept-lowercase"),
        pytest.param("2025-12-31T19:00:00-05:00", _MIDNIGHT_NS, id="TV-8-accept-negative-offset"),
        pytest.param("2026-01-01T00:00:00.000000001Z", _MIDNIGHT_NS + 1, id="TV-8-accept-nanosecond"),
    ],
)
def test_tv8_accepted_timestamps(text: str, expected_ns: int) -> None:
    """Timestamps the reference accepts parse to the exact instant, fractions to the nanosecond."""
    assert parse_timestamp_ns(text) == expected_ns


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-01-01T00:00:00", id="TV-8-reject-no-offset"),
        pytest.param("2026-01-01", id="TV-8-reject-date-only"),
        pytest.param("2026-02-30T00:00:00Z", id="TV-8-reject-impossible-date"),
        pytest.param("yesterday", id="TV-8-reject-text"),
    ],
)
def test_tv8_rejected_timestamps_fail_closed(text: str) -> None:
    """Timestamps without an offset are refused, and an archive based on one counts as expired."""
    with pytest.raises(ValueError, match=r"2026|yesterday"):
        parse_timestamp_ns(text)
    exp = expiry(make_manifest(created_at=text, ttl=10**9))
    assert exp.error is not None
    assert exp.is_expired(0)
    assert exp.expires_in(0) == 0.0


@pytest.mark.parametrize(
    "ttl",
    [pytest.param(2**63 - 1, id="TV-8-ttl-max"), pytest.param(10**12, id="TV-8-ttl-reference-panics")],
)
def test_tv8_huge_ttl_saturates(ttl: int) -> None:
    """A TTL reaching past year 9999 means "never expires" instead of crashing."""
    exp = expiry(make_manifest(created_at="2026-01-01T00:00:00Z", ttl=ttl))
    assert exp.never
    assert exp.at_ns is None
    assert not exp.is_expired(2**62)
    assert exp.expires_in(0) is None


# ---------------------------------------------------------------------------------------------------------
# TV-9 Display names and store naming
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("archive", "display_ext", "read_only", "writable"),
    [
        pytest.param("report.csv.sync", "csv", "report.csv", "report.csv", id="TV-9-report.csv.sync"),
        pytest.param("data.sync", "xlsx", "data.xlsx", "data.xlsx", id="TV-9-data.sync-xlsx"),
        pytest.param("data.sync", " .csv ", "data.csv", "data.csv", id="TV-9-data.sync-padded-ext"),
        pytest.param("data.sync", "", "data", "data", id="TV-9-data.sync-empty-ext"),
        pytest.param("report.pdf.sync", "csv", "report.pdf.csv", "report.pdf", id="TV-9-report.pdf.sync"),
        pytest.param("report.CSV.sync", "csv", "report.CSV.csv", "report.CSV", id="TV-9-report.CSV.sync"),
        pytest.param("archive", "txt", "archive.txt", "archive.txt", id="TV-9-no-extension"),
        pytest.param("/mnt/report.csv.sync", "csv", "report.csv", "report.csv", id="TV-9-mounted"),
        pytest.param(".sync", "txt", ".sync.txt", ".sync", id="TV-9-dot-sync"),
        pytest.param("foo.", "txt", "foo.txt", "foo.txt", id="TV-9-trailing-dot"),
    ],
)
def test_tv9_display_names(archive: str, display_ext: str, read_only: str, writable: str) -> None:
    """Read-only and writable display names follow the §8.1 table and Rust's ``file_stem`` rule."""
    assert display_name(archive, display_ext) == read_only
    assert writable_display_name(archive, display_ext) == writable


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        pytest.param("report.pdf", "report.pdf.sync", id="TV-9-store-report.pdf"),
        pytest.param("notes.md", "notes.md.sync", id="TV-9-store-notes.md"),
        pytest.param("dir/a.txt", "dir/a.txt.sync", id="TV-9-store-dir-a.txt"),
        pytest.param("/report.pdf", "report.pdf.sync", id="TV-9-store-leading-slash"),
        pytest.param("x.sync", "x.sync", id="TV-9-store-x.sync"),
    ],
)
def test_tv9_store_naming(tmp_path: Path, name: str, stored: str) -> None:
    """An uploaded name maps to ``<name>.sync`` inside the store, keeping directories."""
    assert store_path_for(tmp_path, name) == tmp_path / stored


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../x", id="TV-9-store-refuse-dotdot"),
        pytest.param("a/../../x", id="TV-9-store-refuse-nested-dotdot"),
        pytest.param("", id="TV-9-store-refuse-empty"),
        pytest.param("/", id="TV-9-store-refuse-root"),
        pytest.param("a\\b", id="TV-9-store-refuse-backslash"),
        pytest.param("C:x", id="TV-9-store-refuse-drive"),
        pytest.param("a\x00b", id="TV-9-store-refuse-nul"),
    ],
)
def test_tv9_store_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    """Names that are empty or could leave the store are refused with an ``ArchiveError``."""
    with pytest.raises(ArchiveError):
        store_path_for(tmp_path, name)


@pytest.mark.parametrize(
    ("mount", "vfs_path"), [pytest.param("/mnt", "/mnt/report.csv", id="TV-9-built-report.csv.sync")]
)
def test_tv9_archive_display_name_from_manifest(tmp_path: Path, mount: str, vfs_path: str) -> None:
    """A built ``report.csv.sync`` with ``display_ext = "csv"`` shows as ``report.csv`` under the mount."""
    path = tmp_path / "report.csv.sync"
    make_archive(path, b"a,b\n", manifest=make_manifest(content_type="text/csv", display_ext="csv"))
    with open_archive(path) as snap:
        shown = display_name(path, snap.manifest.sync.display_ext)
    assert shown == "report.csv"
    assert str(PurePosixPath(mount) / shown) == vfs_path


# ---------------------------------------------------------------------------------------------------------
# TV-10 Host allow-lists
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "host", "allowed"),
    [
        pytest.param(["example.com"], "example.com", True, id="TV-10-helper-exact"),
        # The reference allows this suffix match; §2.5 requires exact entries to match only themselves.
        pytest.param(["example.com"], "api.example.com", False, id="TV-10-helper-exact-not-subdomain"),
        pytest.param(["example.com"], "badexample.com", False, id="TV-10-helper-bug-suffix"),
        pytest.param(["example.com"], "example.com.evil.net", False, id="TV-10-helper-longer"),
        pytest.param(["*.example.com"], "example.com", False, id="TV-10-helper-bug-apex"),
        pytest.param(["*.example.com"], "a.example.com", True, id="TV-10-helper-wildcard"),
        pytest.param(["*.example.com"], "evilexample.com", False, id="TV-10-helper-bug-no-dot"),
        pytest.param([""], "anything.org", False, id="TV-10-helper-bug-empty-entry"),
        pytest.param(["*"], "x.org", False, id="TV-10-helper-bare-star"),
        pytest.param(["*"], "*", False, id="TV-10-helper-bare-star-literal"),
        pytest.param([], "x.org", False, id="TV-10-helper-empty-list"),
    ],
)
def test_tv10_host_helper(allow: list[str], host: str, allowed: bool) -> None:
    """The §2.5 rule fixes every "(bug)" row of the reference manifest helper."""
    assert host_allowed(host, allow) is allowed


ENGINE_LIST = ["api.example.com", "*.internal.local"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        pytest.param("https://api.example.com/path", True, id="TV-10-engine-exact"),
        pytest.param("http://sub.internal.local:8080/", True, id="TV-10-engine-wildcard-port"),
        pytest.param("https://evil.com/", False, id="TV-10-engine-other-host"),
        pytest.param("https://other.example.com/", False, id="TV-10-engine-sibling"),
        pytest.param("https://internal.local/", False, id="TV-10-engine-bug-apex"),
        pytest.param("https://evilinternal.local/", False, id="TV-10-engine-bug-no-dot"),
        pytest.param("https://api.example.com:443@evil.com/", False, id="TV-10-engine-bug-userinfo"),
        pytest.param("https://evil.com?.internal.local", False, id="TV-10-engine-bug-query"),
        pytest.param("https://evil.com#x.internal.local", False, id="TV-10-engine-bug-fragment"),
        pytest.param("https://API.example.com/", True, id="TV-10-engine-case-insensitive"),
        pytest.param("https://a.b.internal.local/x", True, id="TV-10-engine-deep-wildcard"),
        pytest.param("ftp://api.example.com/", False, id="TV-10-engine-scheme"),
        pytest.param("api.example.com", False, id="TV-10-engine-not-a-url"),
        pytest.param("https://api.example.com./", True, id="TV-10-engine-trailing-dot"),
        pytest.param("https://api.example.com\n.evil/", False, id="TV-10-engine-control-char"),
    ],
)
def test_tv10_engine_urls(url: str, allowed: bool) -> None:
    """Guest URLs are parsed with a real URL parser, so every reference bypass is refused."""
    assert url_allowed(url, ENGINE_LIST) is allowed


@pytest.mark.parametrize(
    ("allow", "url", "allowed"),
    [
        pytest.param(["example.com:8443"], "https://example.com:8443/", True, id="TV-10-port-pinned"),
        pytest.param(["example.com:8443"], "https://example.com/", False, id="TV-10-port-default-differs"),
        pytest.param(["example.com"], "https://example.com:8443/", True, id="TV-10-port-any"),
        pytest.param(["example.com:443"], "https://example.com/", True, id="TV-10-port-default-443"),
        pytest.param(["example.com:80"], "http://example.com/", True, id="TV-10-port-default-80"),
        pytest.param(["[::1]"], "http://[::1]:8080/", True, id="TV-10-ipv6"),
        pytest.param(["[::1]:8080"], "http://[0:0::1]:8080/", True, id="TV-10-ipv6-normalised-port"),
        pytest.param(["[::1]:8080"], "http://[::1]:9090/", False, id="TV-10-ipv6-wrong-port"),
        pytest.param(["::1"], "http://[::1]/", True, id="TV-10-ipv6-unbracketed-entry"),
        pytest.param(["127.0.0.1"], "http://127.0.0.1/", True, id="TV-10-ipv4"),
        pytest.param(["*.0.0.1"], "http://127.0.0.1/", False, id="TV-10-ip-wildcard"),
        pytest.param(["*.0.1"], "http://127.0.1/", False, id="TV-10-ipv4-shorthand-wildcard"),
        pytest.param(["*.1"], "http://[::1]/", False, id="TV-10-ipv6-wildcard"),
        pytest.param(["example.com."], "https://example.com/", True, id="TV-10-trailing-dot-entry"),
        pytest.param(["API.Example.COM"], "https://api.example.com/", True, id="TV-10-entry-case"),
        pytest.param(["bücher.example"], "https://xn--bcher-kva.example/", True, id="TV-10-idna"),
        pytest.param(["", "*"], "https://example.com/", False, id="TV-10-empty-and-star"),
        pytest.param(["a.*.com"], "https://a.b.com/", False, id="TV-10-inner-star"),
        pytest.param(["*example.com"], "https://example.com/", False, id="TV-10-star-without-dot"),
        pytest.param(["*.*.com"], "https://a.b.com/", False, id="TV-10-double-star"),
    ],
)
def test_tv10_entry_forms(allow: list[str], url: str, allowed: bool) -> None:
    """Exact, wildcard, port, IPv6, trailing-dot, case and IDNA entries follow the single §2.5 rule."""
    assert url_allowed(url, allow) is allowed


@pytest.mark.parametrize(
    ("allow", "invalid"),
    [
        pytest.param(
            ["", "*", "example.com", "*.ok.org", "a.*.com", "host:0", "host:99999", "[::1"],
            ["", "*", "a.*.com", "host:0", "host:99999", "[::1"],
            id="TV-10-invalid-entries",
        ),
    ],
)
def test_tv10_invalid_entries(allow: list[str], invalid: list[str]) -> None:
    """Entries that can never match are reported so packers can warn about them."""
    assert invalid_entries(allow) == invalid
