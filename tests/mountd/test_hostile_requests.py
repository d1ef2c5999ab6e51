"""Hostile requests against a real mountd on 127.0.0.1: XML body amplification (413 before parsing), active
payloads on the WebDAV origin (nosniff, sandbox, attachment), several ranges (multipart/byteranges)."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wsgidav.request_server  # type: ignore[import-untyped]
from dav_client import request
from recording_hook import RecordingHook
from redis_server import wait_for
from store_manifests import csv_manifest

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.dav import provider as provider_module
from mountd.dav.render_slots import RenderSlots
from mountd.http import handoff
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult
from sync_format.testing import make_manifest

AddArchive = Callable[..., BuildResult]
PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable
PAGE = b"<html><script>fetch('/', {method: 'DELETE'})</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture
def hserver(store: Path, hook: RecordingHook, add_archive: AddArchive) -> Iterator[ServerHandle]:
    """mountd with a CSV archive, an HTML archive and an SVG archive."""
    add_archive("data.csv.sync", PAYLOAD, manifest=csv_manifest())
    add_archive("page.html.sync", PAGE, manifest=make_manifest(content_type="text/html", display_ext="html"))
    add_archive("pic.svg.sync", SVG, manifest=make_manifest(content_type="image/svg+xml", display_ext="svg"))
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        yield handle


# --- XML bodies ---


def _propfind_body(count: int) -> bytes:
    props = "".join(f"<x:p{i}/>" for i in range(count))
    head = '<?xml version="1.0"?><propfind xmlns="DAV:" xmlns:x="urn:x">'
    return f"{head}<prop>{props}</prop></propfind>".encode()


def test_oversized_propfind_body_gets_413_and_the_server_answers_on(hserver: ServerHandle) -> None:
    """A PROPFIND/PROPPATCH/LOCK declaring a 2 MiB body is refused with 413 before the body is even sent."""
    url = hserver.mount_url
    for method in ("PROPFIND", "PROPPATCH", "LOCK"):
        with socket.create_connection((hserver.host, hserver.port), timeout=30) as sock:
            head = f"{method} /data.csv HTTP/1.1\r\nHost: {hserver.host}:{hserver.port}\r\n"
            sock.sendall(
                f"{head}Content-Type: application/xml\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode()
            )
            sock.sendall(b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop>')
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), (method, answer[:100])
    assert request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=_propfind_body(5)).status == 207


@pytest.mark.parametrize("writable", [False, True])
def test_a_propfind_of_infinite_depth_is_refused(
    store: Path, hook: RecordingHook, add_archive: AddArchive, writable: bool
) -> None:
    """A PROPFIND with ``Depth: infinity`` (in any case), or without a ``Depth`` (RFC 4918: the same), would
    describe the whole store in one document rendered in memory: 403 with the ``propfind-finite-depth``
    precondition, on a read-only and on a writable store, at the root and below; Depth 0 and 1 answer 207."""
    add_archive("deep/er/data.csv.sync", PAYLOAD, manifest=csv_manifest())
    options = {"writable": WritePolicy(store)} if writable else {}
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, **options) as handle:
        url = handle.mount_url
        for path in ("/", "/deep/"):
            for headers in ({"Depth": "infinity"}, {"Depth": "Infinity"}, {}):
                answer = request(url, "PROPFIND", path, headers=headers)
                assert answer.status == 403, (path, headers)
                assert b"propfind-finite-depth" in answer.body
                assert b"data.csv" not in answer.body
            for depth in ("0", "1"):
                assert request(url, "PROPFIND", path, headers={"Depth": depth}).status == 207


def test_propfind_asking_for_too_many_properties_gets_413(hserver: ServerHandle) -> None:
    """5,000 properties in a 60 KiB body: 413 (the element cap). Every member of a listing answers each
    property asked for, so a PROPFIND may ask for 64 (``MAX_PROPFIND_NAMES``) in 4,096 characters of names:
    65 short ones, or 5 of 1,000 characters, get 413 with the reason; 64 get 207 (at both depths)."""
    url = hserver.mount_url
    assert request(url, "PROPFIND", "/", headers={"Depth": "0"}, body=_propfind_body(5000)).status == 413
    for depth in ("0", "1"):
        refused = request(url, "PROPFIND", "/", headers={"Depth": depth}, body=_propfind_body(65))
        assert refused.status == 413
        assert b"more than 64 properties" in refused.body
        assert request(url, "PROPFIND", "/", headers={"Depth": depth}, body=_propfind_body(64)).status == 207
    long_names = "".join(f"<x:{'n' * 1000}{i}/>" for i in range(5))
    body = f'<propfind xmlns="DAV:" xmlns:x="urn:x"><prop>{long_names}</prop></propfind>'.encode()
    assert request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=body).status == 413
    # Other XML bodies are not lists of properties to answer.
    patch = (
        '<propertyupdate xmlns="DAV:" xmlns:x="urn:x"><set><prop>'
        + "".join(f"<x:p{i}>v</x:p{i}>" for i in range(65))
        + "</prop></set></propertyupdate>"
    )
    assert request(url, "PROPPATCH", "/data.csv", body=patch.encode()).status != 413


@pytest.mark.parametrize("encoding", ["bogus", "utf-32"])
def test_an_xml_body_in_an_unusable_encoding_gets_400(hserver: ServerHandle, encoding: str) -> None:
    """A declared encoding the parser cannot use is a malformed body (400), not a server error (it was a 500
    with an empty body: the screening parser's error escaped)."""
    body = f'<?xml version="1.0" encoding="{encoding}"?><propfind xmlns="DAV:"><prop><getetag/></prop>'
    body += "</propfind>"
    for method in ("PROPFIND", "PROPPATCH", "LOCK"):
        resp = request(hserver.mount_url, method, "/data.csv", headers={"Depth": "0"}, body=body.encode())
        assert resp.status == 400, (method, resp.status, resp.body[:200])


def test_chunked_oversized_propfind_gets_413(hserver: ServerHandle) -> None:
    """A chunked body (no Content-Length) is read only up to the limit, then refused."""
    conn = http.client.HTTPConnection(hserver.host, hserver.port, timeout=30)
    try:
        chunks = (b"<getetag/>" * 10_000 for _ in range(30))  # 3 MB in 100 KB chunks
        conn.request("PROPFIND", "/", body=chunks, headers={"Depth": "0"}, encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server closed the connection without an answer")
    finally:
        conn.close()


def _refused_while_sending(handle: ServerHandle, megabytes: int) -> bytes:
    """Send a chunked PROPFIND of ``megabytes`` MB in full, as a client that reads only afterwards does, then
    read the answer to its end; a send or read cut short by a reset is returned as ``b"reset"``."""
    with socket.create_connection((handle.host, handle.port), timeout=30) as sock:
        head = f"PROPFIND / HTTP/1.1\r\nHost: {handle.host}:{handle.port}\r\nDepth: 0\r\n"
        sock.sendall(f"{head}Content-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"186A0\r\n" + b"<getetag/>" * 10_000 + b"\r\n"  # 100,000 bytes of body
        answer = b""
        try:
            for _ in range(megabytes * 10):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
            while data := sock.recv(65536):
                answer += data
        except (BrokenPipeError, ConnectionResetError):
            return b"reset"
    return answer


def test_a_refused_body_is_drained_so_the_client_reads_the_413(hserver: ServerHandle) -> None:
    """Lingering close: after the 413 the server reads and discards what the client still sends (8 MB here),
    so a client that sends its whole body before reading gets the answer instead of a reset."""
    for _ in range(3):
        answer = _refused_while_sending(hserver, 8)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        assert b"Connection: close" in answer


def test_lingering_is_bounded_in_bytes_and_time(
    hserver: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``LINGER_BYTES`` the connection is closed (the client sees a reset); a client that sends nothing
    and never closes is closed after ``LINGER_SECONDS`` (its next send then fails); the server answers on."""
    monkeypatch.setattr(handoff, "LINGER_BYTES", 256 * 1024)
    monkeypatch.setattr(handoff, "LINGER_SECONDS", 0.5)
    assert _refused_while_sending(hserver, 8) == b"reset"
    with socket.create_connection((hserver.host, hserver.port), timeout=30) as sock:
        head = f"PROPFIND / HTTP/1.1\r\nHost: {hserver.host}:{hserver.port}\r\nContent-Length: {2 << 20}\r\n"
        sock.sendall(f"{head}\r\n<propfind>".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        time.sleep(1.5)  # past LINGER_SECONDS and one turn of the connection loop (0.5 s)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # noqa: PT012 (the loop is the act)
            for _ in range(20):  # 20 KiB in all, far under the byte bound: only the deadline closes
                sock.sendall(b"x" * 1024)
                time.sleep(0.05)
    assert request(hserver.mount_url, "PROPFIND", "/", headers={"Depth": "0"}).status == 207


def test_lingering_connections_hold_no_thread(hserver: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """32 refused clients that neither send nor close (twice the server's 16 threads) linger for 30 s here;
    they cost a descriptor each, never a thread: PROPFINDs are answered meanwhile."""
    monkeypatch.setattr(handoff, "LINGER_SECONDS", 30.0)
    held = []
    try:
        for _ in range(32):
            sock = socket.create_connection((hserver.host, hserver.port), timeout=30)
            held.append(sock)
            head = f"PROPFIND / HTTP/1.1\r\nHost: {hserver.host}:{hserver.port}\r\nContent-Length: {2 << 20}"
            sock.sendall(f"{head}\r\n\r\n<propfind>".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        for _ in range(5):
            answer = request(hserver.mount_url, "PROPFIND", "/", headers={"Depth": "0"}, timeout=5)
            assert answer.status == 207
    finally:
        for sock in held:
            sock.close()


# --- active content ---


@pytest.mark.parametrize("name", ["page.html", "pic.svg"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_active_payloads_are_attachments_in_a_sandbox(hserver: ServerHandle, name: str, method: str) -> None:
    """HTML and SVG payloads: nosniff, CSP sandbox and Content-Disposition attachment, on the fast path."""
    resp = request(hserver.mount_url, method, f"/{name}")
    assert resp.status == 200
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("content-security-policy") == "sandbox"
    assert (resp.header("content-disposition") or "").startswith("attachment")


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-9"}, {"If-None-Match": '"other"'}])
def test_active_payloads_are_attachments_on_wsgidavs_path_too(
    hserver: ServerHandle, headers: dict[str, str]
) -> None:
    """Requests FastGet passes on (a range, a condition) carry the same headers."""
    resp = request(hserver.mount_url, "GET", "/page.html", headers=headers)
    assert resp.status in (200, 206)
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("content-security-policy") == "sandbox"
    assert (resp.header("content-disposition") or "").startswith("attachment")


def test_passive_payloads_are_sandboxed_but_inline(hserver: ServerHandle) -> None:
    """A CSV payload: nosniff and sandbox, no attachment; a folder page keeps its own headers."""
    resp = request(hserver.mount_url, "GET", "/data.csv")
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("content-security-policy") == "sandbox"
    assert resp.header("content-disposition") is None
    folder = request(hserver.mount_url, "GET", "/", headers={"Accept": "text/html"})
    assert folder.status == 200
    assert folder.header("content-disposition") is None


def test_inline_active_content_setting_keeps_html_inline(store: Path, add_archive: AddArchive) -> None:
    """``inline_active_content`` (trusted stores) drops the attachment, keeps nosniff."""
    add_archive("page.html.sync", PAGE, manifest=make_manifest(content_type="text/html", display_ext="html"))
    settings = Settings(host="127.0.0.1", port=0, inline_active_content=True)
    with serve_background(settings, store) as handle:
        resp = request(handle.mount_url, "GET", "/page.html")
    assert resp.header("content-disposition") is None
    assert resp.header("x-content-type-options") == "nosniff"


# --- several ranges ---


def _parts(resp_body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + resp_body
    )
    return [(str(part["Content-Range"]), part.get_payload(decode=True)) for part in message.iter_parts()]


@pytest.mark.parametrize("sendfile", [True, False])
def test_two_ranges_get_multipart_byteranges_with_both(
    store: Path, add_archive: AddArchive, sendfile: bool
) -> None:
    """bytes=0-9,100-109 → 206 multipart/byteranges with both parts, on the sendfile and the copy gateway."""
    add_archive("data.csv.sync", PAYLOAD, manifest=csv_manifest())
    with serve_background(Settings(host="127.0.0.1", port=0), store, sendfile=sendfile) as handle:
        resp = request(handle.mount_url, "GET", "/data.csv", headers={"Range": "bytes=0-9,100-109"})
    assert resp.status == 206
    content_type = resp.header("content-type") or ""
    assert content_type.startswith("multipart/byteranges; boundary=")
    assert int(resp.header("content-length") or -1) == len(resp.body)
    assert _parts(resp.body, content_type) == [
        (f"bytes 0-9/{len(PAYLOAD)}", PAYLOAD[0:10]),
        (f"bytes 100-109/{len(PAYLOAD)}", PAYLOAD[100:110]),
    ]


def test_overlapping_ranges_are_coalesced(hserver: ServerHandle) -> None:
    """Overlapping and adjacent ranges merge: 0-9,5-19,20-29 is one range 0-29 (single-part 206)."""
    resp = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": "bytes=0-9,5-19,20-29,-10"})
    assert resp.status == 206
    content_type = resp.header("content-type") or ""
    parts = _parts(resp.body, content_type)
    size = len(PAYLOAD)
    assert parts == [
        (f"bytes 0-29/{size}", PAYLOAD[:30]),
        (f"bytes {size - 10}-{size - 1}/{size}", PAYLOAD[-10:]),
    ]
    single = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": "bytes=0-9,10-19"})
    assert (single.status, single.header("content-range"), single.body) == (
        206,
        f"bytes 0-19/{size}",
        PAYLOAD[:20],
    )


def test_too_many_ranges_get_the_whole_body_and_unsatisfiable_get_416(hserver: ServerHandle) -> None:
    """17 ranges (cap 16): 200 with the whole payload; ranges all past the end: 416 with bytes */size."""
    many = ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(17))
    resp = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": f"bytes={many}"})
    assert (resp.status, resp.body) == (200, PAYLOAD)
    past = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": "bytes=20000-20001,30000-"})
    assert past.status == 416
    assert past.header("content-range") == f"bytes */{len(PAYLOAD)}"


MISREAD_RANGES = (
    "bytes=5-2",
    "bytes=0x10-0x20",
    "items=0-1",
    "bytes 0-1",
    "bytes=--1",
    "bytes=+1-+2",
    "bytes=1_0-2_0",
    "bytes=\u0661-\u0662",
    "bytes=-",
    "bytes=1",
    "x bytes=0-1",
)


def test_a_single_range_wsgidav_would_misread_is_ignored(hserver: ServerHandle) -> None:
    """wsgidav's parser finds a range anywhere in the text and takes signs and other units: each of these
    answered 206 with some slice (``bytes=5-2``: the last two bytes). They are invalid (RFC 9110 §14.1.1),
    so the header is ignored: 200 with the whole payload."""
    answers = {}
    for header in MISREAD_RANGES:
        encoded = header.encode("utf-8").decode("latin-1")  # as a client would send the bytes
        resp = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": encoded})
        answers[header] = (resp.status, resp.header("content-range"), resp.body == PAYLOAD)
    assert answers == dict.fromkeys(MISREAD_RANGES, (200, None, True))


def test_a_valid_single_range_gets_its_exact_slice_or_416(hserver: ServerHandle) -> None:
    """Valid single ranges answer their slice; one no byte satisfies answers 416 with ``bytes */size``
    (``bytes=-0`` answered 206 with ``Content-Range: bytes 10240-10239/10240``)."""
    size = len(PAYLOAD)
    expected = {
        "bytes=2-3": (206, f"bytes 2-3/{size}", PAYLOAD[2:4]),
        "bytes = 2-3": (206, f"bytes 2-3/{size}", PAYLOAD[2:4]),
        "BYTES=10235-": (206, f"bytes 10235-10239/{size}", PAYLOAD[10235:]),
        "bytes=-3": (206, f"bytes 10237-10239/{size}", PAYLOAD[-3:]),
        "bytes=10000-99999": (206, f"bytes 10000-10239/{size}", PAYLOAD[10000:]),
        "bytes=-0": (416, f"bytes */{size}", None),
        "bytes=10240-": (416, f"bytes */{size}", None),
    }
    answers = {}
    for header, (_, _, body) in expected.items():
        resp = request(hserver.mount_url, "GET", "/data.csv", headers={"Range": header})
        answers[header] = (resp.status, resp.header("content-range"), resp.body if body is not None else None)
    assert answers == expected


def test_handed_over_connections_are_bounded_by_the_descriptor_limit_too() -> None:
    """Under a soft descriptor limit of 800, at most 100 connections of a kind are handed to the loop (an
    eighth), not the 1,024 and 256 caps; with the limit raised, the caps."""
    script = (
        "import resource\n"
        "from mountd.http import handoff\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (800, hard))\n"
        "low = (handoff.room(handoff.MAX_PARKED_SENDS), handoff.room(handoff.MAX_LINGERING))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))\n"
        "print(*low, handoff.room(handoff.MAX_PARKED_SENDS), handoff.room(handoff.MAX_LINGERING), hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    low_sends, low_linger, sends, linger, hard = (int(x) for x in out.split())
    assert (low_sends, low_linger) == (100, 100)
    if hard >= 16384:
        assert (sends, linger) == (handoff.MAX_PARKED_SENDS, handoff.MAX_LINGERING)


# --- special files in the store ---


def test_fifos_named_like_archives_never_hold_a_server_thread(
    store: Path, add_archive: AddArchive, hook: RecordingHook
) -> None:
    """A FIFO named like an archive (a local user's, or renamed over a listed archive after its listing):
    GET and HEAD of its name answer 404 at once, so 40 concurrent GETs of it (more than the 16 server
    threads) leave the server answering; listings skip it. Before, each such GET blocked its thread in
    ``open`` until something wrote to the FIFO."""
    add_archive("data.csv.sync", PAYLOAD, manifest=csv_manifest())
    add_archive("swapped.csv.sync", PAYLOAD, manifest=csv_manifest())
    os.mkfifo(store / "trap.csv.sync")
    stopped = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.callback(stopped.set)  # after the server below has stopped
        handle = stack.enter_context(serve_background(Settings(host="127.0.0.1", port=0), store, hook))
        url = handle.mount_url
        listed = request(url, "PROPFIND", "/", headers={"Depth": "1"})
        assert b"/swapped.csv<" in listed.body
        assert b"trap" not in listed.body
        os.mkfifo(store / ".incoming")
        os.rename(store / ".incoming", store / "swapped.csv.sync")  # after it was listed
        held: list[socket.socket] = []
        try:
            for i in range(40):
                sock = socket.create_connection((handle.host, handle.port), timeout=30)
                held.append(sock)
                name = "trap" if i % 2 else "swapped"
                head = f"GET /{name}.csv HTTP/1.1\r\nHost: {handle.host}:{handle.port}\r\n\r\n"
                sock.sendall(head.encode())
            answered = request(url, "GET", "/data.csv", timeout=10)
            assert answered.status == 200
            assert answered.body == PAYLOAD
            for sock in held:
                assert sock.recv(4096).startswith(b"HTTP/1.1 404")
            for name in ("trap", "swapped"):
                assert request(url, "HEAD", f"/{name}.csv", timeout=10).status == 404
                assert request(url, "GET", f"/{name}.csv", timeout=10).status == 404
            relisted = request(url, "PROPFIND", "/", headers={"Depth": "1"})
            assert b"/data.csv<" in relisted.body
            assert b"swapped" not in relisted.body
        finally:
            for sock in held:
                sock.close()
            _release_fifos(store, ("trap.csv.sync", "swapped.csv.sync"), stopped)


def _release_fifos(store: Path, names: tuple[str, ...], stopped: threading.Event) -> None:
    # Where the rule is broken, server threads are blocked in open() on the FIFOs and queued requests would
    # block next: move the FIFOs out of the way (hidden names: later opens of their names find nothing), and
    # keep opening writer ends (which lets a blocked open return) until the server has stopped.
    moved = []
    for n, name in enumerate(names):
        hidden = store / f".released-{n}"
        with contextlib.suppress(OSError):
            os.rename(store / name, hidden)
            moved.append(hidden)

    def release() -> None:
        while not stopped.wait(0.05):
            for fifo in moved:
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=release, daemon=True).start()


# --- folder listings wsgidav renders itself ---


def test_folder_listings_wsgidav_renders_take_a_few_slots_and_the_rest_get_503(
    hserver: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conditional PROPFIND Depth 1 of a folder (any client can add the condition, and then wsgidav renders
    the whole listing in memory) takes one of 2 render slots; 2 more wait; any other is answered 503 with
    Retry-After at once. Meanwhile GETs, fast-path listings and one-resource PROPFINDs are answered, and the
    waiting ones are rendered once slots come free."""
    release = threading.Event()
    inside: list[str] = []
    original = wsgidav.request_server.RequestServer.do_PROPFIND

    def held_propfind(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_DEPTH") == "1":
            inside.append(environ["PATH_INFO"])
            release.wait(30)
        return original(self, environ, start_response)

    monkeypatch.setattr(wsgidav.request_server.RequestServer, "do_PROPFIND", held_propfind)
    monkeypatch.setattr(provider_module, "RENDER_MIN_MEMBERS", 1)  # this folder of three counts as big
    url = hserver.mount_url
    conditional = {"Depth": "1", "If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    answers: list[int] = []

    def listing() -> None:
        answers.append(request(url, "PROPFIND", "/", headers=conditional).status)

    first = [threading.Thread(target=listing) for _ in range(4)]
    try:
        for thread in first:
            thread.start()
        wait_for(lambda: len(inside) == 2, 10, what="two listings rendering")
        time.sleep(0.3)  # the other two are waiting for a slot by now
        refused = request(url, "PROPFIND", "/", headers=conditional, timeout=5)
        assert refused.status == 503
        assert refused.header("retry-after") == "2"
        assert request(url, "GET", "/data.csv", timeout=5).body == PAYLOAD
        assert request(url, "PROPFIND", "/", headers={"Depth": "1"}, timeout=5).status == 207  # fast path
        one = {"Depth": "0", "If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
        assert request(url, "PROPFIND", "/data.csv", headers=one, timeout=5).status == 207
        assert len(inside) == 2
    finally:
        release.set()
        for thread in first:
            thread.join(30)
    assert sorted(answers) == [207, 207, 207, 207]


def test_listings_of_small_folders_take_no_render_slot(
    hserver: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder under ``MIN_MEMBERS`` (here three archives) is rendered without a slot, so clients listing
    several small folders at once are never told to retry (a slot for every listing answered 4 % of a
    writable store's listings 503 under 100 clients)."""
    taken: list[str] = []
    original = RenderSlots.held

    def counted(self: RenderSlots, what: str) -> Any:
        taken.append(what)
        return original(self, what)

    monkeypatch.setattr(RenderSlots, "held", counted)
    conditional = {"Depth": "1", "If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    for _ in range(3):
        assert request(hserver.mount_url, "PROPFIND", "/", headers=conditional).status == 207
    assert taken == []
    monkeypatch.setattr(provider_module, "RENDER_MIN_MEMBERS", 3)
    assert request(hserver.mount_url, "PROPFIND", "/", headers=conditional).status == 207
    assert len(taken) == 1


FAR_DATES = (
    "Sat, 01 Jan 10000 00:00:00 GMT",
    "Saturday, 01-Jan-10000 00:00:00 GMT",
    "Sat Jan  1 00:00:00 10000",
)


@pytest.mark.parametrize("writable", [True, False], ids=["writable", "read-only"])
def test_dates_past_year_9999_in_conditions_are_ignored_not_a_server_error(
    store: Path, hook: RecordingHook, add_archive: AddArchive, writable: bool
) -> None:
    """wsgidav's date parser raises for a year of five digits (``calendar.timegm``): each method with such an
    ``If-Modified-Since``, ``If-Unmodified-Since`` or ``If-Range`` answered 500. The header is now ignored
    as an invalid date (RFC 9110), so a GET answers 200 with the payload."""
    add_archive("a.csv.sync", b"a,b\n1,2\n", manifest=csv_manifest())
    policy = WritePolicy(store, max_upload=1 << 20) if writable else None
    failed = {}
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        url = handle.mount_url
        for header in ("If-Modified-Since", "If-Unmodified-Since", "If-Range"):
            for date in FAR_DATES:
                for method, path in (
                    ("GET", "/a.csv"),
                    ("HEAD", "/a.csv"),
                    ("PROPFIND", "/a.csv"),
                    ("PUT", "/new.csv"),
                    ("DELETE", "/missing.csv"),
                    ("COPY", "/a.csv"),
                    ("LOCK", "/a.csv"),
                ):
                    headers = {header: date, "Destination": f"{url}/copy.csv", "Range": "bytes=0-1"}
                    body = b"x\n" if method == "PUT" else None
                    answer = request(url, method, path, headers=headers, body=body)
                    if answer.status >= 500:
                        failed[f"{method} {header}: {date}"] = answer.status
                    if method == "GET" and header != "If-Range":  # the date ignored, the range answered
                        assert answer.status == 206, (header, date, answer.status)
                    if method == "GET" and header == "If-Range":  # not matched: the whole body
                        assert (answer.status, answer.body) == (200, b"a,b\n1,2\n"), (date, answer.status)
    assert failed == {}


def test_a_request_that_fails_inside_wsgidav_leaves_its_traceback_in_the_log(
    store: Path, hook: RecordingHook, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """wsgidav logs a 500's traceback to its own loggers, which end at one that does not propagate: the
    500s the hostile-client pass found left no trace in mountd's log. They reach it now, as errors."""

    def a_bug(self: Any, path: str, environ: dict[str, Any]) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(provider_module.SyncProvider, "get_resource_inst", a_bug)
    with (
        caplog.at_level("ERROR", logger="mountd"),
        serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle,
    ):
        assert request(handle.mount_url, "PROPPATCH", "/x.csv").status == 500
    logged = [r for r in caplog.records if r.name == "mountd.app" and r.levelname == "ERROR"]
    assert logged
    assert any("RuntimeError: a bug of ours" in r.getMessage() for r in logged)
