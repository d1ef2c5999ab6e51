"""Generated bodies parked in the connection loop (``mountd.http.handoff.ParkedBody``): a listing or a folder
page whose reader reads slower than the socket takes holds no worker thread.

Every test runs a real server from ``serve_background`` over a folder of several thousand archives (copies of
one, with long names), whose PROPFIND Depth 1 document (about 8 MB) and HTML page (about 4 MB) cannot fit in
the kernel's socket buffers, and talks to it through real sockets.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from recording_hook import RecordingHook
from redis_server import wait_for

import mountd.server
from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.http import fast_propfind, handoff
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult

AddArchive = Callable[..., BuildResult]
#: Archives in the big folder, and the length of their names: a document of about 8 MB.
MEMBERS = 6000
NAME = "m" * 200
#: More slow readers than the server has threads (16).
SLOW_READERS = 24
LOGGER = "mountd.http.sendfile"
#: A ``<prop>`` list as Windows sends it (long: the document is about 6 MB).
WINDOWS_PROPS = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop'
    b' xmlns:Z="urn:schemas-microsoft-com:"><D:name/><D:parentname/><D:href/><D:ishidden/><D:isroot/>'
    b"<D:iscollection/><D:isreadonly/><D:getcontenttype/><D:contentclass/><D:getcontentlanguage/>"
    b"<D:creationdate/><D:lastaccessed/><D:getlastmodified/><D:getcontentlength/><D:resourcetype/>"
    b"<D:isstructureddocument/><D:defaultdocument/><D:displayname/><D:isreadonly/><Z:Win32FileAttributes/>"
    b"<Z:Win32CreationTime/><Z:Win32LastAccessTime/><Z:Win32LastModifiedTime/></D:prop></D:propfind>"
)
#: The generated bodies, by kind: the request's method, header and body, and the answer's status.
KINDS = {
    "listing": ("PROPFIND", "Depth: 1", b"", 207),
    "properties": ("PROPFIND", "Depth: 1", WINDOWS_PROPS, 207),
    "page": ("GET", "Accept: text/html", b"", 200),
}


@pytest.fixture
def big_folder(add_archive: AddArchive, store: Path) -> Path:
    """``store/big`` holding ``MEMBERS`` copies of one archive."""
    add_archive("big/first.txt.sync", b"one payload")
    folder = store / "big"
    first = folder / "first.txt.sync"
    for i in range(MEMBERS):
        shutil.copyfile(first, folder / f"{NAME}{i:05d}.txt.sync")
    return folder


@pytest.fixture
def server(big_folder: Path, store: Path, hook: RecordingHook) -> Iterator[ServerHandle]:
    """mountd over the store with the big folder."""
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        yield handle


def listing(handle: ServerHandle, kind: str = "listing") -> bytes:
    """The big folder's PROPFIND Depth 1 document (or its HTML page), read at once."""
    method, header, body, status = KINDS[kind]
    name, value = header.split(": ")
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=30)
    conn.request(method, "/big/", body=body or None, headers={name: value})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == status
    return body


def slow_listing(handle: ServerHandle, kind: str = "listing") -> tuple[socket.socket, Any]:
    """A PROPFIND of the big folder (or a GET of its page) from a client with a 16 KiB receive buffer that
    reads nothing yet; returns the socket and its reader."""
    method, header, body, _ = KINDS[kind]
    head = f"{method} /big/ HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n{header}\r\n"
    return slow_reader(handle, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


def slow_reader(handle: ServerHandle, request: bytes) -> tuple[socket.socket, Any]:
    """``request`` sent from a client with a 16 KiB receive buffer that reads nothing yet; returns the
    socket and its reader."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connecting: the window follows it
    sock.settimeout(30)
    sock.connect((handle.host, handle.port))
    sock.sendall(request)
    return sock, sock.makefile("rb")


def read_head(reader: Any) -> int:
    """Status line (a 207 or a 200) and head of one response; returns its Content-Length."""
    assert reader.readline()[:12] in (b"HTTP/1.1 207", b"HTTP/1.1 200")
    length = -1
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return length


def read_response(reader: Any) -> bytes:
    """One 207 response; returns its body (by its Content-Length)."""
    return bytes(reader.read(read_head(reader)))


def read_to_close(reader: Any) -> bytes:
    """What arrives until the server closes the connection. A close with the pipelined request still unread
    is a reset, which may come before the bytes in flight: what was read by then is the answer."""
    stream = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := reader.read1(65536):
            stream += chunk
    return bytes(stream)


def answered_meanwhile(handle: ServerHandle) -> None:
    """A GET of the folder's first archive, answered within 5 s while the slow readers wait."""
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=5)
    conn.request("GET", "/big/first.txt")
    assert conn.getresponse().read() == b"one payload"
    conn.close()


