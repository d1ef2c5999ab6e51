"""The payload write path (``mountd.http.sendfile``): exact bodies over sendfile and the copy paths, HTTP
intact.

Every test runs against a real server from ``serve_background`` on a free port, through real sockets, once
per path a span can take: ``os.sendfile`` (what a peer off this machine gets; forced on loopback here by
``PayloadGateway.copy_to_loopback = False``), the loopback copy (what a loopback peer gets: the default on
these 127.0.0.1 sockets), and the copy path forced (``sendfile=False``, what TLS gets). The slow-reader
tests run both plain-socket paths, which park. Which path carried a body is read from the gateway's debug
log.
"""

from __future__ import annotations

import fcntl
import http.client
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from recording_hook import RecordingHook
from redis_server import wait_for

import mountd.server
from broker import Settings
from mountd import BLOCK_SIZE, ServerHandle, serve_background
from mountd.http import handoff
from mountd.http import sendfile as sendfile_module
from mountd.http.sendfile import LATE_BYTES_KEY, PayloadGateway, direct_bytes
from sync_format import BuildResult, commit_payload

AddArchive = Callable[..., BuildResult]
#: Larger than one 1 MiB application block, so the gateway takes over the rest of the body.
BIG = os.urandom(5 * 1024 * 1024 + 12345)
#: Large enough that the kernel's socket buffers cannot hold the rest of the body when the swap happens.
HUGE_MIB = 32
#: Receive buffer of the slow client in the swap test, in bytes.
SLOW_RCVBUF = 64 * 1024
#: Connection timeout (seconds) of the servers that wait for a reader that stopped reading.
SHORT_TIMEOUT = 1
LOGGER = "mountd.http.sendfile"


def _take_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    value: str = request.param
    monkeypatch.setattr(PayloadGateway, "copy_to_loopback", value == "loopback")
    return value


@pytest.fixture(params=["sendfile", "loopback"])
def plain_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The path of a span on a plain socket to this (loopback) test client: ``os.sendfile`` (as to a peer
    off this machine) or the loopback copy."""
    return _take_path(request, monkeypatch)


@pytest.fixture(params=["sendfile", "loopback", "copy"])
def span_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``plain_path``'s two, or the copy path forced (``sendfile=False``)."""
    return _take_path(request, monkeypatch)


@pytest.fixture
def sendfile(span_path: str) -> bool:
    """The server's ``sendfile`` argument for ``span_path``."""
    return span_path != "copy"


@pytest.fixture
def payload_server(store: Path, hook: RecordingHook, sendfile: bool) -> Iterator[ServerHandle]:
    """mountd over ``store`` with the payload path chosen by ``span_path``."""
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, sendfile=sendfile) as handle:
        yield handle


@pytest.fixture
def big(add_archive: AddArchive) -> bytes:
    """``/big.txt`` holds ``BIG``."""
    add_archive("big.txt.sync", BIG)
    return BIG


def _connect(handle: ServerHandle) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(handle.host, handle.port, timeout=30)


def _via(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m.group(1) for r in caplog.records if (m := re.search(r" via=(\w+)", r.getMessage()))]


