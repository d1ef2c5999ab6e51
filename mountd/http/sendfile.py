"""Payload bodies sent by the kernel: a cheroot gateway that hands a payload span to ``os.sendfile``.

Why: wsgidav streams a file by looping ``read(block_size)`` and yielding each block through its
middleware; cheroot then pushes every block through a pure-Python buffered writer that copies it twice
before ``send`` (measured on this kind of machine: ~2,100 MB/s at 1 MiB blocks, where ``os.sendfile`` on
loopback reaches ~5 GB/s). Neither honours ``wsgi.file_wrapper``, and wsgidav's body is a generator, so the
reader cannot be recognised from the response iterable. Instead the resource *offers* its payload reader in
the request's environ (``offer_payload``, called by ``ArchiveResource.get_content``) and ``PayloadGateway``,
the gateway cheroot runs the application with, takes over after the application's first body block: it
writes that block as cheroot would, checks that the rest of the body is exactly the next bytes of the
offered reader, sends them straight from the reader's file descriptor, and closes the response iterable
(wsgidav then closes the reader, the request scope the snapshot).

Invariants:
    * The direct path is taken only when the response proves the body is one contiguous span of the
      offered reader: status 200 with ``Content-Length`` equal to the payload size and the reader having
      read exactly the first block from offset 0, or status 206 whose ``Content-Range`` starts where the
      reader's first block started and whose length is ``Content-Length``; never with a chunked or encoded
      body or a ``multipart/*`` one (several ranges are assembled by a middleware, block by block). Any
      other response is written block by block as cheroot writes it.
    * Bytes come from the reader's own file descriptor at its own offsets: it holds the inode it was opened
      on, so a swap during the transfer never mixes old and new bytes, and nothing past the payload's end is
      ever sent.
    * ``os.sendfile`` only on a plain TCP or Unix socket; on TLS (an ``ssl.SSLSocket``) or anything that is
      not a socket the rest is copied in ``COPY_BLOCK`` blocks through ``sendall`` (or cheroot's writer), so
      the kernel never sends plaintext past a TLS layer. ``sendfile=False`` forces the copy path.
    * To a loopback reader (127.0.0.0/8, ``::1``) a plain socket's span is copied instead (``pread`` into
      one buffer, a non-blocking ``send``; ``copy_to_loopback``), with the same waits, stall and parking as
      ``os.sendfile``: on loopback nothing is zero-copy (the reader copies out of the sender's pages
      anyway), and on this kernel the copy is the cheaper and faster path (measured with
      ``bench/ab_sendfile.py --pin``: 1.4x the MB/s at 0.68x the server's CPU per GB). Other peers keep
      ``os.sendfile``, whose pages go to the network card without a copy.
    * A client that goes away mid-body surfaces as the ``OSError`` cheroot already ignores for that case
      (EPIPE, ECONNRESET, "timed out"): no traceback, the connection is closed, and the response iterable is
      closed all the same, releasing the reader's and the snapshot's file descriptors.
    * A payload that ends early (the file was truncated under us, which we never do) sends what there is,
      logs it once and closes the connection, so the client sees a short body instead of a hang.
    * Bytes sent outside the iterable are recorded in the environ (``direct_bytes``), for anything that
      counts response bytes from what the iterable yields: the bytes this thread sent. The bytes of a parked
      send leave after the request returned: a counter that wants them puts a callable under
      ``LATE_BYTES_KEY``, told once, from the loop, how many were sent (fewer when the reader went away).
    * On the sendfile path, once the reader's socket buffer is full (after ``handoff.PARK_AFTER`` seconds
      without room, 0 by default) the rest of the body is parked (``GuardedConnection.park_send``): the
      connection loop sends it from a duplicate of the reader's descriptor, at the same offsets, and this
      thread returns (``mountd.http.handoff``).
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Iterator
from typing import Any, ClassVar

from cheroot import wsgi

from mountd.http import handoff
from sync_format import PayloadReader

log = logging.getLogger(__name__)

#: Environ key of the payload reader a resource offers as its response body.
PAYLOAD_KEY = "sync.sendfile.payload"
#: Environ key of the number of body bytes this gateway sent outside the response iterable.
DIRECT_BYTES_KEY = "sync.sendfile.direct_bytes"
#: Environ key an application sets (to True) when its response iterable, with every wrapper around it, makes
#: each chunk without I/O, without waiting and without thread-bound state (a listing's document joined from
#: cached parts, ``mountd.http.fast_propfind``), and declares a ``Content-Length``: once its reader's socket
#: buffer is full, the rest of such a body is parked (``GuardedConnection.park_body``) and its chunks are
#: made on the connection loop's thread.
BODY_PARKABLE_KEY = "sync.body.parkable"
#: Environ key set beside ``BODY_PARKABLE_KEY`` when the body is a document held whole in memory by its
#: response (``mark_complete_body``): its size in bytes. Parked, it keeps those bytes until its reader took
#: them, so they count against ``handoff.MAX_PARKED_HELD_BYTES``.
BODY_HELD_KEY = "sync.body.held"
#: Environ key of a callable (``int`` → None) a byte counter may set: told the bytes of a parked send, once
#: it ended, from the connection loop (they are not in ``DIRECT_BYTES_KEY``).
LATE_BYTES_KEY = "sync.sendfile.late_bytes"
#: Bytes per read and ``sendall`` on the copy path (TLS, non-sockets, ``sendfile=False``): the block size
#: the measurements found fastest for Python-level copies.
COPY_BLOCK = 1024 * 1024
#: Bytes per ``pread`` and ``send`` when a span to a loopback reader is copied (``copy_to_loopback``).
LOOPBACK_BLOCK = 1024 * 1024
#: Largest count asked of one ``os.sendfile`` call (Linux moves at most 0x7ffff000 bytes per call anyway;
#: a non-blocking socket takes what fits in its buffer and the loop asks again).
SENDFILE_MAX = 1 << 30
#: Statuses whose body may be a payload span.
SPAN_STATUSES = (200, 206)


def offer_payload(environ: dict[str, Any], reader: PayloadReader) -> PayloadReader:
    """Offer ``reader`` as the source of this request's response body; return it unchanged.

    The gateway uses it only when the response it sees proves the body is a span of this reader (see the
    module's invariants); offering a reader that ends up unused, or read differently, is harmless.

    Args:
        environ: The request's WSGI environ.
        reader: The payload reader the response body is read from.

    Returns:
        ``reader``.
    """
    environ[PAYLOAD_KEY] = reader
    return reader


def mark_complete_body(environ: dict[str, Any], response: object) -> None:
    """Let a response whose body is already made whole, in memory, be parked for a slow reader.

    wsgidav renders its own multistatus answers (a PROPFIND that ``mountd.http.fast_propfind`` passes on: a
    writable folder, one with conditions or locks; PROPPATCH, LOCK) and its status bodies completely
    before answering, as a list of bytes: sending them costs no I/O and no wait, so once the reader's
    socket buffer is full the connection loop may send the rest (``BODY_PARKABLE_KEY``) instead of a worker
    thread waiting on the reader. Anything else (a generator, a file's iterator) is left alone.

    Args:
        environ: The request's environ.
        response: What the application returned for it.
    """
    if type(response) is list and all(type(chunk) is bytes for chunk in response):
        environ[BODY_PARKABLE_KEY] = True
        environ[BODY_HELD_KEY] = sum(map(len, response))


def direct_bytes(environ: dict[str, Any]) -> int:
    """Body bytes of this request's response sent by the gateway outside the WSGI iterable.

    The full body is what the iterable yielded plus this; it is final once the iterable is closed.

    Args:
        environ: The request's WSGI environ.

    Returns:
        The byte count; 0 when the whole body went through the iterable.
    """
    sent = environ.get(DIRECT_BYTES_KEY, 0)
    return sent if isinstance(sent, int) else 0


class PayloadGateway(wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway, sending payload spans with ``os.sendfile`` (see the module docstring).

    cheroot instantiates the gateway per request with the request only, so the choice of path is a class
    attribute; ``gateway_class`` picks the class.
    """

    #: Whether plain sockets get ``os.sendfile``; False copies in ``COPY_BLOCK`` blocks instead.
    use_sendfile: ClassVar[bool] = True
    #: Whether a plain socket to a loopback reader gets its span copied (``LOOPBACK_BLOCK`` at a time, with
    #: the waits and parking of ``os.sendfile``) instead of ``os.sendfile`` (see the module's invariants).
    copy_to_loopback: ClassVar[bool] = True

    def respond(self) -> None:
        """Run the application and send its response, taking payload spans off the iterable."""
        response = self.req.server.wsgi_app(self.env, self.start_response)
        parked = False
        try:
            first = True
            chunks = iter(response)
            for chunk in chunks:
                if not chunk:
                    continue
                if not isinstance(chunk, bytes):
                    raise TypeError("WSGI applications must yield bytes")
                if first and self._may_park_body():
                    parked = self._send_body(chunk, chunks, response)
                    break
                self.write(chunk)
                if first:
                    first = False
                    if self._send_payload_rest(len(chunk)):
                        break
        finally:
            self.req.ensure_headers_sent()
            close = getattr(response, "close", None)
            if close is not None and not parked:  # a parked body's entry closes it once the body is out
                close()

    def _may_park_body(self) -> bool:
        """Whether this response's body may be parked (``BODY_PARKABLE_KEY``) on this connection."""
        return (
            self.env.get(BODY_PARKABLE_KEY) is True
            and self.use_sendfile  # the plain-socket configuration (``sendfile=False`` forces waiting)
            and not self.req.chunked_write
            and self.remaining_bytes_out is not None
            and type(self.req.conn.socket) is socket.socket
            and hasattr(self.req.conn, "park_body")
            and hasattr(self.req, "take_head")
        )

    def _send_body(self, chunk: bytes, chunks: Iterator[bytes], response: Any) -> bool:
        """Send a parkable body from ``chunk`` on, each chunk without waiting; once the socket is full, park
        the rest (True) or, without room for it, wait as cheroot does for the rest of the body."""
        fd = self.req.conn.socket.fileno()
        head = self.req.take_head()
        held = self.env.get(BODY_HELD_KEY)
        if type(held) is int:
            # Not joined to a document held whole (a copy of it, for one system call): sent before it.
            self.req.conn.wfile.write(head)
            head = b""
        else:
            held = None
        waiting = False
        while True:
            due = self.remaining_bytes_out or 0
            if waiting or len(chunk) > due:
                if head:
                    self.req.conn.wfile.write(head)
                    head = b""
                self.write(chunk)  # cheroot's checks, waits and errors (a body past its declared length)
            else:
                pending = memoryview(head + chunk if head else chunk)
                head = b""
                self.remaining_bytes_out = due - len(chunk)
                while pending:
                    try:
                        pending = pending[os.write(fd, pending) :]  # the socket's timeout would wait
                    except BlockingIOError:
                        remaining = self.remaining_bytes_out
                        # A document held whole is not copied: parked, it keeps its bytes (``held``).
                        rest = bytes(pending) if held is None else pending
                        if self.req.conn.park_body(rest, remaining, chunks, response, held or 0):
                            log.debug("response body parked path=%s", self.env.get("PATH_INFO"))
                            return True
                        # Past the budget of documents held in memory: from a temporary file.
                        if held is not None and self.req.conn.park_spilled(rest, remaining, chunks):
                            log.debug("response body spilled path=%s", self.env.get("PATH_INFO"))
                            return False  # all of it was taken: the response is closed by the caller
                        log.debug(
                            "response body waited on path=%s (no room to park it)", self.env.get("PATH_INFO")
                        )
                        waiting = True
                        self.req.conn.wfile.write(rest)
                        break
            chunk = next((piece for piece in chunks if piece), b"")
            if not chunk:
                return False
            if not isinstance(chunk, bytes):
                raise TypeError("WSGI applications must yield bytes")

    def _send_payload_rest(self, written: int) -> bool:
        """Send the rest of the body from the offered reader when it is a span of it; True when done."""
        reader = self.env.get(PAYLOAD_KEY)
        length = self.remaining_bytes_out  # cheroot keeps the declared Content-Length here
        if not isinstance(reader, PayloadReader) or reader.closed or self.req.chunked_write:
            return False
        if length is None or length <= written or not self._is_span(reader, written, length):
            return False
        position = reader.tell()
        count = length - written
        sock = self.req.conn.socket
        # Exactly socket.socket: an ssl.SSLSocket is a subclass whose fd carries TLS records.
        via_sendfile = self.use_sendfile and type(sock) is socket.socket
        copy = via_sendfile and self.copy_to_loopback and _is_loopback(sock)
        log.debug(
            "payload span sending path=%s via=%s position=%d bytes=%d",
            self.env.get("PATH_INFO"),
            ("loopback" if copy else "sendfile") if via_sendfile else "copy",
            position,
            count,
        )
        if via_sendfile:
            fd, offset, _ = reader.span
            start = offset + position
            park = getattr(self.req.conn, "park_send", None)  # mountd's connections have it
            try:
                sent = _send_span(
                    sock,
                    fd,
                    start,
                    count,
                    stall_after=None if park is None else handoff.PARK_AFTER,
                    copy=copy,
                )
            except _Stalled as stalled:
                sent = stalled.sent
                # A slow reader: the rest leaves from the connection loop, this thread goes back to work.
                late = self.env.get(LATE_BYTES_KEY)
                if park is not None and park(fd, start + sent, count - sent, late, copy=copy):
                    log.debug("payload span parked path=%s sent=%d", self.env.get("PATH_INFO"), sent)
                    reader.seek(position + count)
                    self.env[DIRECT_BYTES_KEY] = sent  # the rest is told to LATE_BYTES_KEY as it leaves
                    return True
                sent += _send_span(sock, fd, start + sent, count - sent, copy=copy)
        else:
            sent = self._copy(reader, count, sock)
        reader.seek(position + sent)  # os.sendfile does not move the reader; the copy already did
        self.env[DIRECT_BYTES_KEY] = sent
        if sent < count:
            log.warning(
                "payload ended early path=%s sent=%d expected=%d", self.env.get("PATH_INFO"), sent, count
            )
            self.req.close_connection = True
        return True

    def _is_span(self, reader: PayloadReader, written: int, length: int) -> bool:
        """Whether the body is ``length`` bytes of ``reader`` whose first ``written`` were just read."""
        status = int(self.req.status[:3])
        headers = {key.lower(): value for key, value in self.req.outheaders}
        if status not in SPAN_STATUSES or b"content-encoding" in headers:
            return False
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            return False
        start = reader.tell() - written
        if status == 200:
            return start == 0 and length == reader.size
        first, last, total = _content_range(headers.get(b"content-range", b""))
        return first == start and last - first + 1 == length and total == reader.size

    def _copy(self, reader: PayloadReader, count: int, sock: object) -> int:
        """The copy path: ``COPY_BLOCK`` reads into one buffer, each sent with ``sendall`` when possible."""
        buffer = bytearray(min(COPY_BLOCK, count))
        view = memoryview(buffer)
        sent = 0
        while sent < count:
            got = reader.readinto(view[: min(len(buffer), count - sent)])
            if got == 0:
                break
            if isinstance(sock, socket.socket):
                sock.sendall(view[:got])
            else:
                self.req.write(bytes(view[:got]))
            sent += got
        return sent


class CopyingPayloadGateway(PayloadGateway):
    """``PayloadGateway`` that never uses ``os.sendfile`` (the TLS path, forced)."""

    use_sendfile: ClassVar[bool] = False


def gateway_class(*, sendfile: bool = True) -> type[PayloadGateway]:
    """The gateway for ``cheroot.wsgi.Server.gateway``.

    Args:
        sendfile: Use ``os.sendfile`` for payload spans on plain sockets; False copies them in blocks.

    Returns:
        ``PayloadGateway`` or ``CopyingPayloadGateway``.
    """
    return PayloadGateway if sendfile else CopyingPayloadGateway


def _content_range(value: bytes) -> tuple[int, int, int]:
    """``(first, last, total)`` of ``bytes first-last/total``; ``(-1, -1, -1)`` when it is not that."""
    unit, _, spec = value.partition(b" ")
    span, _, total = spec.partition(b"/")
    first, _, last = span.partition(b"-")
    if unit.strip().lower() != b"bytes":
        return -1, -1, -1
    try:
        return int(first), int(last), int(total)
    except ValueError:
        return -1, -1, -1


class _Stalled(Exception):
    """The reader made no room for ``stall_after`` seconds; ``sent`` bytes were sent before."""

    def __init__(self, sent: int) -> None:
        super().__init__(sent)
        self.sent = sent


def _is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock``'s peer is a loopback address (``loopback_address``); False without a peer."""
    try:
        host = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        return False
    return loopback_address(sock.family, host)


def loopback_address(family: int, host: str) -> bool:
    """Whether ``host`` (as ``getpeername`` gives it for ``family``) is 127.0.0.0/8, ``::1`` or an
    IPv4-mapped 127.0.0.0/8 address; any other family is not loopback.

    Args:
        family: The socket's address family.
        host: The peer's address text.

    Returns:
        True for a loopback address.
    """
    if family == socket.AF_INET:
        return host.startswith("127.")
    if family == socket.AF_INET6:
        return host == "::1" or host.lower().startswith("::ffff:127.")
    return False


def _send_span(
    sock: socket.socket,
    fd: int,
    offset: int,
    count: int,
    *,
    stall_after: float | None = None,
    copy: bool = False,
) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset``; return the bytes sent (fewer only at end of file).

    cheroot's sockets have a timeout and so are non-blocking underneath: when the send buffer is full the
    loop waits for it with ``poll`` for at most that timeout, as ``socket.sendall`` would. Bytes go by
    ``os.sendfile``, or with ``copy`` read ``LOOPBACK_BLOCK`` at a time into one buffer and written; either
    way the returned count (and ``_Stalled.sent``) is what the socket took.

    Args:
        sock: The client's socket.
        fd: The file.
        offset: Where in ``fd`` to start.
        count: How many bytes.
        stall_after: When set, a wait for room longer than this (seconds, shorter than the timeout) raises
            ``_Stalled`` instead of going on waiting.
        copy: Copy through a buffer instead of ``os.sendfile``.

    Raises:
        _Stalled: As said for ``stall_after``.
        TimeoutError: The client read nothing for the socket's timeout.
        OSError: The connection broke (EPIPE, ECONNRESET).
    """
    sock_fd = sock.fileno()
    timeout = sock.gettimeout()
    wait_ms = None if timeout is None else int(timeout * 1000)
    if stall_after is not None and (wait_ms is None or stall_after * 1000 < wait_ms):
        wait_ms = int(stall_after * 1000)
    else:
        stall_after = None
    poller: select.poll | None = None
    queued = 0
    sent = 0
    buffer = memoryview(bytearray(min(LOOPBACK_BLOCK, count))) if copy else None
    pending = memoryview(b"")  # read from the file, not yet taken by the socket (copy only)
    while sent < count:
        try:
            if buffer is None:
                n = os.sendfile(sock_fd, fd, offset + sent, min(count - sent, SENDFILE_MAX))
            else:
                if not pending:
                    pending = buffer[: os.preadv(fd, [buffer[: count - sent]], offset + sent)]
                n = os.write(sock_fd, pending) if pending else 0
                pending = pending[n:]
        except BlockingIOError:
            if wait_ms == 0 and stall_after is not None:
                raise _Stalled(sent) from None  # hand over at once: no poller, no look at the queue
            if poller is None:
                poller = select.poll()
                poller.register(sock_fd, select.POLLOUT)
            if stall_after is None:
                # The baseline of the progress check below, taken at each wait: a send since the last one
                # may have grown the queue (the kernel grows the send buffer as the window grows).
                queued = handoff.unacknowledged(sock_fd)
            if not poller.poll(wait_ms):
                if stall_after is not None:
                    raise _Stalled(sent) from None
                # No room for a whole timeout, but a reader that acknowledged bytes meanwhile is reading
                # (slowly, through large buffers: see ``handoff.ParkedSend.last_used``): wait on.
                if handoff.unacknowledged(sock_fd) < queued:
                    continue
                raise TimeoutError("timed out") from None  # cheroot ignores exactly this text
            continue
        if n == 0:
            break
        sent += n
    return sent
