"""What mountd refuses: writes, path traversal, odd encodings, foreign Host headers; and broken archives."""

from __future__ import annotations

import http.client
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from dav_client import Response, get, lock_body, names, propfind, request
from store_manifests import csv_manifest

from sync_format import BuildResult
from sync_format.testing import REFERENCE_MANIFEST_TOML

AddArchive = Callable[..., BuildResult]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("PUT", "/report.csv", {}),
        ("PUT", "/new.txt", {}),
        ("DELETE", "/report.csv", {}),
        ("DELETE", "/sub/", {}),
        ("MKCOL", "/newdir", {}),
        ("MOVE", "/report.csv", {"Destination": "/moved.csv"}),
        ("COPY", "/report.csv", {"Destination": "/copied.csv"}),
    ],
)
def test_writes_are_refused_with_403(
    add_archive: AddArchive, store: Path, url: str, method: str, path: str, headers: dict[str, str]
) -> None:
    """Every write method answers 403 and leaves the store as it was."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    add_archive("sub/inner.txt.sync")
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    full_headers = {k: (url + v if k == "Destination" else v) for k, v in headers.items()}
    resp = request(url, method, path, headers=full_headers, body=b"new bytes" if method == "PUT" else None)
    assert resp.status == 403, resp.body[:300]
    assert b"read-only" in resp.body
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
    assert get(url, "/report.csv").body == b"a,b\n"


def test_a_lock_of_a_new_name_is_refused_as_a_lock(store: Path, url: str) -> None:
    """A LOCK of a name nothing is listed under would create an empty file (RFC 4918 §9.10.4): 403 naming
    LOCK (it said "PUT: this store is served read-only"), nothing created."""
    resp = request(url, "LOCK", "/new.csv", body=lock_body())
    assert resp.status == 403
    assert b"LOCK: this store is served read-only" in resp.body
    assert list(store.iterdir()) == []


def test_proppatch_is_refused(add_archive: AddArchive, url: str) -> None:
    """PROPPATCH of an archive answers 207 with 403 for the property (RFC 4918 §9.2) and stores nothing."""
    add_archive("report.csv.sync", manifest=csv_manifest())
    body = (
        b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:x="urn:x"><set><prop>'
        b"<x:color>red</x:color></prop></set></propertyupdate>"
    )
    resp = request(url, "PROPPATCH", "/report.csv", headers={"Content-Type": "application/xml"}, body=body)
    assert resp.status == 207
    assert b"HTTP/1.1 403 Forbidden" in resp.body
    props = propfind(url, "/report.csv", depth="0")["/report.csv"]
    assert "{urn:x}color" not in props


def raw(url: str, target: str) -> Response:
    """GET a request target exactly as written (no client-side normalization)."""
    return request(url, "GET", target)


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/sub/../../etc/passwd",
        "/sub/%2e%2e/%2e%2e/etc/passwd",
        "/./report.csv",
        "/a%00b",
        "/%ff%fe",
    ],
)
def test_traversal_and_odd_encodings_are_refused(add_archive: AddArchive, url: str, target: str) -> None:
    """Dot segments (plain or percent-encoded), NUL and invalid UTF-8 are refused with 400 and a body."""
    add_archive("report.csv.sync", manifest=csv_manifest())
    resp = raw(url, target)
    assert resp.status == 400
    assert resp.body.startswith(b"400 Bad Request: ")
    assert b"root:" not in resp.body


@pytest.mark.parametrize(
    "target", ["/a%5cb", "/sub%5c..%5creport.csv", "/C:/report.csv", "/%252e%252e/etc/passwd"]
)
def test_names_that_are_not_store_names_are_not_found(add_archive: AddArchive, url: str, target: str) -> None:
    """Backslashes, drive prefixes and double-encoded dots never name anything in the store: 404."""
    add_archive("report.csv.sync", manifest=csv_manifest())
    assert raw(url, target).status == 404


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example:{port}", 421),
        ("evil.example", 421),
        ("127.0.0.1:1", 421),
        ("localhost.evil.example:{port}", 421),
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST:{port}", 200),
        ("[::1]:{port}", 200),
    ],
)
def test_host_header_must_name_this_server(add_archive: AddArchive, url: str, host: str, status: int) -> None:
    """Only the bound host, localhost, 127.0.0.1 and [::1] with the server port are served (DNS rebinding)."""
    add_archive("report.csv.sync", b"x", manifest=csv_manifest())
    port = url.rsplit(":", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    try:
        conn.putrequest("GET", "/report.csv", skip_host=True)
        conn.putheader("Host", host.format(port=port))
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == status
    if status == 200:
        assert body == b"x"


def test_missing_host_header_is_refused(url: str) -> None:
    """An HTTP/1.0 request without a Host header is refused with 400."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400")


