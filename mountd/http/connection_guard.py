"""Bounded, fair request heads: a cheroot server that caps header size and count and parks slow clients.

Why: cheroot (mountd's engine) hands every accepted connection to one of its ``SERVER_THREADS`` worker
threads at once, and the worker then blocks reading the request head with only a per-``recv`` timeout and
no size limit (cheroot's ``max_request_header_size`` defaults to unlimited). A client dripping one header
byte every few seconds therefore holds a thread for ever, 16 of them stop the server, and one client
sending hundreds of MiB of headers makes the process keep them all in memory.

``GuardedServer`` changes two things, both before wsgidav (and so before authentication) sees a request:

* **Limits on the head** (``GuardedRequest``): the request line and headers together may be at most
  ``max_header_bytes`` bytes and carry at most ``max_header_fields`` header lines; past either the answer is
  ``431 Request Header Fields Too Large`` and the connection is closed. Reading stops at the limit, so memory
  per request is bounded by it.
* **Heads are read before a thread is given** (``GuardedConnections``): the connection manager dispatches a
  connection to a worker only once a complete head (up to the blank line) is waiting in the kernel's buffer,
  checked with ``MSG_PEEK``, or once more than ``max_header_bytes`` are waiting (the worker then answers 431).
  A connection with part of a head is parked in the manager's selector loop, not in a thread, and is closed
  when its head is not complete ``header_timeout`` seconds after its first byte arrived (the total deadline).
  Idle connections (no byte yet, or keep-alive between requests) wait in the selector as cheroot's own do
  and are closed after the server's ``timeout``.

Invariants:
    * A worker thread never waits for a request head of a plain TCP connection: slow or idle clients cost a
      file descriptor and a few bytes of bookkeeping, never a thread.
    * Memory per connection before dispatch is what the kernel buffers; after dispatch at most
      ``max_header_bytes`` of head are read.
    * TLS connections (not a plain socket: the kernel's bytes are records) are dispatched as cheroot does.
    * A request body must keep arriving at ``MIN_BODY_RATE`` bytes per second on average once
      ``header_timeout`` seconds have passed since the body began (``_MinimumRate``); a client dripping a
      body is cut off (the connection closed) instead of holding its thread for as long as it likes. So a
      worker thread waits for a slow client at most about ``header_timeout`` plus one read timeout.
    * At most ``max_body_threads`` worker threads (half of them by default) are given requests whose body
      has not arrived whole; the others wait in the selector loop, not in a thread, for one of those to end
      (``BODY_QUEUE_TIMEOUT`` at most). A body that stalls can hold its thread for a read timeout or two
      (above), so stalled uploads are bounded to half the threads: reads are always answered. (Before, 16
      uploads announcing a body and sending none held every thread: the server answered nothing for 10 s
      at a time.) A request whose whole body is already waiting in the kernel needs no such thread.
    * A worker thread does not wait on a client after its response either: a connection it closes lingers,
      and the rest of a payload body for a reader that makes no room is sent, from the selector loop
      (``mountd.http.handoff``).
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

from cheroot import connections, errors, server, wsgi

from mountd.http import handoff

log = logging.getLogger(__name__)

#: Default largest request head (request line and headers) in bytes.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: Default largest number of header lines in one request.
DEFAULT_MAX_HEADER_FIELDS = 100
#: Default seconds a client may take from the first byte of a request head to its blank line.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds between two looks at parked connections (also the selector's wait while some are parked): the
#: most a head that arrives in several packets waits for its thread beyond its last packet.
PARKED_RECHECK = 0.02
_HEAD_END = b"\r\n\r\n"
#: Seconds between two looks at the handed-over connections' deadlines and progress.
HANDED_CHECK = 0.2
#: Largest first body block written together with the response head (bytes): a small response (a 4 KiB
#: GET) leaves in one send instead of two; a larger block is written after the head rather than copied.
COALESCE_MAX = 64 * 1024
#: Least average rate of a request body, in bytes per second, once the grace period (``header_timeout``)
#: is over: far below any real client's upload, far above a drip.
MIN_BODY_RATE = 1024
#: Seconds a request with a complete head may wait for a body thread (``max_body_threads``) before its
#: connection is closed.
BODY_QUEUE_TIMEOUT = 120.0
#: Most connections of one client address waiting for a body thread; more get 503 at once.
MAX_QUEUED_PER_ADDRESS = 16
#: What a connection that gets no body thread is told before it is closed.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
#: A request head's declared body: its Content-Length, or Transfer-Encoding (chunked: length unknown).
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,20})[ \t]*(?=\r\n|$)")
_TRANSFER_ENCODING = b"\r\ntransfer-encoding"
_DIGITS = re.compile(rb"[0-9]{1,19}")


class HeaderFieldsExceeded(errors.MaxSizeExceeded):
    """More header lines than ``max_header_fields``."""


class _LineCounter:
    """A file wrapper that allows ``limit`` lines to be read, then raises ``HeaderFieldsExceeded``; it also
    notes the lines that frame the body (``Content-Length``, ``Transfer-Encoding``), which cheroot merges
    (the last Content-Length wins)."""

    def __init__(self, rfile: Any, limit: int) -> None:
        self.rfile = rfile
        self.limit = limit
        self.lines = 0
        self.lengths: set[bytes] = set()
        self.transfer_encoding = False
        self.folded = False

    def framing_conflict(self) -> str | None:
        """Why the head's body framing is ambiguous, or None (RFC 9112 §6.3: a request smuggling vector).

        Also refused: a Content-Length that is not plain digits (cheroot's ``int`` takes ``+5``, ``1_0``
        and any number of leading zeros) and a header line folded onto the next (obs-fold, RFC 9112 §5.2),
        with which a value could be read one way here and another by cheroot.
        """
        if self.folded:
            return "a header line continues onto the next (obs-fold)"
        if any(not _DIGITS.fullmatch(value) for value in self.lengths):
            return "Content-Length is not a number"
        if len(self.lengths) > 1:
            return "Content-Length headers disagree"
        if self.lengths and self.transfer_encoding:
            return "both Content-Length and Transfer-Encoding"
        return None

    def readline(self, size: Any = None) -> bytes:
        line = self._readline(size)
        if line[:1] in (b" ", b"\t"):
            self.folded = True
        name, colon, value = line.partition(b":")
        if colon:
            key = name.strip().lower()
            if key == b"content-length":
                self.lengths.add(value.strip())
            elif key == b"transfer-encoding":
                self.transfer_encoding = True
        return line

    def _readline(self, size: Any = None) -> bytes:
        self.lines += 1
        if self.lines > self.limit:
            raise HeaderFieldsExceeded
        line: bytes = self.rfile.readline(size)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rfile, name)


#: The entries the connection loop finishes for a worker (``mountd.http.handoff``).
HANDED_TYPES = frozenset({handoff.Lingering, handoff.ParkedSend, handoff.ParkedBody})


class _HeadCapture:
    """Takes the response head cheroot's ``send_headers`` writes, instead of the socket."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