def all_parked_then_exact(
    handle: ServerHandle,
    caplog: pytest.LogCaptureFixture,
    slow: list[tuple[socket.socket, Any]],
    expected: bytes,
) -> None:
    """Every one of the ``slow`` readers is parked, a GET is answered meanwhile, and each reader then gets
    ``expected`` byte for byte; the readers are closed in any case."""
    try:
        wait_for(lambda: parked(caplog) == len(slow), 60, what="every slow reader parked")
        answered_meanwhile(handle)
        for _, reader in slow:
            assert read_response(reader) == expected
    finally:
        close_all(slow)


def close_all(readers: list[tuple[socket.socket, Any]]) -> None:
    for sock, reader in readers:
        reader.close()
        sock.close()


def parked(caplog: pytest.LogCaptureFixture) -> int:
    return sum("response body parked" in r.getMessage() for r in caplog.records)


def test_the_documents_are_larger_than_socket_buffers(server: ServerHandle) -> None:
    """The premise of the other tests: the listing and the page are several MB."""
    assert len(listing(server)) > 6 * 1024 * 1024
    assert len(listing(server, "properties")) > 5 * 1024 * 1024
    assert len(listing(server, "page")) > 3 * 1024 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_slow_listing_readers_hold_no_thread_and_get_exact_documents(
    server: ServerHandle, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """24 readers of the listing (with or without a ``<prop>`` list, or of the folder's HTML page) that read
    nothing, more than the 16 threads, are parked: a GET is answered meanwhile, and each reader then gets
    the document byte for byte, as a fast reader does."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    expected = listing(server, kind)
    caplog.clear()  # a fast reader's body may be parked too, for a moment
    all_parked_then_exact(server, caplog, [slow_listing(server, kind) for _ in range(SLOW_READERS)], expected)


def test_a_parked_listing_keeps_its_connection_alive(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Once a parked document is out, the same connection answers the next request."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    expected = listing(server)
    caplog.clear()  # a fast reader's body may be parked too, for a moment
    sock, reader = slow_listing(server)
    with sock, reader:
        wait_for(lambda: parked(caplog) == 1, 30, what="the listing parked")
        assert read_response(reader) == expected
        sock.sendall(f"GET /big/first.txt HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        assert reader.readline().startswith(b"HTTP/1.1 200")
        while reader.readline() not in (b"\r\n", b""):
            pass
        assert reader.read(len(b"one payload")) == b"one payload"


def test_a_parked_listing_never_read_is_closed_and_its_request_ended(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A parked document whose reader takes nothing for ``SEND_IDLE`` is dropped: the connection is closed
    and the response iterable closed, which ends the request (it is counted in the metrics only then)."""
    monkeypatch.setattr(mountd.server, "CONNECTION_TIMEOUT", 1)
    monkeypatch.setattr(handoff, "SEND_IDLE", 1.0)
    monkeypatch.setattr(handoff, "PROGRESS_CHECK", 0.2)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        answered = handle.metrics.requests.labels(method="PROPFIND", status="207")
        sock, reader = slow_listing(handle)
        with sock, reader:
            wait_for(lambda: parked(caplog) == 1, 30, what="the listing parked")
            assert answered._value.get() == 0  # the request is not over while its body is parked
            wait_for(lambda: answered._value.get() == 1, 30, what="the parked listing dropped, request ended")
            started = time.monotonic()
            got = b""
            while chunk := reader.read1(1 << 20):  # what the kernel had taken, then the end of the stream
                got += chunk
                assert time.monotonic() - started < 30
            assert len(got) < len(listing(handle))


def test_past_the_parked_bodies_cap_a_worker_waits_as_before(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With room for one parked body, a second slow listing is waited on by its worker, and both readers
    still get the whole document."""
    monkeypatch.setattr(handoff, "MAX_PARKED_BODIES", 1)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        expected = listing(handle)
        caplog.clear()  # a fast reader's body may be parked too, for a moment
        first, second = slow_listing(handle), slow_listing(handle)
        try:
            wait_for(lambda: parked(caplog) == 1, 30, what="one listing parked")
            time.sleep(0.5)
            assert parked(caplog) == 1
            for _, reader in (first, second):
                assert read_response(reader) == expected
        finally:
            close_all([first, second])


def test_a_chunk_that_fails_on_the_loop_closes_its_connection_not_the_loop(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A parked body whose iterable yields something that is not bytes (an application breaking the
    contract) ends short and its connection is closed: a GET pipelined behind it is never answered on it
    (after a short body its answer would be read as the body's rest); the loop goes on serving."""
    made = fast_propfind._Document.chunks

    def chunks(document: Any) -> Iterator[Any]:
        for chunk in made(document):
            on_loop = threading.current_thread().name == "mountd-server"
            yield chunk.decode() if on_loop else chunk

    monkeypatch.setattr(fast_propfind._Document, "chunks", chunks)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        sock, reader = slow_listing(handle)
        with sock, reader:
            sock.sendall(f"GET /big/first.txt HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n\r\n".encode())
            wait_for(lambda: parked(caplog) == 1, 30, what="the listing parked")
            length = read_head(reader)
            stream = read_to_close(reader)
            assert 0 < len(stream) < length
            assert b"one payload" not in stream  # the GET's answer
        answered_meanwhile(handle)


#: Documents wsgidav renders itself, whole, before answering: a PROPFIND with a condition (which the fast
#: path passes on), and any PROPFIND of a writable store. Their request heads.
RENDERED = {
    "conditional": "Depth: 1\r\nIf-Unmodified-Since: Fri, 01 Jan 2100 00:00:00 GMT",
    "writable": "Depth: 1",
}


def rendered_server(kind: str, store: Path, hook: RecordingHook) -> Any:
    """A server whose PROPFIND of ``/big/`` with ``RENDERED[kind]`` wsgidav answers itself."""
    options: dict[str, Any] = {"writable": WritePolicy(store)} if kind == "writable" else {}
    return serve_background(Settings(host="127.0.0.1", port=0), store, hook, **options)


def rendered_request(handle: ServerHandle, kind: str) -> bytes:
    return (
        f"PROPFIND /big/ HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n{RENDERED[kind]}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def slow_rendered(handle: ServerHandle, kind: str) -> tuple[socket.socket, Any]:
    """``rendered_request`` from a client with a 16 KiB receive buffer that reads nothing yet."""
    return slow_reader(handle, rendered_request(handle, kind))


def rendered(handle: ServerHandle, kind: str) -> bytes:
    """The document of ``rendered_request``, read at once."""
    with (
        socket.create_connection((handle.host, handle.port), timeout=30) as sock,
        sock.makefile("rb") as reader,
    ):
        sock.sendall(rendered_request(handle, kind))
        return read_response(reader)


@pytest.mark.parametrize("kind", RENDERED)
def test_slow_readers_of_documents_wsgidav_renders_hold_no_thread(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """A multistatus document wsgidav made whole (``sendfile.mark_complete_body``) is parked for a reader
    slower than the socket, like a listing of the fast path: with two server threads, three readers that
    read nothing hold none of them, a GET is answered meanwhile, and each reader then gets the document byte
    for byte. (Without the mark, the GET waits for a thread: the test fails.)"""
    monkeypatch.setattr(mountd.server, "SERVER_THREADS", 2)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with rendered_server(kind, store, hook) as handle:
        expected = rendered(handle, kind)
        assert len(expected) > 6 * 1024 * 1024
        assert b"multistatus" in expected
        caplog.clear()
        all_parked_then_exact(handle, caplog, [slow_rendered(handle, kind) for _ in range(3)], expected)


def test_documents_held_in_memory_are_parked_within_their_byte_budget(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Parked documents that hold their bytes count against ``MAX_PARKED_HELD_BYTES``: with room for one
    (and none for spilling), a second slow reader is waited on by its worker (and still gets the whole
    document); a listing of the fast path, made from shared parts, holds nothing of its own and is parked
    all the same. Once the first document is out, its bytes are given back: a third is parked again."""
    monkeypatch.setattr(handoff, "MAX_SPILLED_BYTES", 0)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with rendered_server("conditional", store, hook) as handle:
        expected = rendered(handle, "conditional")
        monkeypatch.setattr(handoff, "MAX_PARKED_HELD_BYTES", len(expected) * 3 // 2)  # one, not two
        caplog.clear()
        first, second = slow_rendered(handle, "conditional"), slow_rendered(handle, "conditional")
        fast = slow_listing(handle)
        try:
            wait_for(lambda: parked(caplog) == 2, 60, what="one document and the listing parked")
            time.sleep(0.5)
            assert parked(caplog) == 2
            for _, reader in (first, second):
                assert read_response(reader) == expected
            assert read_response(fast[1]) == listing(handle)
            caplog.clear()
            third = slow_rendered(handle, "conditional")
            with third[0], third[1]:
                wait_for(lambda: parked(caplog) == 1, 60, what="the budget given back")
                assert read_response(third[1]) == expected
        finally:
            close_all([first, second, fast])


def spilled(caplog: pytest.LogCaptureFixture) -> int:
    return sum("response body spilled" in r.getMessage() for r in caplog.records)


def waited(caplog: pytest.LogCaptureFixture) -> int:
    return sum("response body waited on" in r.getMessage() for r in caplog.records)


def spill_files(besides: frozenset[str] = frozenset()) -> set[str]:
    """This process's open temporary files (``handoff.spill_file``: no name, or a deleted one), but for
    ``besides`` (pytest's own capture files are such files too)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tempfile.gettempdir() + "/") and target.endswith("(deleted)"):
                found.add(target)
    return found - besides


def test_documents_past_the_memory_budget_are_spilled_to_files_within_their_own_budget(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A document held whole that does not fit ``MAX_PARKED_HELD_BYTES`` is written to a temporary file and
    sent from it by the loop (``handoff.spill``), counted against ``MAX_SPILLED_BYTES``. With no memory
    budget and two server threads: a first slow reader is spilled (one temporary file); with the spill
    budget then full, a second is waited on by its worker, and a GET is still answered by the other thread.
    Both get the document byte for byte; once the spilled one is out its bytes are given back and its file
    is closed."""
    monkeypatch.setattr(mountd.server, "SERVER_THREADS", 2)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    before = frozenset(spill_files())
    with rendered_server("conditional", store, hook) as handle:
        expected = rendered(handle, "conditional")
        connections = handle._server._connections
        monkeypatch.setattr(handoff, "MAX_PARKED_HELD_BYTES", 0)
        caplog.clear()
        first = slow_rendered(handle, "conditional")
        with first[0], first[1]:
            wait_for(lambda: spilled(caplog) == 1, 60, what="the first document spilled")
            assert len(spill_files(before)) == 1
            assert 0 < connections._spilled < len(expected)  # the rest the socket did not take
            monkeypatch.setattr(handoff, "MAX_SPILLED_BYTES", connections._spilled)
            second = slow_rendered(handle, "conditional")
            with second[0], second[1]:
                wait_for(lambda: waited(caplog) == 1, 60, what="the second document waited on")
                assert spilled(caplog) == 1
                answered_meanwhile(handle)
                assert read_response(first[1]) == expected
                assert read_response(second[1]) == expected
        wait_for(lambda: connections._spilled == 0, 30, what="the spilled bytes given back")
        wait_for(lambda: not spill_files(before), 30, what="the spilled file closed")
        assert parked(caplog) == 0


def test_a_spill_file_is_made_only_on_disk_and_with_room_for_the_document(tmp_path: Path) -> None:
    """``handoff.spill_file``: a nameless file with the document's bytes allocated; refused (OSError, before
    anything is written) on a memory file system such as a tmpfs, and when the bytes cannot be allocated."""
    fd = handoff.spill_file(4096, str(tmp_path))
    try:
        assert os.fstat(fd).st_size == 4096
        assert os.listdir(tmp_path) == []
    finally:
        os.close(fd)
    with pytest.raises(OSError, match=r"too large|No space"):
        handoff.spill_file(1 << 62, str(tmp_path))
    shm = "/dev/shm"  # noqa: S108  (only asked whether a file may be made there)
    if handoff.file_system_type(shm) == "tmpfs":
        with pytest.raises(OSError, match="tmpfs"):
            handoff.spill_file(4096, shm)
    assert os.listdir(tmp_path) == []


def test_a_document_that_cannot_be_spilled_is_sent_by_its_worker_whole(
    big_folder: Path,
    store: Path,
    hook: RecordingHook,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the memory budget, with the temporary directory on a file system counted as memory
    (``MEMORY_FILE_SYSTEMS``), nothing is spilled and nothing taken: the worker sends the document itself,
    byte for byte."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with rendered_server("conditional", store, hook) as handle:
        expected = rendered(handle, "conditional")
        monkeypatch.setattr(handoff, "MAX_PARKED_HELD_BYTES", 0)
        kind = handoff.file_system_type(tempfile.gettempdir())
        monkeypatch.setattr(handoff, "MEMORY_FILE_SYSTEMS", frozenset({kind}))
        caplog.clear()
        sock, reader = slow_rendered(handle, "conditional")
        with sock, reader:
            wait_for(lambda: waited(caplog) == 1, 60, what="the document waited on")
            assert read_response(reader) == expected
        assert spilled(caplog) == 0
        assert parked(caplog) == 0
