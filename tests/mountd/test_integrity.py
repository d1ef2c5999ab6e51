"""Corrupt payloads against a real mountd on 127.0.0.1: a payload whose bytes no longer match its CRC-32 is
never served as good — 500 on every GET path, a log line, a metric, and marked in PROPFIND and the browser."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from dav_client import get, propfind, request
from store_manifests import csv_manifest

from mountd import ServerHandle
from sync_format import BuildResult, open_archive

AddArchive = Callable[..., BuildResult]
PAYLOAD = b"region,total\n" + b"north,12\n" * 1000
INTEGRITY = "{urn:sync}integrity"


def _corrupt(archive: Path) -> None:
    """Flip one payload byte in place, as bit rot would (the file's identity changes with its mtime)."""
    with open_archive(archive) as snapshot:
        offset = snapshot.payload_offset + 100
    with open(archive, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    stat = os.stat(archive)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize(
    "headers", [{}, {"Range": "bytes=0-9"}, {"Range": "bytes=0-9,200-209"}], ids=["fast", "range", "ranges"]
)
def test_a_corrupt_payload_gets_500_on_every_get_path(
    server: ServerHandle, add_archive: AddArchive, store: Path, headers: dict[str, str]
) -> None:
    """Plain GET (fast path), a Range GET and several ranges (wsgidav's path) all answer 500, no payload."""
    add_archive("good.csv.sync", PAYLOAD, manifest=csv_manifest())
    add_archive("bad.csv.sync", PAYLOAD, manifest=csv_manifest())
    _corrupt(store / "bad.csv.sync")
    url = server.mount_url
    resp = request(url, "GET", "/bad.csv", headers=headers)
    assert resp.status == 500
    assert b"corrupt" in resp.body
    assert PAYLOAD[:10] not in resp.body
    assert request(url, "GET", "/good.csv", headers=headers).status in (200, 206)


def test_a_corrupt_payload_is_logged_counted_and_marked(
    server: ServerHandle, add_archive: AddArchive, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a GET found it: one log line, the metric, PROPFIND's integrity property, the browser's mark."""
    add_archive("good.csv.sync", PAYLOAD, manifest=csv_manifest())
    add_archive("bad.csv.sync", PAYLOAD, manifest=csv_manifest())
    _corrupt(store / "bad.csv.sync")
    url = server.mount_url
    before = _metric(url)
    # Shown before a GET checked it: the browser remembers the row (``BrowserView``), and must drop it.
    page = get(url, "/", Accept="text/html").body.decode()
    assert "corrupt" not in next(line for line in page.splitlines() if "bad.csv" in line)
    with caplog.at_level(logging.ERROR, logger="mountd.dav.integrity"):
        assert get(url, "/bad.csv").status == 500
        assert get(url, "/bad.csv").status == 500
        assert get(url, "/good.csv").status == 200
    lines = [r.getMessage() for r in caplog.records if "payload corrupt" in r.getMessage()]
    assert len(lines) == 1
    assert "bad.csv" in lines[0]
    assert _metric(url) == before + 1
    listing = propfind(url, "/")
    assert listing["/bad.csv"][INTEGRITY] == "corrupt"
    assert listing["/good.csv"][INTEGRITY] == "verified"
    assert propfind(url, "/bad.csv", depth="0")["/bad.csv"][INTEGRITY] == "corrupt"
    page = get(url, "/", Accept="text/html").body.decode()
    row = next(line for line in page.splitlines() if "bad.csv" in line)
    assert "corrupt" in row
    assert "corrupt" not in next(line for line in page.splitlines() if "good.csv" in line)
    assert request(url, "HEAD", "/bad.csv").status == 500


def _metric(url: str) -> float:
    text = get(url, "/.well-known/sync/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("sync_mountd_corrupt_payloads_total "):
            return float(line.split()[1])
    return 0.0