class GuardedRequest(server.HTTPRequest):
    """cheroot's request with the head limits of the module docstring (431 past them), whose response head
    leaves with the first body block when that is small (one send, one packet, for a small GET).

    The head is built by cheroot's own ``send_headers`` and held until the first ``write`` or, for a
    response without body bytes, the end of the response (cheroot calls ``ensure_headers_sent`` again
    there, before a chunked body's last chunk): it is always sent before any body byte, by whichever
    comes first.
    """

    _held_head: bytes = b""

    def send_headers(self) -> None:
        """cheroot's head, held back (see the class docstring).

        After a body read that failed (timed out, too slow, reset), or a refusal sent before the body was
        read, the connection is closed: cheroot would otherwise read the rest of the body from that socket
        to keep it alive, and that read raised (``cannot read from timed out object``) or timed out, so the
        client never got the answer.
        """
        rfile = getattr(self.conn, "rfile", None)
        if isinstance(rfile, _MinimumRate) and rfile.failed:
            self.close_connection = True
        elif getattr(self.rfile, "remaining", 0) and _refusal(self.status):
            # A request refused before its body was read: cheroot would read the rest of the body here, in
            # this thread, to keep the connection; from a client that stalls, until its read timed out,
            # and then it dropped the answer. The connection is closed instead (lingering, in the loop).
            self.close_connection = True
        wfile = self.conn.wfile
        capture = _HeadCapture()
        self.conn.wfile = capture
        try:
            super().send_headers()
        finally:
            self.conn.wfile = wfile
        self._held_head = capture.data

    def ensure_headers_sent(self) -> None:
        """Build the head the first time (held); send what is held on any later call."""
        if not self.sent_headers:
            super().ensure_headers_sent()
            return
        self._flush_head()

    def write(self, chunk: bytes) -> None:
        """Write body bytes; the held head goes first, in the same send when the block is small."""
        head = self._held_head
        if head:
            self._held_head = b""
            if not self.chunked_write and len(chunk) <= COALESCE_MAX:
                self.conn.wfile.write(head + chunk)
                return
            self.conn.wfile.write(head)
        super().write(chunk)

    def take_head(self) -> bytes:
        """The response head for the caller to send itself (built now if it was not); none is held after."""
        if not self.sent_headers:
            self.ensure_headers_sent()
        head, self._held_head = self._held_head, b""
        return head

    def _flush_head(self) -> None:
        head = self._held_head
        if head:
            self._held_head = b""
            self.conn.wfile.write(head)

    def parse_request(self) -> None:
        """Parse the request line and headers; 414/431 past the limits, as cheroot's with a field count."""
        limits: GuardedServer = self.server
        self.rfile = server.SizeCheckWrapper(self.conn.rfile, limits.max_request_header_size)
        try:
            if not self.read_request_line():  # type: ignore[no-untyped-call]
                return
        except errors.MaxSizeExceeded:
            self.simple_response("414 Request-URI Too Long", "The request line is too long.")
            return
        # The field count: each header line is one readline, plus the blank line that ends the head.
        sized = self.rfile
        counter = _LineCounter(sized, limits.max_header_fields + 1)
        self.rfile = counter
        try:
            ok = self.read_request_headers()  # type: ignore[no-untyped-call]
        except errors.MaxSizeExceeded as exc:
            what = "fields" if isinstance(exc, HeaderFieldsExceeded) else "bytes"
            log.info(
                "request refused reason=header-%s remote=%s",
                what,
                getattr(self.conn, "remote_addr", None),
            )
            self.close_connection = True
            self.simple_response(
                "431 Request Header Fields Too Large",
                f"The request head exceeds {limits.max_header_fields} fields or "
                f"{limits.max_request_header_size} bytes.",
            )
            return
        finally:
            self.rfile = sized
        if ok:
            conflict = counter.framing_conflict()
            if conflict is not None:
                log.info("request refused reason=framing remote=%s", getattr(self.conn, "remote_addr", None))
                self.close_connection = True
                self.simple_response(
                    "400 Bad Request", f"The request's body framing is ambiguous: {conflict}."
                )
                return
            self.ready = True

    def respond(self) -> None:
        """Answer as cheroot does, the body read through ``_MinimumRate``."""
        limits: GuardedServer = self.server
        plain = self.conn.rfile
        self.conn.rfile = _MinimumRate(plain, limits.header_timeout)
        try:
            super().respond()
        finally:
            self.conn.rfile = plain


