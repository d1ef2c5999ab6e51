"""Waits on a client that the connection loop takes over from a worker thread: lingering closes and parked
payload sends.

Why: cheroot serves a connection with one of its ``SERVER_THREADS`` worker threads from the request head to
the end of the response, and a thread that waits on a client waits for nobody else. Two such waits are
handed to the connection manager's selector loop (``mountd.http.connection_guard.GuardedConnections``),
where a waiting client costs a file descriptor and a few bytes of bookkeeping, never a thread:

* **Lingering close** (``Lingering``, as Apache's and nginx's): when the server ends a plain TCP connection
  after a request (a 413 for a body still arriving, a 431, ``Connection: close``), it sends its FIN
  (``shutdown(SHUT_WR)``) and the loop reads and discards what the client still sends until the client's FIN,
  ``LINGER_SECONDS`` or ``LINGER_BYTES``, whichever comes first. Closing at once with unread input makes the
  kernel answer with a reset, and a client still sending its body then fails on its send (EPIPE) without
  ever reading the answer already on its way.
* **Parked sends** (``ParkedSend``): when a payload body going out on a plain socket
  (``mountd.http.sendfile``) fills the reader's socket buffer (the reader is slower than the file), the
  worker waits ``PARK_AFTER`` seconds for room (0: none), then the rest of the body is sent from the loop
  whenever the socket can take more, the way the worker sent it: by ``os.sendfile``, or to a loopback
  reader by ``pread`` into one buffer of the loop's thread and ``send`` (``copy``). A worker thread so
  never waits on a reader, however slowly it reads (as nginx's event loop), and serves the next request
  meanwhile. It is sent from a duplicate of the
  payload's file descriptor, the same open file (inode) the response began on, at explicit offsets, so a
  swap meanwhile changes no byte of it. Once the body is out, the connection goes back to keep-alive (or is
  closed, as the response announced); a reader that takes nothing for ``SEND_IDLE`` seconds (60, as
  nginx's ``send_timeout``; a worker thread waits the server's 10 s) is closed.
* **Parked bodies** (``ParkedBody``): the same for a generated body whose chunks cost no I/O and no wait
  to make (a listing's document, ``mountd.http.fast_propfind``; ``BODY_PARKABLE_KEY`` in
  ``mountd.http.sendfile``): the rest of the current chunk, then the next chunks are made on the loop's
  thread as the socket takes them, up to the declared ``Content-Length``; the response iterable is closed
  (ending the request) once the body is out or the reader is dropped.

Invariants:
    * At most ``MAX_LINGERING`` connections linger and at most ``MAX_PARKED_SENDS`` sends are parked at
      once (of which at most ``MAX_PARKED_BODIES`` bodies), fewer when the descriptor limit is low
      (``room``); past either the worker does what it did before (closes at once; waits for the reader
      itself). A parked send costs two descriptors (the socket and the payload's duplicate), a parked body
      and a lingering close one.
    * One turn of the loop moves at most ``TURN_BYTES`` for one entry, so no client holds up the others
      or the accepting of new connections.
    * Only plain sockets are handed over (a TLS socket's bytes are records).
    * Every descriptor handed over is closed exactly once: when its entry ends, when it expires (a lingering
      connection's deadline, a parked send's ``SEND_IDLE``, cheroot's ``_expire``), or when the server stops.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import resource
import socket
import struct
import tempfile
import termios
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Longest a connection the server closed is drained of what the client still sends (seconds).
LINGER_SECONDS = 5.0
#: Most bytes drained from one such connection.
LINGER_BYTES = 16 * 1024 * 1024
#: Most connections lingering at once.
MAX_LINGERING = 256
#: Seconds a worker waits for a reader to make room in its socket buffer before parking the rest of a body:
#: none, so that no worker ever waits on a reader (measured: loopback GETs of 512 MiB kept their rate and
#: CPU per GB, bench/ab_sendfile.py).
PARK_AFTER = 0.0
#: Most payload sends parked at once (fewer when the descriptor limit is low: ``room``).
MAX_PARKED_SENDS = 1024
#: Most generated bodies parked at once (within ``MAX_PARKED_SENDS``): each holds its response's iterable
#: (a listing's document: references to cached parts, about 90 KB for 10,000 archives) and one chunk.
MAX_PARKED_BODIES = 256
#: Most bytes that parked bodies hold of their own at once: a document rendered whole in memory (wsgidav's
#: own multistatus answers: a PROPFIND of a writable folder or one with conditions, a PROPPATCH's answer;
#: ``BODY_HELD_KEY`` in ``mountd.http.sendfile``) stays in memory until its reader took it. Past this a
#: worker sends such a body itself, as before (a listing's lazily made document holds nothing of its own).
MAX_PARKED_HELD_BYTES = 64 * 1024 * 1024
#: Most bytes of such documents written out to temporary files at once (``spill``), when they did not fit
#: ``MAX_PARKED_HELD_BYTES``: each is then sent from its file by ``os.sendfile``, as a payload is (nginx's
#: proxy buffers do the same, up to 1 GiB per response by default). Past it a worker waits as before.
MAX_SPILLED_BYTES = 1024 * 1024 * 1024
#: File system types whose files are memory: no document is spilled to a temporary directory on one.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
#: Descriptors of the process's soft limit set aside per parked send or lingering connection when the limit
#: is what bounds them (a parked send holds two; the rest is for everything else the server opens).
DESCRIPTORS_PER_ENTRY = 8
#: Most bytes one entry moves in one turn of the loop.
TURN_BYTES = 4 * 1024 * 1024
#: Largest count asked of one ``os.sendfile`` call of a parked send (and read for one write when copying).
SEND_CHUNK = 1024 * 1024
#: Smallest read of a copying parked send: after a write the socket took only part of, the next read is as
#: large as what it took (not less than this), and doubles again with each write taken whole, so a reader
#: that makes little room does not have a whole ``SEND_CHUNK`` read for each small write.
COPY_MIN = 16 * 1024
#: Seconds between two looks at a parked send's unacknowledged bytes (``ParkedSend.expired``).
PROGRESS_CHECK = 1.0
#: Seconds a parked send may go without progress before it is closed (nginx's ``send_timeout``): longer
#: than the server's 10 s idle timeout, because it costs no thread, and a rate-limited reader such as
#: ``curl --limit-rate 512k`` reads a burst into a 6 MB buffer and then reads nothing for over 10 s.
SEND_IDLE = 60.0

#: Where lingering connections' bytes are read to and forgotten (only the connection loop's thread).
_DISCARD = bytearray(65536)
#: Per thread: the ``SEND_CHUNK`` buffer a copying parked send reads into (``copy_buffer``).
_LOCAL = threading.local()


def copy_buffer() -> memoryview:
    """This thread's ``SEND_CHUNK``-byte buffer for copied sends (one per connection loop: a process may
    run several servers, each with its loop thread; made on first use)."""
    view: memoryview | None = getattr(_LOCAL, "view", None)
    if view is None:
        view = _LOCAL.view = memoryview(bytearray(SEND_CHUNK))
    return view


class Owner(Protocol):
    """What an entry needs of the connection loop that holds it (``GuardedConnections``)."""

    def end(self, entry: Lingering | Parked) -> None: ...


class Lingering:
    """A connection the server has finished with, drained until its end."""

    __slots__ = ("budget", "conn", "deadline", "fd", "last_used", "owner")

    def __init__(self, owner: Owner, conn: Any) -> None:
        self.owner = owner
        self.conn = conn
        self.fd: int = conn.socket.fileno()
        self.deadline = time.monotonic() + LINGER_SECONDS
        self.budget = LINGER_BYTES
        self.last_used = time.time()  # cheroot's ``_expire`` reads it

    def pump(self) -> bool:
        """Read and discard what is waiting; True once the connection is done with (EOF, error, budget)."""
        sock = self.conn.socket
        for _ in range(TURN_BYTES // len(_DISCARD)):
            try:
                got = sock.recv_into(_DISCARD)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not got:
                return True
            self.budget -= got
            if self.budget <= 0:
                return True
        return False

    def expired(self, now: float) -> bool:
        """Whether its time is up (``now`` from ``time.monotonic``)."""
        return now > self.deadline

    def close(self) -> None:
        """End it (cheroot's ``_expire`` calls this on what it finds idle in the selector)."""
        self.owner.end(self)

    def release(self) -> None:
        """Close what it holds (the owner calls this once, after forgetting it)."""
        self.conn.socket.close()


class Parked(ABC):
    """What every parked response body has: its connection, the bytes still due, and its idle clock.

    Attributes:
        conn: The connection (cheroot's), back to keep-alive or closed once done.
        fd: The socket's descriptor (the selector's key).
        remaining: Body bytes still to send.
        keep_alive: Whether the connection stays open once the body is out.
        failed: Set when the body could not be sent in full (the connection is then closed).
    """

    __slots__ = ("_last_used", "_queued", "conn", "failed", "fd", "keep_alive", "owner", "remaining")

    def __init__(self, owner: Owner, conn: Any, remaining: int) -> None:
        self.owner = owner
        self.conn = conn
        self.fd: int = conn.socket.fileno()
        self.remaining = remaining
        self.keep_alive = False
        self.failed = False
        self._last_used = time.time()
        self._queued = unacknowledged(self.fd)

    @abstractmethod
    def pump(self) -> bool:
        """Send what the socket takes now; True once the body is out or cannot be (``failed``)."""

    @property
    def last_used(self) -> float:
        """Now, always: cheroot's ``_expire`` (the server's idle timeout) leaves it to ``expired``."""
        return time.time()

    def expired(self, now: float) -> bool:
        """Whether the reader made no progress for ``SEND_IDLE`` seconds: no send, and no fewer bytes
        waiting for its acknowledgement than at the last look (a reader slower than about 100 KiB/s
        empties a 4 MB send queue a little at a time, and the kernel reports room to send only once a
        third of it is free, which can take longer than a minute while the reader reads on all along).
        """
        wall = time.time()
        if wall - self._last_used > PROGRESS_CHECK:
            queued = unacknowledged(self.fd)
            if queued < self._queued:
                self._last_used = wall
            self._queued = queued
        return wall - self._last_used > SEND_IDLE

    def close(self) -> None:
        """End it as failed (cheroot's ``_expire``: no progress for the server's timeout)."""
        self.failed = True
        self.owner.end(self)

    @abstractmethod
    def release(self) -> None:
        """Let go of what it holds besides the connection (the owner decides what becomes of that); never
        raises: it runs on the connection loop."""


class ParkedSend(Parked):
    """The rest of a payload body, sent from the loop as the socket takes it: by ``os.sendfile``, or with
    ``copy`` read into the loop thread's buffer (``copy_buffer``) and written (bytes the socket did not take
    are read again from the file next time, at their offset; reads follow what the socket takes,
    ``COPY_MIN``).

    Attributes:
        file_fd: A duplicate of the payload's descriptor (or a spilled document's file), owned by this entry.
        offset: Next byte of ``file_fd`` to send.
        on_sent: Told, once, how many bytes this entry sent (when it is released, in full or not), or None.
        spilled: Bytes of a temporary file this entry holds (``spill``; counted against
            ``MAX_SPILLED_BYTES``), 0 for a payload.
        copy: Copy instead of ``os.sendfile`` (a loopback reader: ``mountd.http.sendfile``).
    """

    __slots__ = ("_chunk", "_moved", "copy", "file_fd", "offset", "on_sent", "spilled")

    def __init__(
        self,
        owner: Owner,
        conn: Any,
        file_fd: int,
        offset: int,
        remaining: int,
        on_sent: Callable[[int], None] | None = None,
        spilled: int = 0,
        *,
        copy: bool = False,
    ) -> None:
        super().__init__(owner, conn, remaining)
        self.file_fd = file_fd
        self.offset = offset
        self.on_sent = on_sent
        self.spilled = spilled
        self.copy = copy
        self._moved = 0
        self._chunk = SEND_CHUNK  # the next read when copying

    def pump(self) -> bool:
        """Send what the socket takes now; True once the body is out or cannot be (``failed``)."""
        moved = 0
        buffer = copy_buffer() if self.copy else None
        while moved < TURN_BYTES:
            try:
                if buffer is None:
                    n = os.sendfile(self.fd, self.file_fd, self.offset, min(self.remaining, SEND_CHUNK))
                else:
                    got = os.preadv(self.file_fd, [buffer[: min(self.remaining, self._chunk)]], self.offset)
                    n = os.write(self.fd, buffer[:got]) if got else 0  # the socket is non-blocking
            except BlockingIOError:
                return False
            except OSError:  # the client went away
                self.failed = True
                return True
            if n == 0:  # the payload ended early (truncated under us, which we never do)
                log.warning("payload ended early (parked send) remaining=%d", self.remaining)
                self.failed = True
                return True
            self.offset += n
            self.remaining -= n
            self._moved += n
            moved += n
            self._last_used = time.time()
            if self.remaining == 0:
                return True
            if buffer is not None:
                if n < got:  # the socket is full: wait for room, then read about as much as it took
                    self._chunk = max(COPY_MIN, n)
                    return False
                self._chunk = min(SEND_CHUNK, self._chunk * 2)
        return False

    def release(self) -> None:
        """Close the payload's duplicate and report the bytes sent; never raises."""
        os.close(self.file_fd)
        report, self.on_sent = self.on_sent, None
        if report is not None:
            try:
                report(self._moved)
            except Exception:  # a counter's bug must not end the loop
                log.exception("parked send: reporting its bytes failed")


class ParkedBody(Parked):
    """The rest of a generated response body (a multistatus document, say), sent from the loop as the
    socket takes it: ``pending`` first, then each chunk the response iterable yields, up to the declared
    ``Content-Length`` (``remaining`` counts what is still to come from the iterable); the iterable is
    closed when the entry is released.

    Only for iterables whose chunks cost no I/O and no wait to produce (``BODY_PARKABLE_KEY`` in
    ``mountd.http.sendfile``): they are produced on the loop's thread. ``held`` is the bytes of memory the
    entry keeps of its own while parked (counted against ``MAX_PARKED_HELD_BYTES``; 0 for a body made from
    shared, cached parts).
    """

    __slots__ = ("_chunks", "_pending", "_response", "held")

    def __init__(
        self,
        owner: Owner,
        conn: Any,
        pending: bytes | memoryview,
        remaining: int,
        chunks: Iterator[bytes],
        response: Any,
        held: int = 0,
    ) -> None:
        super().__init__(owner, conn, remaining)
        self.held = held
        self._pending = memoryview(pending)
        self._chunks: Iterator[bytes] | None = chunks
        self._response = response

    def pump(self) -> bool:
        """Send what the socket takes now; True once the body is out or cannot be (``failed``)."""
        moved = 0
        while moved < TURN_BYTES:
            if not self._pending:
                if self.remaining == 0:
                    return True
                chunk = self._next_chunk()
                if chunk is None:
                    self.failed = True
                    return True
                self._pending = memoryview(chunk)
                continue
            try:
                n = os.write(self.fd, self._pending)  # the socket's timeout would make ``send`` wait
            except BlockingIOError:
                return False
            except OSError:  # the client went away
                self.failed = True
                return True
            self._pending = self._pending[n:]
            moved += n
            self._last_used = time.time()
        return False

    def _next_chunk(self) -> bytes | None:
        """The next body bytes (cut to what is still due), or None when the body cannot be completed."""
        chunks = self._chunks
        while chunks is not None:
            try:
                chunk = next(chunks)
            except StopIteration:
                log.warning("response body short of its Content-Length (parked) remaining=%d", self.remaining)
                return None
            except Exception:  # the application's error: the body cannot be completed
                log.exception("response body failed (parked)")
                return None
            if not isinstance(chunk, bytes):  # the application broke its contract: the body fails
                log.error("response body yielded %s, not bytes (parked)", type(chunk).__name__)
                return None
            if not chunk:
                continue
            if len(chunk) > self.remaining:
                log.warning("response body exceeds its Content-Length (parked): cut, connection closed")
                self._chunks = None
                self.failed = True  # the cut part goes out, then the connection is closed
                chunk = chunk[: self.remaining]
            self.remaining -= len(chunk)
            return chunk
        return None

    def release(self) -> None:
        """Close the response iterable (the application's end of the request); never raises."""
        response, self._response = self._response, None
        self._chunks = None
        self._pending = memoryview(b"")
        close = getattr(response, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("parked body: closing the response failed")


def room(cap: int) -> int:
    """How many entries of a kind may exist at once: ``cap``, or fewer when the soft ``RLIMIT_NOFILE``
    divided by ``DESCRIPTORS_PER_ENTRY`` is lower (a served mountd raises its limit first,
    ``mountd.server.raise_descriptor_limit``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return cap
    return min(cap, soft // DESCRIPTORS_PER_ENTRY)


def unacknowledged(fd: int) -> int:
    """Bytes of a TCP socket's send queue not yet acknowledged by the peer (``SIOCOUTQ``); 0 when unknown
    (not TCP): such a socket then counts progress by sends alone."""
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def plain_socket(conn: Any) -> bool:
    """Whether ``conn``'s socket is a plain TCP/Unix socket (not TLS), the only kind handed over."""
    return type(getattr(conn, "socket", None)) is socket.socket


def spill_file(count: int, directory: str | None = None) -> int:
    """An anonymous temporary file for a spilled document (``MAX_SPILLED_BYTES``) with ``count`` bytes
    allocated, open for reading and writing: ``O_TMPFILE``, or where there is none a ``mkstemp`` file
    unlinked at once; so it is gone with its last descriptor, whatever happens to the process.

    Args:
        count: Bytes to allocate (``posix_fallocate``), so that writing them cannot fail for want of room.
        directory: Where; the system's temporary directory (``TMPDIR``) when None.

    Raises:
        OSError: No such file can be made there, the directory is memory (``MEMORY_FILE_SYSTEMS``: a tmpfs,
            as ``/tmp`` is in the compose stack; spilling there would only move the bytes to the page
            cache), or ``count`` bytes cannot be allocated (a full disk).
    """
    where = directory if directory is not None else tempfile.gettempdir()
    kind = file_system_type(where)
    if kind is None or kind in MEMORY_FILE_SYSTEMS:
        raise OSError(errno.EOPNOTSUPP, f"temporary directory on {kind or 'an unknown file system'}", where)
    fd = -1
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        with contextlib.suppress(OSError):  # EOPNOTSUPP or EISDIR where the file system has no O_TMPFILE
            fd = os.open(where, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
    if fd < 0:
        fd, name = tempfile.mkstemp(dir=where)
        try:
            os.unlink(name)
        except BaseException:
            os.close(fd)
            raise
    try:
        os.posix_fallocate(fd, 0, count)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_system_type(path: str) -> str | None:
    """The type of the file system ``path`` is on (``/proc/self/mounts``: the longest mount point above
    it), or None when that cannot be told."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    best, kind = "", None
    for fields in entries:
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # "\040" is a space
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def spill(fd: int, first: bytes | memoryview, count: int, chunks: Iterator[bytes]) -> None:
    """Write a response body's rest to ``fd`` (``spill_file``): ``first``, then the chunks of ``chunks``,
    ``count`` bytes in all.

    Args:
        fd: The file, at offset 0.
        first: The bytes due first.
        count: The body's rest in bytes, ``first`` included (its declared ``Content-Length``'s rest).
        chunks: The rest of the response iterable; all of it is taken.

    Raises:
        OSError: A write failed (a full disk).
        ValueError: The chunks hold more or fewer bytes than ``count``.
    """
    written = _write_all(fd, first)
    for chunk in chunks:
        if written + len(chunk) > count:
            raise ValueError("response body longer than its Content-Length")
        written += _write_all(fd, chunk)
    if written != count:
        raise ValueError("response body shorter than its Content-Length")


def _write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)
