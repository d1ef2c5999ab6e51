"""Server lifecycle: cheroot serving an assembled mountd application.

``mountd.app`` assembles the application (``build_app``) from a ``MountdConfig``; ``listen`` binds cheroot to
it on a background thread and returns a ``ServerHandle``; ``run_until_signal`` blocks until SIGTERM or
SIGINT and then shuts down gracefully (stop accepting, let running requests finish within
``SHUTDOWN_TIMEOUT``). cheroot's gateway sends payload bodies with ``os.sendfile``
(``mountd.http.sendfile``).

Invariants:
    * The server binds ``settings.host`` (loopback by default) and ``settings.port`` (0 picks a free port;
      the handle reports the real one).
    * Nothing here starts a broker or knows the freshness hook: the caller owns what it assembled.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType

from cheroot import wsgi

from broker import Settings
from mountd.dav.provider import SyncProvider
from mountd.http.connection_guard import GuardedServer
from mountd.http.middleware import RequestGuard
from mountd.http.sendfile import gateway_class
from mountd.ops.metrics import MountdMetrics

log = logging.getLogger(__name__)

#: cheroot worker threads: requests served at once (more measured no faster; see webdav-facts.md).
SERVER_THREADS = 16
#: Listen backlog: connections the kernel queues before cheroot accepts them (bursts of clients).
LISTEN_BACKLOG = 128
#: Seconds an idle keep-alive connection is kept.
CONNECTION_TIMEOUT = 10
#: Seconds shutdown waits for running requests before it gives up on them.
SHUTDOWN_TIMEOUT = 5
#: Seconds cheroot's selector waits per loop; shutdown waits up to this long for the loop to notice (cheroot's
#: 0.5 s default made every stop take half a second), at the cost of ten idle wake-ups a second.
SELECTOR_INTERVAL = 0.1
#: Name in the Server header and in SERVER_NAME: no product or version banner.
SERVER_NAME = "sync-mountd"
#: Descriptors a served process asks for (its soft ``RLIMIT_NOFILE``, up to the hard limit): connections
#: waiting in the selector, lingering or with a parked send hold descriptors rather than threads
#: (``mountd.http.handoff``: two per parked send), and a service manager's soft default is often 1,024.
WANTED_DESCRIPTORS = 65536


@dataclass
class ServerHandle:
    """A running server.

    Attributes:
        host: The address bound.
        port: The port bound (the real one when 0 was asked for).
        app: The WSGI application served (its outermost middleware).
        provider: The provider serving the store (e.g. its listing cache, for the refresh scheduler).
        metrics: The application's metrics (e.g. to attach the refresh scheduler's summary).
    """

    host: str
    port: int
    app: RequestGuard
    provider: SyncProvider
    metrics: MountdMetrics
    _server: wsgi.Server
    _thread: threading.Thread

    @property
    def mount_url(self) -> str:
        """``http://host:port`` (IPv6 literals in brackets), as the reference's ``mount_url()``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop accepting, let running requests finish (within ``SHUTDOWN_TIMEOUT``), join the thread."""
        self._server.stop()
        self._thread.join(SHUTDOWN_TIMEOUT)
        self.provider.index.close()  # writes the facts it queued for the next start (mountd.dav.facts_store)
        log.info("mountd stopped url=%s", self.mount_url)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def listen(
    settings: Settings,
    app: RequestGuard,
    provider: SyncProvider,
    metrics: MountdMetrics,
    *,
    sendfile: bool = True,
    sock: socket.socket | None = None,
) -> ServerHandle:
    """Bind cheroot to ``app`` and serve on a background thread; return once the socket listens.

    Args:
        settings: Host, port and the connection limits (``mountd.http.connection_guard``).
        app: The assembled application (``mountd.app.build_app``).
        provider: Its provider, reported by the handle.
        metrics: Its metrics, reported by the handle.
        sendfile: Send payload bodies with ``os.sendfile`` (``mountd.http.sendfile``); False copies them in
            blocks, as over TLS.
        sock: A listening socket to serve instead of binding ``settings.host`` and ``settings.port``: one
            that several processes share (``mountd.processes``); it must be non-blocking.

    Returns:
        The handle; call ``shutdown`` (or use it as a context manager).

    Raises:
        OSError: The address cannot be bound.
    """
    server = GuardedServer(
        (settings.host, settings.port),
        app,
        numthreads=SERVER_THREADS,
        server_name=SERVER_NAME,
        request_queue_size=LISTEN_BACKLOG,
        timeout=CONNECTION_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        max_header_bytes=settings.max_header_bytes,
        max_header_fields=settings.max_header_fields,
        header_timeout=settings.header_timeout,
        inherited_socket=sock,
    )
    server.expiration_interval = SELECTOR_INTERVAL
    server.gateway = gateway_class(sendfile=sendfile)
    server.prepare()  # binds and listens: the port is known and connections queue from here on
    bound = server.bind_addr
    thread = threading.Thread(target=server.serve, name="mountd-server", daemon=True)
    thread.start()
    handle = ServerHandle(str(bound[0]), int(bound[1]), app, provider, metrics, server, thread)
    log.info("mountd listening url=%s store=%s", handle.mount_url, provider.single or provider.root)
    return handle


#: Allocations between two collections of the youngest generation in a serving process (``settle_heap``).
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Move everything the process built before serving out of the cyclic garbage collector's reach.

    Modules, the application and its configuration live as long as the server; left in the collector's
    oldest generation, each full collection walks them all again (a first listing of 10,000 archives
    allocates enough objects to trigger some). ``gc.freeze`` after one collection leaves the collector only
    what requests allocate; reference counting still frees everything as before. Call once, in the server
    process, after the application is built (``run_until_signal`` does).

    The youngest generation is collected every ``GC_YOUNG_THRESHOLD`` allocations instead of Python's 700: a
    first listing of 10,000 archives keeps ~140,000 new objects, and ~190 young collections walking them
    cost it 30-57 ms; with this threshold, 5 collections cost 16-42 ms (cyclic garbage waits a little longer
    to be freed; reference counting frees the rest at once, as before).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def raise_descriptor_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to ``WANTED_DESCRIPTORS`` when the hard limit allows (as
    Go's runtime does for its servers); never lowers it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("descriptor limit kept soft=%d reason=%s", soft, exc)
            return soft
        log.info("descriptor limit raised soft=%d hard=%s", target, hard)
        return target
    return soft


def run_until_signal(handle: ServerHandle, on_ready: Callable[[ServerHandle], object] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut ``handle`` down gracefully. Call from the main thread.

    The process's descriptor limit is raised first (``raise_descriptor_limit``) and its heap settled
    (``settle_heap``).

    Args:
        handle: A listening server (``listen``); it is shut down on the way out, whatever happens.
        on_ready: Called with the handle once the signal handlers are in place (e.g. to print the URL).
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("mountd stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    raise_descriptor_limit()
    settle_heap()
    try:
        with handle:
            if on_ready is not None:
                on_ready(handle)
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