class _MinimumRate:
    """A file wrapper that raises ``TimeoutError`` when reads fall below ``MIN_BODY_RATE`` after a grace."""

    def __init__(self, rfile: Any, grace: float) -> None:
        self.rfile = rfile
        self.grace = grace
        self.started = time.monotonic()
        self.received = 0
        #: Whether a read failed (the socket timed out or broke, or the rate was too low).
        self.failed = False

    def _count(self, got: int) -> None:
        self.received += got
        elapsed = time.monotonic() - self.started
        if elapsed > self.grace and self.received < MIN_BODY_RATE * (elapsed - self.grace):
            log.info("connection closed reason=slow-body bytes=%d seconds=%.1f", self.received, elapsed)
            self.failed = True
            raise TimeoutError("timed out")  # cheroot closes the connection quietly on exactly this text

    # A buffered read(n) or readline() waits for all it asks for, however slowly it comes; these read one
    # socket read at a time (``read1``, ``peek``) so that the rate is checked after each.
    def read(self, size: Any = -1) -> bytes:
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            try:
                chunk = self.rfile.read1(65536 if size is None or size < 0 else size - len(out))
            except OSError:
                self.failed = True
                raise
            if not chunk:
                break
            out += chunk
            self._count(len(chunk))
        return bytes(out)

    def readline(self, size: Any = -1) -> bytes:
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            try:
                buffered = self.rfile.peek(1)
            except OSError:
                self.failed = True
                raise
            if not buffered:
                break
            room = len(buffered) if size is None or size < 0 else min(len(buffered), size - len(out))
            end = buffered.find(b"\n", 0, room)
            chunk = self.rfile.read(end + 1 if end >= 0 else room)
            out += chunk
            self._count(len(chunk))
            if end >= 0:
                break
        return bytes(out)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rfile, name)