def test_malformed_archives_are_left_out_and_do_not_stop_the_server(
    add_archive: AddArchive, store: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes and a truncated archive are left out of listings (logged once each), their GETs answer
    500 naming the problem or 404, and the server keeps serving the good archive."""
    good = add_archive("report.csv.sync", b"good", manifest=csv_manifest())
    (store / "x.sync").write_bytes(bytes(range(256)) * 8)
    whole = add_archive("trunc.txt.sync", b"z" * 5000).path.read_bytes()
    (store / "trunc.txt.sync").write_bytes(whole[: len(whole) // 2])
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        assert names(propfind(url, "/")) == ["report.csv"]
        assert names(propfind(url, "/")) == ["report.csv"]
        broken = get(url, "/x")
        truncated = get(url, "/trunc.txt")
    assert broken.status == 500
    assert b"archive x.sync cannot be served: malformed_archive" in broken.body
    assert truncated.status == 500
    assert b"archive trunc.txt.sync cannot be served" in truncated.body
    assert get(url, "/x.sync").status == 404
    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 2
    assert get(url, "/report.csv").body == b"good"
    assert good.path.exists()


def test_a_store_name_that_vanished_is_not_found(add_archive: AddArchive, store: Path, url: str) -> None:
    """An archive deleted after a listing is simply gone: 404, and the listing drops it."""
    add_archive("gone.txt.sync")
    assert names(propfind(url, "/")) == ["gone.txt"]
    (store / "gone.txt.sync").unlink()
    assert get(url, "/gone.txt").status == 404
    assert names(propfind(url, "/")) == []


def test_every_malformed_case_of_the_format_tests_in_one_store(
    add_archive: AddArchive, store: Path, url: str
) -> None:
    """Every broken archive of the format tests (TV-3 rejections, each ZIP rule) sits in one served store:
    listings show only the good archive, each broken one answers 500 or 404, and the server keeps serving."""
    from format.test_reader import MALFORMED
    from format.test_vectors import TV3_REJECTIONS

    builds = [param.values[0] for param in MALFORMED] + [param.values[0].data for param in TV3_REJECTIONS]
    for number, build in enumerate(builds):
        (store / f"broken{number:02d}.txt.sync").write_bytes(build())
    add_archive("report.csv.sync", b"good", manifest=csv_manifest())
    assert names(propfind(url, "/")) == ["report.csv"]
    for number in range(len(builds)):
        assert get(url, f"/broken{number:02d}.txt").status in (404, 500)
    assert get(url, "/report.csv").body == b"good"
    assert names(propfind(url, "/")) == ["report.csv"]


def test_an_archive_smuggling_a_header_or_a_path_is_not_served(store: Path, url: str) -> None:
    """An archive whose content_type carries CR LF and a Set-Cookie, or whose display_ext is a path, is left
    out of listings and never answered with the smuggled header or a path-like href (issue 11 finding 4)."""
    from format.test_reader import _with_sync_fields

    (store / "cookie.sync").write_bytes(_with_sync_fields("text/html\r\nSet-Cookie: pwned=1", "html"))
    (store / "escape.sync").write_bytes(_with_sync_fields("text/csv", "/../../tmp/pwn"))
    listing = propfind(url, "/")
    assert names(listing) == []
    assert not any("pwn" in href for href in listing)
    for path in ("/cookie.html", "/cookie", "/escape"):
        answer = get(url, path)
        assert answer.status in (404, 500)
        assert "set-cookie" not in {name.lower() for name in answer.headers}


def test_mountd_rechecks_the_content_type_before_sending_it() -> None:
    """The header value comes from ``safe_content_type``, which passes media types and nothing else."""
    from sync_format.media import safe_content_type

    assert safe_content_type("text/csv; charset=utf-8") == "text/csv; charset=utf-8"
    assert safe_content_type("text/html\r\nSet-Cookie: pwned=1") == "application/octet-stream"
    assert safe_content_type("text/\u00e9") == "application/octet-stream"


def test_an_archive_whose_manifest_nests_too_deeply_is_left_out_not_a_500_for_its_folder(
    add_archive: AddArchive, store: Path, url: str
) -> None:
    """A manifest with a table header of 5,000 dotted parts (10 KB; tomllib builds it without recursion,
    and walking it afterwards used to raise ``RecursionError``, which no listing expected): its folder's
    listing and page used to answer 500; now the archive is left out like any broken one."""
    add_archive("report.csv.sync", b"good", manifest=csv_manifest())
    deep = REFERENCE_MANIFEST_TOML.encode() + b"\n[" + b".".join([b"a"] * 5000) + b"]\nx = 1\n"
    with zipfile.ZipFile(store / "deep.txt.sync", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.toml", deep)
        archive.writestr("payload", b"hidden")
    assert names(propfind(url, "/")) == ["report.csv"]
    page = request(url, "GET", "/", headers={"Accept": "text/html"})
    assert (page.status, b"report.csv" in page.body) == (200, True)
    assert get(url, "/deep.txt").status == 500
    assert get(url, "/report.csv").body == b"good"
