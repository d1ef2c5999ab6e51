"""``GuardedRequest`` sends the response head with a small first body block in one write, and never loses or
reorders it: a response without body bytes (HEAD, 204) still sends its head once, a large block follows
its head in a second write, and a chunked body's framing comes after the head."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mountd.http.connection_guard import COALESCE_MAX, GuardedRequest


class _Writes:
    """A connection's ``wfile`` that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)


def _request(headers: list[tuple[bytes, bytes]], *, method: bytes = b"GET") -> tuple[GuardedRequest, _Writes]:
    server: Any = SimpleNamespace(
        ssl_adapter=None,
        can_add_keepalive_connection=True,
        timeout=10,
        server_name="sync-mountd",
        protocol="HTTP/1.1",
    )
    wfile = _Writes()
    conn: Any = SimpleNamespace(wfile=wfile)
    req = GuardedRequest(server, conn)
    req.response_protocol = "HTTP/1.1"
    req.method = method
    req.rfile = SimpleNamespace(remaining=0)
    req.status = b"200 OK"
    req.outheaders = list(headers)
    return req, wfile


def _respond(req: GuardedRequest, chunks: list[bytes]) -> None:
    # What cheroot's gateway does: each chunk through ensure_headers_sent + write, then the closing calls.
    for chunk in chunks:
        req.ensure_headers_sent()
        req.write(chunk)
    req.ensure_headers_sent()  # the gateway's finally
    req.ensure_headers_sent()  # HTTPRequest.respond
    if req.chunked_write:
        req.conn.wfile.write(b"0\r\n\r\n")


def test_a_small_body_leaves_with_its_head_in_one_write() -> None:
    """Head and a 4 KiB body: one write, the head first, the body after the blank line."""
    body = b"x" * 4096
    req, wfile = _request([(b"Content-Length", b"4096")])
    _respond(req, [body])
    assert len(wfile.writes) == 1
    head, _, rest = wfile.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n")
    assert rest == body


@pytest.mark.parametrize("method", [b"HEAD", b"GET"])
def test_a_response_without_body_bytes_sends_its_head_once(method: bytes) -> None:
    """No body block (HEAD, or an empty body): the head is sent by the closing calls, exactly once."""
    req, wfile = _request([(b"Content-Length", b"0")], method=method)
    _respond(req, [])
    assert len(wfile.writes) == 1
    assert wfile.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wfile.writes[0].endswith(b"\r\n\r\n")


def test_a_large_block_follows_its_head_in_a_second_write() -> None:
    """A block over ``COALESCE_MAX`` is not copied to be joined: the head, then the block."""
    body = b"y" * (COALESCE_MAX + 1)
    req, wfile = _request([(b"Content-Length", str(len(body)).encode())])
    _respond(req, [body])
    assert len(wfile.writes) == 2
    assert wfile.writes[0].endswith(b"\r\n\r\n")
    assert wfile.writes[1] == body


def test_a_chunked_body_is_framed_after_its_head() -> None:
    """Without Content-Length (chunked): head, then each framed chunk, then the last chunk, in order."""
    req, wfile = _request([])
    _respond(req, [b"abc", b"de"])
    data = b"".join(wfile.writes)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert rest == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