class GuardedConnection(server.HTTPConnection):
    """cheroot's connection, parsing requests with ``GuardedRequest``, whose waits on the client after a
    response are handed to the connection loop (``mountd.http.handoff``)."""

    RequestHandlerClass = GuardedRequest
    #: Whether ``close`` should linger: set when a request ends the connection (``communicate`` said no).
    _linger_on_close = False
    #: The rest of a payload body to send from the loop (``park_send``), handed over by ``close``.
    _pending_send: handoff.Parked | None = None

    #: Whether this connection's request holds one of the manager's body threads (``_admit``).
    body_thread = False

    def communicate(self) -> bool:
        try:
            keep = bool(super().communicate())  # type: ignore[no-untyped-call]
        finally:
            if self.body_thread:
                self.body_thread = False
                manager = getattr(self.server, "_connections", None)
                if isinstance(manager, GuardedConnections):
                    manager.release_body_thread()
        pending = self._pending_send
        if pending is not None:  # the response's body is not out yet: the loop finishes it (``close``)
            pending.keep_alive = keep
            self._linger_on_close = False
            return False
        self._linger_on_close = not keep
        return keep

    def _handing_to(self) -> GuardedConnections | None:
        # The connection loop this response's rest may be handed to: none while one is pending, for a
        # server without ours, or for a socket that is not plain (TLS).
        manager = getattr(self.server, "_connections", None)
        if self._pending_send is not None or not isinstance(manager, GuardedConnections):
            return None
        return manager if handoff.plain_socket(self) else None

    def park_send(
        self,
        file_fd: int,
        offset: int,
        count: int,
        on_sent: Callable[[int], None] | None = None,
        *,
        copy: bool = False,
    ) -> bool:
        """Have the connection loop send ``count`` bytes of ``file_fd`` from ``offset`` once this response's
        request is done; False (send them yourself) when no send can be parked now.

        Args:
            file_fd: The payload's descriptor; duplicated here, the caller keeps and closes its own.
            offset: Absolute offset of the first byte.
            count: Bytes to send.
            on_sent: Told once, from the loop, how many of them were sent (``count`` unless the reader went
                away or stalled), when the send ends; not called when this returns False.
            copy: Copy the bytes instead of ``os.sendfile`` (``handoff.ParkedSend``).
        """
        manager = self._handing_to()
        if manager is None or not manager.reserve_send():
            return False
        try:
            duplicate = os.dup(file_fd)
        except OSError:
            manager.unreserve_send()
            return False
        self._pending_send = handoff.ParkedSend(manager, self, duplicate, offset, count, on_sent, copy=copy)
        return True

    def park_spilled(self, pending: bytes | memoryview, remaining: int, chunks: Iterator[bytes]) -> bool:
        """Write a document held whole in memory out to a temporary file (``handoff.spill``) and have the
        connection loop send it from there once this response's request is done, as a parked payload; False
        (send it yourself; nothing was taken from ``chunks``) when no send can be parked now, when the spilled
        documents would pass ``MAX_SPILLED_BYTES``, or when no temporary file for it can be made on disk
        (``handoff.spill_file``: a tmpfs, a full disk).

        Args:
            pending: Bytes of the response due first (the rest of the current chunk).
            remaining: Body bytes still to come from ``chunks``.
            chunks: The response iterable's iterator, positioned after ``pending``'s chunk; all of it is
                taken.

        Raises:
            OSError, ValueError: From ``handoff.spill``, which took from ``chunks`` (the response cannot go
                on: the connection is closed).
        """
        manager = self._handing_to()
        count = len(pending) + remaining
        if manager is None or not manager.reserve_send(spilled=count):
            return False
        try:
            fd = handoff.spill_file(count)
        except OSError as exc:  # nothing was taken from ``chunks`` yet: the worker sends it
            manager.unreserve_send(spilled=count)
            log.debug("response body not spilled reason=%s", exc.strerror)
            return False
        try:
            handoff.spill(fd, pending, count, chunks)
            self._pending_send = handoff.ParkedSend(manager, self, fd, 0, count, None, count)
        except BaseException:
            os.close(fd)
            manager.unreserve_send(spilled=count)
            raise
        return True

    def park_body(
        self,
        pending: bytes | memoryview,
        remaining: int,
        chunks: Iterator[bytes],
        response: Any,
        held: int = 0,
    ) -> bool:
        """Have the connection loop send ``pending``, then ``remaining`` bytes taken from ``chunks``, once
        this response's request is done, and close ``response`` after; False (send them yourself) when no
        body can be parked now.

        Args:
            pending: Bytes of the response due first (the rest of a chunk, the head's too if it was not out).
            remaining: Body bytes still to come from ``chunks`` (the declared length's rest).
            chunks: The response iterable's iterator, positioned after ``pending``'s chunk.
            response: The response iterable, whose ``close`` ends the request (called from the loop).
            held: Bytes of memory the body keeps of its own while parked (``handoff.MAX_PARKED_HELD_BYTES``).
        """
        manager = self._handing_to()
        if manager is None or not manager.reserve_send(body=True, held=held):
            return False
        self._pending_send = handoff.ParkedBody(manager, self, pending, remaining, chunks, response, held)
        return True

    def close(self) -> None:
        """Close as cheroot does, or hand the connection to the loop: to finish a parked send, or to linger.

        Called by the worker thread as the last thing it does with the connection; never raises (an error
        here would end the worker thread).
        """
        manager = getattr(self.server, "_connections", None)
        pending, self._pending_send = self._pending_send, None
        wanted, self._linger_on_close = self._linger_on_close, False
        if isinstance(manager, GuardedConnections):
            if pending is not None and manager.start_send(pending):
                return
            if wanted and not self.linger and handoff.plain_socket(self) and manager.linger(self):
                return
        super().close()


