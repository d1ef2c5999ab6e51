"""Hostile request heads against a real mountd on 127.0.0.1: oversized heads (431 before authentication),
too many header fields, and slow or idle connections that must not starve ordinary requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dav_client import get, request
from recording_hook import RecordingHook
from redis_server import wait_for
from store_manifests import csv_manifest

import mountd.server
from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.http import connection_guard
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult

AddArchive = Callable[..., BuildResult]
#: The bound in seconds for GETs answered while slow clients are connected: generous, the check is that
#: they are answered at all (before the fix they wait for the slow clients' timeouts).
ANSWERED_WITHIN = 5.0


@pytest.fixture
def guarded(store: Path, hook: RecordingHook, add_archive: AddArchive) -> Iterator[ServerHandle]:
    """mountd with a short head deadline (2 s) and one archive."""
    add_archive("a.csv.sync", b"payload", manifest=csv_manifest())
    settings = Settings(host="127.0.0.1", port=0, header_timeout=2.0)
    with serve_background(settings, store, hook) as handle:
        yield handle


def _connect(handle: ServerHandle) -> socket.socket:
    return socket.create_connection((handle.host, handle.port), timeout=10)


def _status_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def test_megabytes_of_headers_get_431_and_the_server_answers_on(guarded: ServerHandle) -> None:
    """4 MiB of distinct headers: 431 once 64 KiB were read (the rest is never buffered); next GET is 200."""
    with _connect(guarded) as sock:
        sock.sendall(f"GET /a.csv HTTP/1.1\r\nHost: {guarded.host}:{guarded.port}\r\n".encode())
        line = b"X-Filler-%06d: " + b"v" * 1000 + b"\r\n"
        status = b""
        try:
            for i in range(4096):
                sock.sendall(line % i)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        status = _status_line(sock)
    assert status.startswith(b"HTTP/1.1 431"), status
    assert get(guarded.mount_url, "/a.csv").status == 200


def test_too_many_header_fields_get_431(guarded: ServerHandle) -> None:
    """101 small header fields (under the byte cap) are refused with 431."""
    with _connect(guarded) as sock:
        head = f"GET /a.csv HTTP/1.1\r\nHost: {guarded.host}:{guarded.port}\r\n"
        head += "".join(f"X-F{i}: 1\r\n" for i in range(100)) + "\r\n"
        sock.sendall(head.encode())
        assert _status_line(sock).startswith(b"HTTP/1.1 431")
    headers = {f"X-F{i}": "1" for i in range(90)}
    assert get(guarded.mount_url, "/a.csv", **headers).status == 200


def test_64_slow_and_idle_connections_leave_gets_answered(guarded: ServerHandle) -> None:
    """32 connections dripping a head and 32 idle ones hold no thread: GETs are answered meanwhile."""
    slow = [_connect(guarded) for _ in range(64)]
    try:
        for sock in slow[:32]:
            sock.sendall(b"GET /a.csv HTTP/1.1\r\nX-Slow: ")
        answered = []
        for _ in range(20):
            answered.append(request(guarded.mount_url, "GET", "/a.csv", timeout=ANSWERED_WITHIN).status)
        assert answered == [200] * 20
    finally:
        for sock in slow:
            sock.close()


def test_head_deadline_closes_a_dripping_connection(guarded: ServerHandle) -> None:
    """A client sending one head byte every 0.2 s is cut off at the total deadline (2 s here)."""
    closed = threading.Event()
    with _connect(guarded) as sock:

        def drip() -> None:
            try:
                for byte in b"GET /a.csv HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                    sock.send(bytes([byte]))
                    if closed.wait(0.2):
                        return
            except OSError:
                closed.set()

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        sock.settimeout(30)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        closed.set()
        dripper.join(5)
    assert data == b"" or b"408" in data
    wait_for(lambda: get(guarded.mount_url, "/a.csv").status == 200, 5, what="server answering")


def test_a_dripped_body_is_cut_off_and_holds_no_thread_for_long(guarded: ServerHandle) -> None:
    """A PROPFIND announcing 5,000 body bytes and sending one every 0.2 s is closed once its rate stays
    under 1 KiB/s past the grace (2 s here), instead of holding a worker thread for 1,000 s."""
    with _connect(guarded) as sock:
        head = f"PROPFIND / HTTP/1.1\r\nHost: {guarded.host}:{guarded.port}\r\nContent-Length: 5000\r\n\r\n"
        sock.sendall(head.encode())
        closed = False
        for _ in range(150):  # 30 s of dripping at most
            try:
                sock.send(b"<")
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed
    assert get(guarded.mount_url, "/a.csv").status == 200


def test_uploads_that_stall_their_body_leave_threads_for_reads_and_get_an_answer(
    store: Path, hook: RecordingHook, add_archive: AddArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many uploads as the server has threads (16), each announcing a 100-byte body and sending 4 bytes:
    before, each held a thread for a read timeout (10 s; 6 s here), so a GET waited for them, over and over
    as the uploader opened new ones. Now at most half the threads take a body still to come, so reads are
    answered while they all still wait; and a stalled upload gets its 400 with the connection closed
    (cheroot tried to read the rest of the body from the timed-out socket, raised, and the client got no
    answer)."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", 6)
    add_archive("a.csv.sync", b"payload", manifest=csv_manifest())
    policy = WritePolicy(store, max_upload=1 << 20)
    settings = Settings(host="127.0.0.1", port=0, header_timeout=2.0)
    with serve_background(settings, store, hook, writable=policy) as handle:
        stalled = []
        try:
            for i in range(mountd.server.SERVER_THREADS):
                sock = _connect(handle)
                host = f"{handle.host}:{handle.port}"
                head = f"PUT /s{i}.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n"
                sock.sendall(head.encode() + b"a,b\n")
                stalled.append(sock)
            assert request(handle.mount_url, "GET", "/a.csv", timeout=ANSWERED_WITHIN).status == 200
            propfind = request(
                handle.mount_url, "PROPFIND", "/", headers={"Depth": "1"}, timeout=ANSWERED_WITHIN
            )
            assert propfind.status == 207
            for sock in stalled:  # answered while every upload still waits: no stalled one had to end first
                sock.settimeout(0)  # (with a timeout, Python waits for data whatever the flags say)
                with pytest.raises(BlockingIOError):
                    sock.recv(1, socket.MSG_PEEK)
            first = stalled[0]
            first.settimeout(15)
            answer = first.makefile("rb").read()  # to the end: the server closes the connection
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
            assert b"connection: close" in answer.lower()
        finally:
            for sock in stalled:
                sock.close()
    assert sorted(p.name for p in store.iterdir()) == ["a.csv.sync"]  # nothing half-uploaded is left


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 100\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 100\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: 0_5\r\n",
        b"Content-Length: 000000000000000000005\r\n",
        b"Content-Length: 2\r\n 5\r\n",
        b"X-Pad: a\r\n Content-Length: 5\r\n",
    ],
    ids=[
        "lengths-last-short",
        "lengths-last-long",
        "length-then-chunked",
        "chunked-then-length",
        "signed",
        "underscore",
        "21-digits",
        "folded-length",
        "folded-line",
    ],
)
def test_a_request_whose_body_framing_is_ambiguous_is_refused(
    store: Path, hook: RecordingHook, framing: bytes
) -> None:
    """Two Content-Length values, or Content-Length with Transfer-Encoding, frame the body two ways (a proxy
    in front may read it one way, mountd the other: request smuggling). cheroot took the last length: with
    100 then 5 the upload of the first 5 bytes was stored (201), and the rest would be read as the next
    request; with 5 then 100 it waited for a body that never came. A length that is not plain digits, which
    cheroot's ``int`` reads (``+5``, ``0_5``), and a folded header line (obs-fold: with ``Content-Length: 2``
    folded onto `` 5``, cheroot stored 5 bytes) are refused too. Now 400 at once, the connection closed,
    nothing stored (RFC 9112 §5.2, §6.3)."""
    policy = WritePolicy(store, max_upload=1 << 20)
    settings = Settings(host="127.0.0.1", port=0)
    with serve_background(settings, store, hook, writable=policy) as handle, _connect(handle) as sock:
        host = f"{handle.host}:{handle.port}"
        sock.sendall(f"PUT /cl.csv HTTP/1.1\r\nHost: {host}\r\n".encode() + framing + b"\r\nabcde")
        sock.settimeout(ANSWERED_WITHIN)
        answer = sock.makefile("rb").read()  # to the end: the server closes the connection
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:60]
    assert b"framing is ambiguous" in answer
    assert list(store.iterdir()) == []


def test_pipelined_requests_get_no_thread_their_head_or_body_has_not_earned(
    store: Path, hook: RecordingHook, add_archive: AddArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET followed in the same packet by an upload whose body never comes: cheroot read the upload's
    head ahead and gave the connection straight back to a thread, past the body threads; 16 such clients
    made reads wait again. And a client with more stalled uploads waiting than its share is told 503 at
    once instead of waiting in the queue (up to 120 s) to be closed without an answer."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", 6)
    add_archive("a.csv.sync", b"payload", manifest=csv_manifest())
    policy = WritePolicy(store, max_upload=1 << 20)
    settings = Settings(host="127.0.0.1", port=0, header_timeout=2.0)
    with serve_background(settings, store, hook, writable=policy) as handle:
        host = f"{handle.host}:{handle.port}"
        stalled = []
        try:
            for i in range(mountd.server.SERVER_THREADS + connection_guard.MAX_QUEUED_PER_ADDRESS - 8):
                sock = _connect(handle)
                sock.sendall(
                    f"GET /a.csv HTTP/1.1\r\nHost: {host}\r\n\r\n"
                    f"PUT /s{i}.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n".encode()
                )
                stalled.append(sock)
            for sock in stalled:  # each GET answered: read its response (payload last)
                sock.settimeout(ANSWERED_WITHIN)
                got = b""
                while not got.endswith(b"payload"):
                    got += sock.recv(4096)
            assert request(handle.mount_url, "GET", "/a.csv", timeout=ANSWERED_WITHIN).status == 200
            for sock in stalled:  # while every upload still waits: none had to end first
                sock.settimeout(0)
                with pytest.raises(BlockingIOError):
                    sock.recv(1, socket.MSG_PEEK)
            with _connect(handle) as extra:  # one more of this client's: over its share of the queue
                head = f"PUT /more.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\n"
                extra.sendall(head.encode())
                extra.settimeout(ANSWERED_WITHIN)
                assert extra.makefile("rb").read().startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in stalled:
                sock.close()


@pytest.mark.parametrize(
    ("path", "host", "status"),
    [("/x.csv.sync", None, b"403"), ("/x.csv", "elsewhere.example", b"421")],
    ids=["refused-name", "other-host"],
)
def test_a_request_refused_before_its_stalled_body_gets_its_answer(
    store: Path, hook: RecordingHook, path: str, host: str | None, status: bytes
) -> None:
    """An upload refused before its body is read, whose body never comes: cheroot read the rest of the
    body to keep the connection, in the thread, until the read timed out (10 s), and then dropped the
    answer. The answer now comes at once and the connection is closed."""
    policy = WritePolicy(store, max_upload=1 << 20)
    settings = Settings(host="127.0.0.1", port=0)
    with serve_background(settings, store, hook, writable=policy) as handle, _connect(handle) as sock:
        named = host or f"{handle.host}:{handle.port}"
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {named}\r\nContent-Length: 100\r\n\r\na,b\n".encode())
        sock.settimeout(ANSWERED_WITHIN)
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:60]
    assert list(store.iterdir()) == []
