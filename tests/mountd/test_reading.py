"""Reading payloads: bytes, headers, Range, conditional requests, swaps mid-download, single-archive mode."""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable
from pathlib import Path

import blake3
from dav_client import get, names, propfind, request
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import derive_etag, serve_background
from sync_format import BuildResult, commit_payload, open_archive

AddArchive = Callable[..., BuildResult]
PAYLOAD = bytes(range(256)) * 40


def test_get_returns_payload_bytes_type_and_blake3_etag(add_archive: AddArchive, url: str) -> None:
    """GET answers the exact payload, the manifest's content type and the payload BLAKE3 as strong ETag."""
    add_archive("report.csv.sync", PAYLOAD, manifest=csv_manifest())
    resp = get(url, "/report.csv")
    assert resp.status == 200
    assert resp.body == PAYLOAD
    assert resp.header("Content-Type") == "text/csv"
    assert resp.header("Content-Length") == str(len(PAYLOAD))
    assert resp.header("ETag") == f'"{blake3.blake3(PAYLOAD).hexdigest()}"'
    assert resp.header("Accept-Ranges") == "bytes"
    assert resp.header("Last-Modified") == "Thu, 01 Jan 2026 00:00:00 GMT"


def test_head_answers_headers_without_body(add_archive: AddArchive, url: str) -> None:
    """HEAD answers the same length, type and ETag as GET, with no body."""
    add_archive("report.csv.sync", PAYLOAD, manifest=csv_manifest())
    head = request(url, "HEAD", "/report.csv")
    full = get(url, "/report.csv")
    assert head.status == 200
    assert head.body == b""
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified"):
        assert head.header(name) == full.header(name)


def test_range_answers_the_exact_slice(add_archive: AddArchive, url: str) -> None:
    """A single Range answers 206 with exactly that slice and its Content-Range; a suffix range too."""
    add_archive("report.csv.sync", PAYLOAD, manifest=csv_manifest())
    part = get(url, "/report.csv", Range="bytes=1000-4095")
    assert part.status == 206
    assert part.body == PAYLOAD[1000:4096]
    assert part.header("Content-Range") == f"bytes 1000-4095/{len(PAYLOAD)}"
    tail = get(url, "/report.csv", Range="bytes=-10")
    assert (tail.status, tail.body) == (206, PAYLOAD[-10:])
    assert get(url, "/report.csv", Range=f"bytes={len(PAYLOAD) + 5}-").status == 416


def test_conditional_requests_use_the_etag_and_date(add_archive: AddArchive, url: str) -> None:
    """If-None-Match with the ETag answers 304, If-Match with another tag 412, If-Modified-Since at or after
    Last-Modified 304 (and is ignored when If-None-Match is present, RFC 9110 §13.1.3)."""
    add_archive("report.csv.sync", PAYLOAD, manifest=csv_manifest())
    first = get(url, "/report.csv")
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    assert etag is not None
    assert modified is not None
    not_modified = get(url, "/report.csv", If_None_Match=etag)
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert get(url, "/report.csv", If_None_Match='"other"').status == 200
    assert get(url, "/report.csv", If_Match='"other"').status == 412
    assert get(url, "/report.csv", If_Match=etag).status == 200
    assert get(url, "/report.csv", If_Modified_Since=modified).status == 304
    assert get(url, "/report.csv", If_Modified_Since="Fri, 01 Jan 2100 00:00:00 GMT").status == 304
    assert get(url, "/report.csv", If_Modified_Since="Thu, 01 Jan 2015 00:00:00 GMT").status == 200
    both = get(url, "/report.csv", If_None_Match=etag, If_Modified_Since="Fri, 01 Jan 2100 00:00:00 GMT")
    assert both.status == 304
    assert get(url, "/report.csv", If_None_Match='"other"', If_Modified_Since=modified).status == 200


def test_reference_archives_get_a_derived_strong_etag(add_archive: AddArchive, store: Path, url: str) -> None:
    """An archive without state.json (as the reference writes them) gets a strong ETag from identity and
    CRC-32, which changes when the file is rewritten."""
    add_archive("ref.txt.sync", b"reference", state=False)
    with open_archive(store / "ref.txt.sync") as snapshot:
        expected = derive_etag(snapshot.identity, snapshot.payload.crc32)
    resp = get(url, "/ref.txt")
    assert resp.body == b"reference"
    assert resp.header("ETag") == f'"{expected}"'
    assert get(url, "/ref.txt", If_None_Match=f'"{expected}"').status == 304
    add_archive("ref.txt.sync", b"reference", state=False)  # same bytes, new file
    assert get(url, "/ref.txt").header("ETag") != f'"{expected}"'


def test_swap_during_a_streamed_get_serves_the_old_payload_whole(
    add_archive: AddArchive, store: Path, url: str
) -> None:
    """A swap committed while a large GET streams leaves that download entirely old; the next GET is new."""
    old = os.urandom(24 * 1024 * 1024)
    new = os.urandom(3 * 1024 * 1024)
    add_archive("big.csv.sync", old, manifest=csv_manifest())
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/big.csv")
        resp = conn.getresponse()
        assert resp.status == 200
        head = resp.read(1024 * 1024)
        commit_payload(store / "big.csv.sync", 0, new)
        rest = resp.read()
    finally:
        conn.close()
    assert head + rest == old
    after = get(url, "/big.csv")
    assert after.body == new
    assert after.header("ETag") == f'"{blake3.blake3(new).hexdigest()}"'
    assert after.header("ETag") != resp.getheader("ETag")


def test_single_archive_mode_lists_just_its_display_name(tmp_path: Path, add_archive: AddArchive) -> None:
    """Serving one archive file: / lists only its display name, which serves the payload; other paths 404."""
    built = add_archive("report.csv.sync", PAYLOAD, manifest=csv_manifest())
    add_archive("other.txt.sync")
    hook = RecordingHook()
    with serve_background(Settings(port=0), built.path, hook) as handle:
        listing = propfind(handle.mount_url, "/")
        assert names(listing) == ["report.csv"]
        assert get(handle.mount_url, "/report.csv").body == PAYLOAD
        assert get(handle.mount_url, "/other.txt").status == 404
        assert get(handle.mount_url, "/sub/report.csv").status == 404
        assert request(handle.mount_url, "PUT", "/report.csv", body=b"x").status == 403


def test_single_archive_mode_follows_the_operators_symlink(tmp_path: Path, add_archive: AddArchive) -> None:
    """The operator may name a symlink as the one archive (``current.sync -> v2.sync``): it is listed and
    served through it, while names in a store are never followed."""
    built = add_archive("v2/report.csv.sync", PAYLOAD, manifest=csv_manifest())
    link = tmp_path / "current.csv.sync"
    link.symlink_to(built.path)
    with serve_background(Settings(port=0), link, RecordingHook()) as handle:
        assert names(propfind(handle.mount_url, "/")) == ["current.csv"]
        assert get(handle.mount_url, "/current.csv").body == PAYLOAD