class GuardedConnections(connections.ConnectionManager):
    """cheroot's connection manager, giving a connection to a thread only once its head has arrived."""

    def __init__(self, server_: GuardedServer) -> None:
        super().__init__(server_)
        #: Connections with part of a head: connection → monotonic deadline of the head.
        self._parked: dict[Any, float] = {}
        self._last_recheck = 0.0
        #: Connections the loop finishes for a worker (``mountd.http.handoff``): socket descriptor → entry.
        self._handed: dict[int, handoff.Lingering | handoff.Parked] = {}
        self._lingering = 0
        self._sends = 0  # parked sends and bodies, started or reserved by a worker still answering
        self._bodies = 0  # of which parked bodies
        self._held = 0  # bytes the parked bodies hold of their own
        self._spilled = 0  # bytes of parked sends' temporary files (spilled documents)
        self._handed_lock = threading.Lock()
        self._closing = False
        self._last_handed_check = 0.0
        #: Connections with a complete head waiting for a body thread: connection → monotonic deadline.
        self._queued: dict[Any, float] = {}
        #: Connections a worker gave back with a read-ahead request the loop must look at (``put``).
        self._returned: list[Any] = []
        self._body_threads = 0  # requests with a body still to arrive, in worker threads now
        self._body_lock = threading.Lock()
        self.max_body_threads = server_.max_body_threads or max(1, server_.requests.min // 2)

    def put(self, conn: Any) -> None:
        """Take a connection back after a request (from its worker thread); one whose next request cheroot
        read ahead is dispatched at once only if its head is complete and it needs no body thread (or gets
        one); otherwise the loop takes it (``_admit``): pipelining must not get around the head deadline
        or the body threads."""
        if not conn.rfile.has_data():
            super().put(conn)
            return
        conn.last_used = time.time()
        state = self._head_state(conn)
        if state == "body" and self._take_body_thread():
            conn.body_thread = True
            state = "ready"
        if state == "ready":
            self.server.process_conn(conn)
            return
        with self._handed_lock:
            self._returned.append(conn)

    def release_body_thread(self) -> None:
        """A request that held a body thread ended (called from its worker thread)."""
        with self._body_lock:
            self._body_threads -= 1

    def _take_body_thread(self) -> bool:
        with self._body_lock:
            if self._body_threads >= self.max_body_threads:
                return False
            self._body_threads += 1
            return True

    @property
    def _num_connections(self) -> int:
        # cheroot counts what its selector holds against ``keep_alive_conn_limit``; handed-over connections
        # are no keep-alive connections.
        with self._handed_lock:
            handed = len(self._handed)
        return len(self._selector) - 1 - handed  # type: ignore[attr-defined]

    def _refusing(self) -> bool:
        # Stopping (cheroot's flag) or closed: nothing more is handed over.
        return self._closing or bool(getattr(self, "_stop_requested", False))

    def reserve_send(self, *, body: bool = False, held: int = 0, spilled: int = 0) -> bool:
        """Reserve room for one parked send (a parked body with ``body``, keeping ``held`` bytes of its own;
        a spilled document of ``spilled`` bytes); False when ``handoff.room`` of them are parked or reserved
        (``MAX_PARKED_BODIES`` of bodies), or when the bodies would hold more than ``MAX_PARKED_HELD_BYTES``
        or the spilled documents pass ``MAX_SPILLED_BYTES``."""
        with self._handed_lock:
            if self._refusing() or self._sends >= handoff.room(handoff.MAX_PARKED_SENDS):
                return False
            if spilled and self._spilled + spilled > handoff.MAX_SPILLED_BYTES:
                return False
            if body:
                if self._bodies >= handoff.room(handoff.MAX_PARKED_BODIES):
                    return False
                if held and self._held + held > handoff.MAX_PARKED_HELD_BYTES:
                    return False
                self._bodies += 1
                self._held += held
            self._spilled += spilled
            self._sends += 1
            return True

    def unreserve_send(self, *, spilled: int = 0) -> None:
        """Give back a payload send's (or a spilled document's) reservation that ``start_send`` will not
        use."""
        with self._handed_lock:
            self._sends -= 1
            self._spilled -= spilled

    def start_send(self, entry: handoff.Parked) -> bool:
        """Send the rest of a body from the loop (its room was reserved); False when it cannot be (the
        entry is then released and the caller closes the connection)."""
        with self._handed_lock:
            if not self._refusing():
                try:
                    self._selector.register(entry.fd, selectors.EVENT_WRITE, data=entry)  # type: ignore[attr-defined]
                except (OSError, ValueError, KeyError):
                    pass
                else:
                    self._handed[entry.fd] = entry
                    return True
            self._sends -= 1
            if type(entry) is handoff.ParkedBody:
                self._bodies -= 1
                self._held -= entry.held
            elif type(entry) is handoff.ParkedSend:
                self._spilled -= entry.spilled
        entry.release()
        return False

    def linger(self, conn: GuardedConnection) -> bool:
        """Send ``conn``'s FIN and drain it in the loop; False (close it yourself) when full."""
        with self._handed_lock:
            if self._refusing() or self._lingering >= handoff.room(handoff.MAX_LINGERING):
                return False
            sock = conn.socket
            try:
                conn.rfile.close()
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(0)
                entry = handoff.Lingering(self, conn)
                self._selector.register(entry.fd, selectors.EVENT_READ, data=entry)  # type: ignore[attr-defined]
            except (OSError, ValueError, KeyError):
                return False
            self._handed[entry.fd] = entry
            self._lingering += 1
        return True

    def end(self, entry: handoff.Lingering | handoff.Parked) -> None:
        """Forget ``entry`` and release it (once: a descriptor may be reused right after it is closed).

        A parked send that went out in full puts its connection back to keep-alive when the response said
        so and the keep-alive limit has room now (its response was answered while parked sends did not
        count); any other is closed (lingering, when it can).
        """
        with self._handed_lock:
            if self._handed.get(entry.fd) is not entry:
                return
            del self._handed[entry.fd]
            if type(entry) is handoff.Lingering:
                self._lingering -= 1
            else:
                self._sends -= 1
                if type(entry) is handoff.ParkedBody:
                    self._bodies -= 1
                    self._held -= entry.held
                elif type(entry) is handoff.ParkedSend:
                    self._spilled -= entry.spilled
            with suppress(KeyError, ValueError):  # already taken out by cheroot's ``_expire``
                self._selector.unregister(entry.fd)  # type: ignore[attr-defined]
        entry.release()
        if isinstance(entry, handoff.Parked):
            conn = entry.conn
            if (
                entry.keep_alive
                and not entry.failed
                and not self._closing
                and self.can_add_keepalive_connection
            ):
                conn.last_used = time.time()
                self._admit(conn)
            else:
                conn._linger_on_close = not entry.failed
                conn.close()

    def _expire_handed(self) -> None:
        # Past their deadlines (lingering) or idle for too long (parked sends), at most every HANDED_CHECK s.
        now = time.monotonic()
        if now - self._last_handed_check < HANDED_CHECK:
            return
        self._last_handed_check = now
        for entry in list(self._handed.values()):
            if entry.expired(now):
                entry.close()  # a parked send ends as failed: its connection is closed

    def _run(self, expiration_interval: float) -> None:
        # cheroot's loop (connections.ConnectionManager._run), with ``_admit`` in place of dispatching and the
        # parked connections looked at on every turn. (cheroot's stubs omit the private members used here.)
        manager: Any = self
        last_expiration_check = time.time()
        while not manager._stop_requested:
            wait = PARKED_RECHECK if self._parked or self._queued else expiration_interval
            try:
                active_list = manager._selector.select(timeout=wait)
            except OSError:
                manager._remove_invalid_sockets()
                continue
            for sock_fd, conn in active_list:
                if conn is self.server:
                    new_conn = manager._from_server_socket(self.server.socket)
                    if new_conn is not None:
                        new_conn.last_used = time.time()
                        self._admit(new_conn)
                elif type(conn) in HANDED_TYPES:
                    self._pump(conn)
                else:
                    manager._selector.unregister(sock_fd)
                    self._admit(conn)
            if self._returned:
                with self._handed_lock:
                    returned, self._returned = self._returned, []
                for conn in returned:
                    self._admit(conn)
            if self._parked or self._queued:
                self._recheck_parked()
            if self._handed:
                self._expire_handed()
            now = time.time()
            if (now - last_expiration_check) > expiration_interval:
                manager._expire(threshold=now - self.server.timeout)
                last_expiration_check = now

    def _pump(self, entry: handoff.Lingering | handoff.Parked) -> None:
        # One turn of a handed-over connection; our bug in it ends that connection, never the loop's turn.
        try:
            done = entry.pump()
        except Exception:
            log.exception("handed-over connection failed; closing it")
            if isinstance(entry, handoff.Parked):
                entry.failed = True
            done = True
        if done:
            self.end(entry)

    def _admit(self, conn: Any) -> None:
        """Dispatch ``conn`` when its head is complete; park or wait in the selector otherwise."""
        state = self._head_state(conn)
        if state == "body":
            if not self._take_body_thread():
                self._parked.pop(conn, None)
                if conn not in self._queued:
                    address = _address(conn)
                    if (
                        sum(1 for other in self._queued if _address(other) == address)
                        >= MAX_QUEUED_PER_ADDRESS
                    ):
                        _refuse_busy(conn, "body-queue-full")
                        return
                    self._queued[conn] = time.monotonic() + BODY_QUEUE_TIMEOUT
                return
            conn.body_thread = True
            state = "ready"
        self._queued.pop(conn, None)
        if state == "ready":
            self._parked.pop(conn, None)
            self.server.process_conn(conn)
        elif state == "partial":
            if conn not in self._parked:
                self._parked[conn] = time.monotonic() + self.server.header_timeout
        elif state == "idle":
            self._parked.pop(conn, None)
            manager: Any = self
            manager._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)
        else:  # closed by the client
            self._parked.pop(conn, None)
            conn.close()

    def _recheck_parked(self) -> None:
        now = time.monotonic()
        if now - self._last_recheck < PARKED_RECHECK:
            return
        self._last_recheck = now
        for conn, deadline in list(self._parked.items()):
            if now > deadline:
                del self._parked[conn]
                log.info(
                    "connection closed reason=header-timeout remote=%s", getattr(conn, "remote_addr", None)
                )
                conn.close()
                continue
            self._admit(conn)
        for conn, deadline in list(self._queued.items()):
            if now > deadline:
                del self._queued[conn]
                _refuse_busy(conn, "body-queue-timeout")
                continue
            # Every one, a body thread free or not: a body that arrived whole meanwhile needs none, and a
            # client that went away is closed now rather than when a thread frees.
            self._admit(conn)

    def _head_state(self, conn: Any) -> str:
        """``ready`` (dispatch), ``body`` (dispatch to a body thread), ``partial`` (park), ``idle``
        (selector) or ``closed``."""
        sock = conn.socket
        if type(sock) is not socket.socket:
            return "ready"  # TLS: as cheroot does
        # What cheroot read ahead already (a pipelined request), then what the kernel holds.
        buffered = _read_ahead(conn)
        limit = self.server.max_request_header_size
        # A Python socket with a timeout polls before it receives (whatever the flags say): peek with none.
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            data = buffered + sock.recv(limit + len(_HEAD_END), socket.MSG_PEEK)
        except BlockingIOError:
            if not buffered:
                return "idle" if conn not in self._parked else "partial"
            data = buffered
        except OSError:
            if not buffered:
                return "closed"
            data = buffered
        finally:
            sock.settimeout(timeout)
        if not data:
            return "closed"
        end = data.find(_HEAD_END)
        if end >= 0:
            return "body" if _body_to_come(data, end) else "ready"
        if len(data) > limit:
            return "ready"
        # A lone request line is allowed to finish with a bare CRLF only by HTTP/0.9, which cheroot refuses.
        return "partial"

    def close(self) -> None:
        for conn in [*self._parked, *self._queued]:
            conn.close()
        self._parked.clear()
        self._queued.clear()
        with self._handed_lock:
            self._closing = True
            handed = list(self._handed.values())
        for entry in handed:
            self.end(entry)
        super().close()