def test_big_get_is_byte_exact_on_the_chosen_path(
    big: bytes, payload_server: ServerHandle, span_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A multi-MiB GET answers exactly the payload with its Content-Length, sent by the chosen path."""
    conn = _connect(payload_server)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        conn.request("GET", "/big.txt")
        resp = conn.getresponse()
        body = resp.read()
    conn.close()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(big))
    assert body == big
    assert _via(caplog) == [span_path]


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=1000-3000999", 1000, 3000999),
        ("bytes=-2500000", len(BIG) - 2500000, len(BIG) - 1),
        ("bytes=4000000-", 4000000, len(BIG) - 1),
        ("bytes=10-20", 10, 20),
    ],
    ids=["middle", "suffix", "open-ended", "small"],
)
def test_single_range_is_byte_exact(
    big: bytes,
    payload_server: ServerHandle,
    span_path: str,
    caplog: pytest.LogCaptureFixture,
    spec: str,
    first: int,
    last: int,
) -> None:
    """A single Range answers 206 with exactly that slice; slices beyond one block take the fast path."""
    conn = _connect(payload_server)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        conn.request("GET", "/big.txt", headers={"Range": spec})
        resp = conn.getresponse()
        body = resp.read()
    conn.close()
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes {first}-{last}/{len(big)}"
    assert resp.getheader("Content-Length") == str(last - first + 1)
    assert body == big[first : last + 1]
    assert _via(caplog) == ([span_path] if last - first + 1 > BLOCK_SIZE else [])


def _ranges_answered(resp: http.client.HTTPResponse, body: bytes) -> list[tuple[int, int, bytes]]:
    """The (first, last, bytes) parts of a 206, single-part or multipart/byteranges."""
    content_type = resp.getheader("Content-Type") or ""
    if not content_type.startswith("multipart/byteranges"):
        found = re.fullmatch(r"bytes (\d+)-(\d+)/\d+", resp.getheader("Content-Range") or "")
        assert found is not None
        return [(int(found.group(1)), int(found.group(2)), body)]
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    parts = []
    for raw in body.split(b"--" + boundary)[1:-1]:
        head, _, data = raw.partition(b"\r\n\r\n")
        found = re.search(rb"Content-Range: bytes (\d+)-(\d+)/\d+", head, re.IGNORECASE)
        assert found is not None
        parts.append((int(found.group(1)), int(found.group(2)), data[:-2]))
    return parts


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bytes=0-9,2000000-2999999", [(0, 9), (2000000, 2999999)]),
        ("bytes=100-2000000,3000000-3000100", [(100, 2000000), (3000000, 3000100)]),
        ("bytes=3000000-3000100,100-2000000,150-160", [(100, 2000000), (3000000, 3000100)]),
    ],
    ids=["small-first", "big-first", "unsorted-overlapping"],
)
def test_several_ranges_answer_exact_parts(
    big: bytes, payload_server: ServerHandle, spec: str, expected: list[tuple[int, int]]
) -> None:
    """Several ranges answer 206 multipart/byteranges with every range asked for (sorted, overlaps merged),
    each part exactly the slice it names."""
    conn = _connect(payload_server)
    conn.request("GET", "/big.txt", headers={"Range": spec})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 206
    assert (resp.getheader("Content-Type") or "").startswith("multipart/byteranges")
    parts = _ranges_answered(resp, body)
    assert [(first, last) for first, last, _ in parts] == expected
    for first, last, data in parts:
        assert data == big[first : last + 1]
    conn.request("GET", "/big.txt", headers={"Range": "bytes=0-3"})  # the connection is still in step
    assert conn.getresponse().read() == big[:4]
    conn.close()


def test_head_sends_headers_only_and_keeps_the_connection(big: bytes, payload_server: ServerHandle) -> None:
    """HEAD answers the GET's headers without a body, and the same connection then serves a GET."""
    conn = _connect(payload_server)
    conn.request("HEAD", "/big.txt")
    head = conn.getresponse()
    assert head.read() == b""
    assert head.status == 200
    assert head.getheader("Content-Length") == str(len(big))
    sock = conn.sock
    conn.request("GET", "/big.txt")
    assert conn.getresponse().read() == big
    assert conn.sock is sock
    conn.close()


def test_keep_alive_serves_a_second_request_after_a_big_body(
    big: bytes, payload_server: ServerHandle
) -> None:
    """After a body sent by the fast path the connection stays open and in step for the next requests."""
    conn = _connect(payload_server)
    conn.request("GET", "/big.txt")
    first = conn.getresponse()
    assert first.read() == big
    assert not first.will_close
    sock = conn.sock
    conn.request("GET", "/big.txt", headers={"Range": "bytes=1048576-3145727"})
    assert conn.getresponse().read() == big[1048576:3145728]
    conn.request("GET", "/big.txt")
    assert conn.getresponse().read() == big
    assert conn.sock is sock
    conn.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_client_gone_mid_body_closes_quietly_and_releases_the_files(
    add_archive: AddArchive,
    payload_server: ServerHandle,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that resets mid-body costs no traceback, leaks no fd, and the server serves the next GET."""
    huge = os.urandom(HUGE_MIB * 1024 * 1024)
    add_archive("huge.txt.sync", huge)
    conn = _connect(payload_server)
    conn.request("GET", "/huge.txt")
    assert conn.getresponse().read() == huge  # warm: the server's threads and caches exist before counting
    conn.close()
    baseline = _open_fds()
    for _ in range(3):
        sock = socket.create_connection((payload_server.host, payload_server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.sendall(f"GET /huge.txt HTTP/1.1\r\nHost: 127.0.0.1:{payload_server.port}\r\n\r\n".encode())
        assert sock.recv(65536)
        # SO_LINGER 0: close with a reset, as a killed client does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    wait_for(lambda: _open_fds() <= baseline, 10, what="the server released the aborted requests' fds")
    conn = _connect(payload_server)
    conn.request("GET", "/huge.txt")
    assert conn.getresponse().read() == huge
    conn.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mountd")]


def test_swap_during_a_slow_download_sends_only_old_bytes(
    add_archive: AddArchive, store: Path, payload_server: ServerHandle
) -> None:
    """A swap committed while a slow client is mid-body leaves that body entirely old; the next GET is new."""
    old = os.urandom(HUGE_MIB * 1024 * 1024)
    new = os.urandom(2 * 1024 * 1024)
    add_archive("huge.txt.sync", old)
    sock = socket.create_connection((payload_server.host, payload_server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.sendall(f"GET /huge.txt HTTP/1.1\r\nHost: 127.0.0.1:{payload_server.port}\r\n\r\n".encode())
    reader = sock.makefile("rb")
    try:
        status = reader.readline()
        assert status.startswith(b"HTTP/1.1 200")
        while reader.readline() not in (b"\r\n", b""):
            pass
        head = reader.read(2 * 1024 * 1024)
        commit_payload(store / "huge.txt.sync", 0, new)
        rest = reader.read(len(old) - len(head))
    finally:
        reader.close()
        sock.close()
    assert head + rest == old
    conn = _connect(payload_server)
    conn.request("GET", "/huge.txt")
    assert conn.getresponse().read() == new
    conn.close()


class _CountingApp:
    """A WSGI wrapper recording each response's ``direct_bytes`` when it is closed, and the bytes of a
    parked send when they left (``LATE_BYTES_KEY``), as byte counters do."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.direct: list[int] = []
        self.late: list[int] = []

    def __call__(self, environ: dict[str, object], start_response: Callable[..., object]) -> Iterator[bytes]:
        result = self.app(environ, start_response)
        inner = environ.get(LATE_BYTES_KEY)  # the ops layer's (metrics), set while the app was called

        def late(n: int) -> None:
            self.late.append(n)
            if callable(inner):
                inner(n)

        environ[LATE_BYTES_KEY] = late  # read by the gateway once the first block is out
        try:
            yield from result
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self.direct.append(direct_bytes(environ))


def test_bytes_sent_past_the_iterable_are_reported(big: bytes, payload_server: ServerHandle) -> None:
    """What the gateway sends outside the WSGI iterable is what ``direct_bytes`` reports to a wrapper, with
    what a parked send reports once it ended (a fast reader too can fill its socket buffer)."""
    guard = payload_server.app
    counting = _CountingApp(guard.app)
    guard.app = counting
    conn = _connect(payload_server)
    conn.request("GET", "/big.txt")
    assert conn.getresponse().read() == big
    conn.request("GET", "/big.txt", headers={"Range": "bytes=0-99"})
    assert conn.getresponse().read() == big[:100]
    conn.close()
    wait_for(lambda: len(counting.direct) == 2, 10, what="both responses closed")
    assert counting.direct[1] == 0
    assert counting.direct[0] + sum(counting.late) == len(big) - BLOCK_SIZE


def test_a_reader_that_stops_reading_is_cut_off_and_its_files_released(
    add_archive: AddArchive,
    store: Path,
    hook: RecordingHook,
    sendfile: bool,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client that stops reading mid-body is disconnected after the connection timeout, on either path:
    the body stays incomplete, and the connection's thread and file descriptors are released."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", SHORT_TIMEOUT)
    monkeypatch.setattr(handoff, "SEND_IDLE", SHORT_TIMEOUT)  # parked sends' own idle limit
    huge = os.urandom(HUGE_MIB * 1024 * 1024)
    add_archive("huge.txt.sync", huge)
    settings = Settings(host="127.0.0.1", port=0)
    with serve_background(settings, store, hook, sendfile=sendfile) as handle:
        conn = _connect(handle)
        conn.request("GET", "/huge.txt")
        assert conn.getresponse().read() == huge  # warm: threads and caches exist before counting
        conn.close()
        baseline = _open_fds()
        sock = socket.create_connection((handle.host, handle.port), timeout=30)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            sock.sendall(f"GET /huge.txt HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n\r\n".encode())
            received = len(sock.recv(65536))
            # The client now reads nothing: only its own socket may stay open once the server gave up.
            wait_for(lambda: _open_fds() <= baseline + 1, 30, what="the server dropped the stalled reader")
            with suppress(ConnectionResetError):
                while data := sock.recv(1024 * 1024):
                    received += len(data)
        finally:
            sock.close()  # also unblocks a server that never gave up, so that a failure ends here
        assert 0 < received < len(huge)
        conn = _connect(handle)
        conn.request("GET", "/huge.txt")
        assert conn.getresponse().read() == huge
        conn.close()
    assert "Traceback" not in capfd.readouterr().err


def _tcp_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return server, client


@pytest.mark.parametrize(
    ("family", "host", "loopback"),
    [
        (socket.AF_INET, "127.0.0.1", True),
        (socket.AF_INET, "127.45.6.7", True),
        (socket.AF_INET, "10.0.0.1", False),
        (socket.AF_INET, "172.17.0.1", False),
        (socket.AF_INET, "1.127.0.0", False),
        (socket.AF_INET6, "::1", True),
        (socket.AF_INET6, "::ffff:127.0.0.1", True),
        (socket.AF_INET6, "::FFFF:127.0.0.1", True),
        (socket.AF_INET6, "::ffff:10.0.0.1", False),
        (socket.AF_INET6, "fe80::1", False),
        (socket.AF_INET6, "2001:db8::1", False),
        (socket.AF_UNIX, "", False),
    ],
)
def test_loopback_addresses(family: int, host: str, loopback: bool) -> None:
    """Only 127.0.0.0/8, ``::1`` and IPv4-mapped 127.0.0.0/8 are loopback (a peer on another interface,
    a Docker bridge's gateway among them, keeps ``os.sendfile``)."""
    assert sendfile_module.loopback_address(family, host) is loopback


def test_loopback_peers_are_told_from_others() -> None:
    """Real sockets: IPv4 and IPv6 loopback peers are loopback, a Unix socket's peer is not, and a socket
    without a peer is not."""
    pairs = [_tcp_pair("127.0.0.1")]
    if socket.has_ipv6:
        with suppress(OSError):
            pairs.append(_tcp_pair("::1"))
    try:
        for server, client in pairs:
            assert sendfile_module._is_loopback(server)
            assert sendfile_module._is_loopback(client)
        left, right = socket.socketpair()
        with left, right:
            assert not sendfile_module._is_loopback(left)
        with socket.socket() as unconnected:
            assert not sendfile_module._is_loopback(unconnected)
    finally:
        for server, client in pairs:
            server.close()
            client.close()


class _PeerOf:
    """What ``_is_loopback`` reads of a socket, for a peer this test cannot reach from 127.0.0.1."""

    def __init__(self, family: int, host: str) -> None:
        self.family = family
        self.host = host

    def getpeername(self) -> tuple[object, ...]:
        return (self.host, 8080) if self.family == socket.AF_INET else (self.host, 8080, 0, 0)


@pytest.mark.parametrize(
    ("family", "host", "loopback"),
    [
        (socket.AF_INET, "192.168.1.20", False),
        (socket.AF_INET6, "2001:db8::1", False),
        (socket.AF_INET, "127.0.0.1", True),
    ],
)
def test_a_peer_off_this_machine_keeps_sendfile(family: int, host: str, loopback: bool) -> None:
    """The socket's own peer address decides: one off the loopback range is not loopback."""
    assert sendfile_module._is_loopback(_PeerOf(family, host)) is loopback  # type: ignore[arg-type]


def _send_timeout(sock: socket.socket) -> tuple[int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize("@ll"))
    seconds, micros = struct.unpack("@ll", raw)
    return seconds, micros


def _assert_restored(sock: socket.socket, timeout: float) -> None:
    assert sock.gettimeout() == timeout
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    assert _send_timeout(sock) == (0, 0)


@pytest.mark.parametrize("copy", [False, True], ids=["sendfile", "loopback"])
def test_a_span_is_sent_exactly_and_the_socket_left_as_it_was(tmp_path: Path, copy: bool) -> None:
    """The span loop (by ``os.sendfile`` or copied) sends exactly the span asked for and leaves the socket as
    cheroot set it: non-blocking with its timeout, no kernel send timeout."""
    data = os.urandom(8 * 1024 * 1024 + 4321)
    source = tmp_path / "data"
    source.write_bytes(data)
    server, client = _tcp_pair()
    received = bytearray()

    def drain() -> None:
        while chunk := client.recv(1024 * 1024):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        server.settimeout(7.5)
        fd = os.open(source, os.O_RDONLY)
        try:
            sent = sendfile_module._send_span(server, fd, 1000, len(data) - 2000, copy=copy)
        finally:
            os.close(fd)
        _assert_restored(server, 7.5)
        server.shutdown(socket.SHUT_WR)
        reader.join(30)
    finally:
        server.close()
        client.close()
    assert sent == len(data) - 2000
    assert bytes(received) == data[1000:-1000]


@pytest.mark.parametrize("copy", [False, True], ids=["sendfile", "loopback"])
def test_a_span_to_a_reader_that_stopped_times_out_and_restores_the_socket(
    tmp_path: Path, copy: bool
) -> None:
    """A peer that reads nothing makes the span loop (either way) raise cheroot's "timed out" after the
    socket's timeout, and the socket is left as it was all the same."""
    source = tmp_path / "data"
    source.write_bytes(os.urandom(HUGE_MIB * 1024 * 1024))
    server, client = _tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    outcome: list[BaseException | int] = []

    def send() -> None:
        fd = os.open(source, os.O_RDONLY)
        try:
            outcome.append(sendfile_module._send_span(server, fd, 0, HUGE_MIB * 1024 * 1024, copy=copy))
        except OSError as exc:
            outcome.append(exc)
        finally:
            os.close(fd)

    server.settimeout(0.2)
    sender = threading.Thread(target=send)
    sender.start()
    try:
        sender.join(30)
        stuck = sender.is_alive()
    finally:
        client.close()  # unblocks a sender that would otherwise wait for ever
        sender.join(30)
    try:
        assert not stuck, "the send to a stalled reader never gave up"
        assert len(outcome) == 1
        assert isinstance(outcome[0], TimeoutError)
        assert str(outcome[0]) == "timed out"
        _assert_restored(server, 0.2)
    finally:
        server.close()


# --- slow readers: the rest of a body is sent from the connection loop (mountd.http.handoff) ---

#: Slow readers in the thread test: more than the server's 16 worker threads.
SLOW_READERS = 24
#: Seconds a slow reader reads nothing (longer than ``PARK_AFTER`` as the tests set it).
PAUSE = 1.5


def _slow_get(handle: ServerHandle, path: str) -> tuple[socket.socket, Any]:
    """A GET from a client with a small receive buffer; returns the socket and its reader, head read."""
    sock = socket.create_connection((handle.host, handle.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n\r\n".encode())
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200")
    while reader.readline() not in (b"\r\n", b""):
        pass
    return sock, reader


def test_slow_readers_hold_no_thread_and_get_exact_bodies(
    add_archive: AddArchive,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    plain_path: str,
) -> None:
    """24 readers that stop reading mid-body (more than the 16 threads) are parked in the connection loop:
    other GETs are answered meanwhile, and each parked body arrives exact once its reader reads on."""
    monkeypatch.setattr(handoff, "PARK_AFTER", 0.3)
    body = os.urandom(8 * 1024 * 1024)
    add_archive("huge.txt.sync", body)
    add_archive("small.txt.sync", b"small")
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        slow = [_slow_get(handle, "/huge.txt") for _ in range(SLOW_READERS)]
        try:
            time.sleep(PAUSE)
            for _ in range(5):
                conn = http.client.HTTPConnection(handle.host, handle.port, timeout=5)
                conn.request("GET", "/small.txt")
                assert conn.getresponse().read() == b"small"
                conn.close()
            for _, reader in slow:
                assert reader.read(len(body)) == body
        finally:
            for sock, reader in slow:
                reader.close()
                sock.close()


def _parked(caplog: pytest.LogCaptureFixture) -> int:
    return sum("payload span parked" in r.getMessage() for r in caplog.records)


def test_a_parked_body_survives_a_swap_and_the_connection_stays_alive(
    add_archive: AddArchive,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    plain_path: str,
) -> None:
    """A body parked mid-way is all old bytes though a swap is committed meanwhile; the same connection then
    answers the next request with the new payload."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    monkeypatch.setattr(handoff, "PARK_AFTER", 0.3)
    old = os.urandom(HUGE_MIB * 1024 * 1024)
    new = os.urandom(1024 * 1024)
    add_archive("huge.txt.sync", old)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        sock, reader = _slow_get(handle, "/huge.txt")
        try:
            head = reader.read(1024 * 1024)
            time.sleep(PAUSE)  # parked
            commit_payload(store / "huge.txt.sync", 0, new)
            assert head + reader.read(len(old) - len(head)) == old
            assert _parked(caplog) == 1
            assert _via(caplog) == [plain_path]
            sock.sendall(f"GET /huge.txt HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n\r\n".encode())
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert reader.read(length) == new
        finally:
            reader.close()
            sock.close()


def test_a_parked_reader_that_never_reads_is_closed_and_its_files_released(
    add_archive: AddArchive,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    plain_path: str,
) -> None:
    """A parked send without progress for the connection timeout is closed by the loop: the socket and the
    payload's duplicate descriptor go; past ``MAX_PARKED_SENDS`` a worker waits as before, with the same
    end."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", SHORT_TIMEOUT)
    monkeypatch.setattr(handoff, "SEND_IDLE", SHORT_TIMEOUT)  # parked sends' own idle limit
    monkeypatch.setattr(handoff, "PARK_AFTER", 0.2)
    monkeypatch.setattr(handoff, "MAX_PARKED_SENDS", 1)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    huge = os.urandom(HUGE_MIB * 1024 * 1024)
    add_archive("huge.txt.sync", huge)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        conn = _connect(handle)
        conn.request("GET", "/huge.txt")
        assert conn.getresponse().read() == huge  # warm
        conn.close()
        baseline = _open_fds()
        stalled = [_slow_get(handle, "/huge.txt") for _ in range(2)]  # one parked, one waited on
        try:
            wait_for(lambda: _open_fds() <= baseline + 2, 30, what="the server dropped both stalled readers")
            assert _parked(caplog) == 1
        finally:
            for sock, reader in stalled:
                reader.close()
                sock.close()
        conn = _connect(handle)
        conn.request("GET", "/huge.txt")
        assert conn.getresponse().read() == huge
        conn.close()
    assert "Traceback" not in capfd.readouterr().err


def test_parked_sends_back_to_keep_alive_respect_the_keep_alive_limit(
    add_archive: AddArchive, store: Path, hook: RecordingHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 parked bodies (all answered as keep-alive: parked sends do not count) against cheroot's limit of
    10 idle keep-alive connections: once the bodies are out, 10 connections stay open and 2 are closed."""
    body = os.urandom(8 * 1024 * 1024)
    add_archive("huge.txt.sync", body)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        limit = handle._server.keep_alive_conn_limit
        readers = [_slow_get(handle, "/huge.txt") for _ in range(limit + 2)]
        try:
            time.sleep(PAUSE)
            for _, reader in readers:
                assert reader.read(len(body)) == body
            time.sleep(0.5)  # well under the 10 s idle timeout: only the limit closes a connection
            closed = 0
            for sock, _ in readers:
                sock.settimeout(0)  # with a timeout Python waits for readability whatever the flags say
                with suppress(BlockingIOError):
                    closed += sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        finally:
            for sock, reader in readers:
                reader.close()
                sock.close()
    assert closed == 2


def test_a_parked_reader_pausing_longer_than_the_idle_timeout_gets_its_whole_body(
    add_archive: AddArchive, store: Path, hook: RecordingHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parked send is closed after ``SEND_IDLE`` without progress, not after the server's idle timeout:
    a reader that pauses 2.5 s (as ``curl --limit-rate`` does after a burst) against a 1 s server timeout
    still gets every byte."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", SHORT_TIMEOUT)
    monkeypatch.setattr(handoff, "SEND_IDLE", 6.0)
    body = os.urandom(HUGE_MIB * 1024 * 1024)
    add_archive("huge.txt.sync", body)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        sock, reader = _slow_get(handle, "/huge.txt")
        try:
            head = reader.read(1024 * 1024)
            time.sleep(2.5)
            assert head + reader.read(len(body) - len(head)) == body
        finally:
            reader.close()
            sock.close()


@pytest.mark.parametrize("path", ["parked", "worker"])
def test_a_reader_reading_on_slowly_is_not_cut_though_no_send_is_possible(
    add_archive: AddArchive, store: Path, hook: RecordingHook, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A reader that reads on all along, but too slowly for its send queue to free the third that lets the
    server send again, makes progress by the bytes it acknowledges (``SIOCOUTQ``), parked or waited on by a
    worker (no parking room): with a 2 s limit without progress it reads 160 KiB/s for 5 s (its window
    reopens, and 128 KiB are acknowledged, every 0.8 s; a 4 MB send queue lets the server send again only
    after about 1.3 MB, 8 s), then the rest, and gets every byte."""
    if path == "parked":
        monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", SHORT_TIMEOUT)
        monkeypatch.setattr(handoff, "SEND_IDLE", 2.0)
        monkeypatch.setattr(handoff, "PROGRESS_CHECK", 0.2)
    else:
        monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", 2)
        monkeypatch.setattr(handoff, "MAX_PARKED_SENDS", 0)
    body = os.urandom(HUGE_MIB * 1024 * 1024)
    add_archive("huge.txt.sync", body)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        sock, reader = _slow_get(handle, "/huge.txt")
        try:
            got = bytearray()
            until = time.monotonic() + 5
            while time.monotonic() < until:
                got += reader.read1(32 * 1024)
                time.sleep(0.2)
            got += reader.read(len(body) - len(got))
            assert got == body
        finally:
            reader.close()
            sock.close()


class _Loop:
    """The owner a parked send reports its end to (``handoff.Owner``), as the connection loop is."""

    def end(self, entry: object) -> None:
        pass


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_a_copying_parked_send_reads_about_what_its_reader_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loopback reader that makes little room at a time: the loop's copying send reads, per write, about as
    much as the socket took the time before (not ``SEND_CHUNK`` for each small write: a reader taking 500
    bytes at a time had it read 1 MiB per write), and the bytes arrive exact."""
    data = os.urandom(512 * 1024)
    source = tmp_path / "data"
    source.write_bytes(data)
    server, client = _tcp_pair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    server.setblocking(False)
    read = [0]
    real_preadv = os.preadv

    def counting_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        got = real_preadv(fd, buffers, offset)
        read[0] += got
        return got

    monkeypatch.setattr(handoff.os, "preadv", counting_preadv)
    fd = os.open(source, os.O_RDONLY)
    entry = handoff.ParkedSend(_Loop(), _Conn(server), fd, 0, len(data), copy=True)  # type: ignore[arg-type]
    received = bytearray()
    try:
        for _ in range(100_000):
            if entry.pump():
                break
            received += client.recv(65536)
        server.shutdown(socket.SHUT_WR)
        while chunk := client.recv(65536):
            received += chunk
    finally:
        entry.release()
        server.close()
        client.close()
    assert not entry.failed
    assert bytes(received) == data
    assert read[0] < 4 * len(data), f"read {read[0]} bytes of the file to send {len(data)}"