def _refusal(status: Any) -> bool:
    # A 4xx or 5xx status line (bytes, as cheroot's WSGI gateway sets it; its stubs say str).
    text = status.decode("latin-1") if isinstance(status, bytes) else str(status)
    return text[:1] in ("4", "5")


def _address(conn: Any) -> Any:
    remote = getattr(conn, "remote_addr", None)
    return remote[0] if isinstance(remote, tuple) else remote


def _refuse_busy(conn: Any, reason: str) -> None:
    """Answer 503 (Retry-After) to a connection waiting for a body thread, from the loop, and close it."""
    log.info("connection closed reason=%s remote=%s", reason, getattr(conn, "remote_addr", None))
    with suppress(OSError):
        conn.socket.send(_BUSY, socket.MSG_DONTWAIT)  # a few bytes into an empty send buffer
    conn.close()


def _read_ahead(conn: Any) -> bytes:
    """The bytes cheroot's reader holds for ``conn`` beyond what it gave out (a pipelined request)."""
    rfile = conn.rfile
    if not rfile.has_data():
        return b""
    return bytes(rfile._read_buf[rfile._read_pos :])  # (what ``has_data`` looks at)


def _body_to_come(data: bytes, end: int) -> bool:
    """Whether the request whose head ends at ``end`` of ``data`` (peeked) declares a body that is not all
    in ``data``."""
    head = data[:end].lower()
    if _TRANSFER_ENCODING in head:
        return True
    found = _CONTENT_LENGTH.search(head)
    if found is None:
        # No plain length: none at all (no body), or one written otherwise (``+5``, folded...), which
        # cheroot may still read as a length: taken as a body to come (the head is refused anyway).
        return b"\r\ncontent-length" in head
    return int(found.group(1)) > len(data) - end - len(_HEAD_END)


class GuardedServer(wsgi.Server):
    """cheroot's WSGI server with ``GuardedConnection`` and ``GuardedConnections``.

    Args:
        *args: As ``cheroot.wsgi.Server``.
        max_header_bytes: Largest request head in bytes.
        max_header_fields: Most header lines per request.
        header_timeout: Seconds from a head's first byte to its end.
        max_body_threads: Most worker threads given requests whose body is still to arrive (default: half
            of ``numthreads``).
        inherited_socket: A listening, non-blocking socket to serve instead of binding one (shared by
            several server processes, ``mountd.processes``); cheroot's ``bind_addr`` becomes its address.
        **kwargs: As ``cheroot.wsgi.Server``.
    """

    ConnectionClass = GuardedConnection

    def __init__(
        self,
        *args: Any,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_body_threads: int | None = None,
        inherited_socket: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_request_header_size = max_header_bytes
        self.max_header_fields = max_header_fields
        self.header_timeout = header_timeout
        self.max_body_threads = max_body_threads
        self.inherited_socket = inherited_socket
        if inherited_socket is not None:
            self.bind_addr = inherited_socket.getsockname()[:2]

    def bind(self, family: Any, type: Any, proto: Any = 0) -> None:
        """Bind as cheroot does, or take the inherited socket as it is (already bound and listening)."""
        if self.inherited_socket is None:
            super().bind(family, type, proto)
            return
        self.socket = self.inherited_socket

    def prepare(self) -> None:
        """Bind and listen as cheroot does, with ``GuardedConnections`` as the connection manager."""
        super().prepare()
        if self.inherited_socket is not None:
            # cheroot gave the socket a 1 s timeout: a process that loses the race for a connection another
            # process accepted would block its whole connection loop in accept() for that long. Non-blocking,
            # it gets EAGAIN, which cheroot ignores.
            self.socket.settimeout(0)
        plain = self._connections  # type: ignore[has-type]
        self._connections = GuardedConnections(self)
        plain._selector.close()  # cheroot's own manager, never run: only its selector holds a resource
