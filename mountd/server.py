"""Server lifecycle: the WSGI application over a store, and cheroot serving it.

``build_app`` assembles wsgidav's ``WsgiDAVApp`` with our provider and the options the measurements in
``notes/webdav-facts.md`` call for (1 MiB blocks instead of wsgidav's 8 KiB, property and lock managers,
no version banners, our freshness-aware HTML browser in place of wsgidav's (``browser``), authentication
and roles from ``mountd.auth.access``), behind our middleware: ``RequestGuard`` (Host check, path check),
``ConditionalHeaders`` (If-Modified-Since as RFC 9110 says) and ``RequestScope`` (closes each request's
snapshots).
``serve_background`` runs cheroot on a thread and returns a handle; ``serve`` blocks until SIGTERM or SIGINT
and then shuts down gracefully (stop accepting, let running requests finish within ``SHUTDOWN_TIMEOUT``).

Invariants:
    * The server binds ``settings.host`` (loopback by default) and ``settings.port`` (0 picks a free port;
      the handle reports the real one).
    * Nothing here starts a broker: the caller passes the freshness hook (``NullFreshness`` by default) and
      closes it after the server is down.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from cheroot import wsgi
from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.prop_man.property_manager import ShelvePropertyManager  # type: ignore[import-untyped]
from wsgidav.wsgidav_app import WsgiDAVApp  # type: ignore[import-untyped]

from broker import Settings
from mountd.auth.access import auth_config
from mountd.auth.users import UserTable
from mountd.dav.index import ArchiveIndex
from mountd.dav.provider import FreshnessHook, SyncProvider
from mountd.http.browser import middleware_stack
from mountd.http.connection_guard import GuardedServer
from mountd.http.freshness_headers import FreshnessHeaders, SwapWaiters
from mountd.http.middleware import ConditionalHeaders, RequestGuard, RequestScope, host_names
from mountd.http.payload_headers import SETTINGS_CONFIG_KEY
from mountd.http.sendfile import gateway_class
from mountd.http.xml_limits import XmlBodyLimit
from mountd.ops.endpoints import OpsEndpoints, health_check
from mountd.ops.metrics import CountingFreshness, MountdMetrics
from mountd.refresh.hooks import NullFreshness
from mountd.writable.factory import WritableResources
from mountd.writable.policy import DEFAULT_MAX_UPLOAD, WritePolicy
from sync_format import ArchiveError
from sync_format.atomic import sweep_temp_files

log = logging.getLogger(__name__)

#: Bytes per read of a payload while streaming it; wsgidav's 8 KiB default runs at a sixth of 1 MiB's speed.
BLOCK_SIZE = 1024 * 1024
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
#: Seconds a temp file in a writable store may go unmodified before it counts as abandoned by a crash.
ABANDONED_TEMP_SECONDS = 3600
#: Name in the Server header and in SERVER_NAME: no product or version banner.
SERVER_NAME = "sync-mountd"


def build_app(
    settings: Settings,
    store: Path,
    freshness: FreshnessHook,
    *,
    index: ArchiveIndex | None = None,
    allowed_hosts: Iterable[str] = (),
    writable: WritePolicy | None = None,
    lock_storage: Any = True,
    property_store: Path | Any | None = None,
    users: UserTable | None = None,
    swaps: SwapWaiters | None = None,
) -> RequestGuard:
    """The WSGI application serving ``store`` (read-only unless ``writable`` is given).

    Args:
        settings: Supplies the bound host (for the Host check).
        store: A store directory or one archive.
        freshness: Told about expired archives being read.
        index: The listing cache; a new one when None.
        allowed_hosts: Further host names clients may use (e.g. the machine's DNS name when binding a
            public address).
        writable: The writable store's policy; None serves read-only.
        lock_storage: wsgidav's lock storage: True for one in memory (one server process), or a shared
            one such as ``mountd.writable.locks.RedisLockStorage``.
        property_store: A file to keep dead properties in across restarts (in memory when None), or a
            property manager shared by replicas (``mountd.writable.properties.RedisPropertyManager``).
        users: The users file; None for anonymous access (see ``mountd.auth.access`` for who gets which role).
        swaps: Where reads asking for fresh data wait for a new generation
        (``mountd.http.freshness_headers``); feed
            it "swapped" notifications (``mountd.refresh.swap_listener``). A new one when None.

    Returns:
        ``RequestGuard`` → ``XmlBodyLimit`` → ``OpsEndpoints`` → ``ConditionalHeaders`` →
        ``FreshnessHeaders`` → ``RequestScope`` → wsgidav's ``WsgiDAVApp``.

    Raises:
        ArchiveError: ``store`` is neither a directory nor a file.
        SettingsError: A non-loopback host without users and without ``settings.allow_anonymous``.
        UsersFileError: ``users`` has no users.
    """
    metrics = MountdMetrics(freshness)
    provider = SyncProvider(
        store,
        CountingFreshness(freshness, metrics),
        resources=WritableResources(writable) if writable is not None else None,
        index=index,
        fresh_wait=settings.fresh_wait,
        swaps=swaps,
    )
    config: dict[str, Any] = {
        "provider_mapping": {"/": provider},
        "block_size": BLOCK_SIZE,
        "property_manager": _property_manager(property_store),
        "lock_storage": lock_storage,
        "suppress_version_info": True,
        "verbose": 3,
        "logging": {"enable": False},
        **auth_config(users, host=settings.host, allow_anonymous=settings.allow_anonymous),
        "dir_browser": {"enable": False},
        "middleware_stack": middleware_stack(),
        SETTINGS_CONFIG_KEY: settings,  # limits read by our middleware in wsgidav's stack (issue 12)
    }
    _suppress_version_info()
    # wsgidav logs "Share '/' will allow anonymous write access" here because SyncProvider.is_readonly() is
    # False (so that LOCK works); in read-only mode the resources refuse every write with 403 all the same.
    dav = WsgiDAVApp(config)
    ops = OpsEndpoints(
        ConditionalHeaders(FreshnessHeaders(RequestScope(dav))), metrics, health_check(store, freshness)
    )
    bounded = XmlBodyLimit(ops, max_body=settings.max_xml_body, max_elements=settings.max_xml_elements)
    return RequestGuard(bounded, host_names(settings.host, allowed_hosts))


def _property_manager(path: Path | Any | None) -> Any:
    if path is None:
        return True  # wsgidav's in-memory manager
    if not isinstance(path, Path):
        return (
            path  # a property manager object, e.g. mountd.writable.properties.RedisPropertyManager (replicas)
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(
            f"cannot create the property store's directory: {exc.strerror}", path=path
        ) from exc
    return ShelvePropertyManager(str(path))


def _suppress_version_info() -> None:
    # wsgidav honours "suppress_version_info" only in its own command line, by resetting these two
    # module-level strings that error pages print; do what it does.
    dav_util.public_wsgidav_info = "WsgiDAV"
    dav_util.public_python_info = "Python"


@dataclass
class ServerHandle:
    """A running server.

    Attributes:
        host: The address bound.
        port: The port bound (the real one when 0 was asked for).
        app: The application served.
    """

    host: str
    port: int
    app: RequestGuard
    _server: wsgi.Server
    _thread: threading.Thread

    @property
    def mount_url(self) -> str:
        """``http://host:port`` (IPv6 literals in brackets), as the reference's ``mount_url()``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def provider(self) -> SyncProvider:
        """The provider serving the store."""
        app: Any = self.app
        while not hasattr(app, "provider_map"):  # down the middleware chain to wsgidav's WsgiDAVApp
            app = app.app
        provider: SyncProvider = app.provider_map["/"]
        return provider

    @property
    def metrics(self) -> MountdMetrics:
        """The application's metrics (e.g. to attach the refresh scheduler's summary)."""
        app: Any = self.app
        while not isinstance(getattr(app, "metrics", None), MountdMetrics):
            app = app.app
        metrics: MountdMetrics = app.metrics
        return metrics

    def shutdown(self) -> None:
        """Stop accepting, let running requests finish (within ``SHUTDOWN_TIMEOUT``), join the thread."""
        self._server.stop()
        self._thread.join(SHUTDOWN_TIMEOUT)
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


def serve_background(
    settings: Settings,
    store: Path | None = None,
    freshness: FreshnessHook | None = None,
    *,
    index: ArchiveIndex | None = None,
    allowed_hosts: Iterable[str] = (),
    writable: WritePolicy | None = None,
    lock_storage: Any = True,
    property_store: Path | Any | None = None,
    users: UserTable | None = None,
    sendfile: bool = True,
    swaps: SwapWaiters | None = None,
) -> ServerHandle:
    """Bind and serve on a background thread; return once the socket listens.

    Args:
        settings: Host, port and (when ``store`` is None) the store.
        store: A store directory or one archive; ``settings.store`` when None.
        freshness: Told about expired archives being read; ``NullFreshness`` when None.
        index: The listing cache; a new one when None.
        allowed_hosts: Further host names clients may use.
        writable: The writable store's policy; None serves read-only.
        lock_storage: wsgidav's lock storage (see ``build_app``).
        property_store: Where dead properties persist (see ``build_app``).
        users: The users file; None for anonymous access.
        sendfile: Send payload bodies with ``os.sendfile`` (``mountd.http.sendfile``); False copies them in
            blocks, as over TLS.
        swaps: Where fresh-demanding reads wait (see ``build_app``).

    Returns:
        The handle; call ``shutdown`` (or use it as a context manager).

    Raises:
        ArchiveError: No store is given, or it is neither a directory nor a file.
        SettingsError: A non-loopback host without users and without ``settings.allow_anonymous``.
        UsersFileError: ``users`` has no users.
        OSError: The address cannot be bound.
    """
    root = store if store is not None else settings.store
    if root is None:
        raise ArchiveError("no store to serve: pass a store directory or an archive")
    app = build_app(
        settings,
        Path(root),
        freshness or NullFreshness(),
        index=index,
        allowed_hosts=allowed_hosts,
        writable=writable,
        lock_storage=lock_storage,
        property_store=property_store,
        users=users,
        swaps=swaps,
    )
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
    )
    server.expiration_interval = SELECTOR_INTERVAL
    server.gateway = gateway_class(sendfile=sendfile)
    server.prepare()  # binds and listens: the port is known and connections queue from here on
    bound = server.bind_addr
    thread = threading.Thread(target=server.serve, name="mountd-server", daemon=True)
    thread.start()
    handle = ServerHandle(str(bound[0]), int(bound[1]), app, server, thread)
    log.info("mountd listening url=%s store=%s", handle.mount_url, root)
    return handle


def serve(
    settings: Settings,
    store: Path | None = None,
    freshness: FreshnessHook | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
    users: UserTable | None = None,
    on_ready: Callable[[ServerHandle], object] | None = None,
    writable: WritePolicy | None = None,
    lock_storage: Any = True,
    property_store: Path | Any | None = None,
    swaps: SwapWaiters | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. Call from the main thread.

    Args:
        settings: Host, port and (when ``store`` is None) the store.
        store: A store directory or one archive; ``settings.store`` when None.
        freshness: Told about expired archives being read; ``NullFreshness`` when None.
        allowed_hosts: Further host names clients may use.
        users: The users file; None for anonymous access.
        on_ready: Called with the handle once the server listens (e.g. to print the URL).
        writable: The writable store's policy; None serves read-only.
        lock_storage: wsgidav's lock storage (see ``build_app``).
        property_store: Where dead properties persist (see ``build_app``).
        swaps: Where fresh-demanding reads wait (see ``build_app``).

    Raises:
        ArchiveError: No store is given, or it is neither a directory nor a file.
        SettingsError: A non-loopback host without users and without ``settings.allow_anonymous``.
        UsersFileError: ``users`` has no users.
        OSError: The address cannot be bound.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("mountd stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with serve_background(
            settings,
            store,
            freshness,
            allowed_hosts=allowed_hosts,
            writable=writable,
            lock_storage=lock_storage,
            property_store=property_store,
            users=users,
            swaps=swaps,
        ) as handle:
            if on_ready is not None:
                on_ready(handle)
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_writable(
    settings: Settings,
    store: Path | None = None,
    freshness: FreshnessHook | None = None,
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    on_ready: Callable[[ServerHandle], object] | None = None,
    lock_storage: Any = True,
) -> None:
    """Serve a store directory writable until SIGTERM or SIGINT (the reference's ``serve_writable``).

    The directory is created when missing, as the reference does.

    Args:
        settings: Host, port and (when ``store`` is None) the store.
        store: The store directory; ``settings.store`` when None.
        freshness: Told about expired archives being read; ``NullFreshness`` when None.
        max_upload: Largest PUT body in bytes.
        on_ready: Called with the handle once the server listens.
        lock_storage: wsgidav's lock storage (see ``build_app``).

    Raises:
        ArchiveError: No store is given, it is a file, or it cannot be created.
        OSError: The address cannot be bound.
    """
    root = writable_root(store if store is not None else settings.store)
    serve(
        settings,
        root,
        freshness,
        on_ready=on_ready,
        writable=WritePolicy(root, max_upload=max_upload),
        lock_storage=lock_storage,
    )


def writable_root(store: Path | None) -> Path:
    """The directory a writable server serves, created when missing, without abandoned temp files.

    Uploads and commits interrupted by a crash of their writer leave hidden temp files; those untouched for
    ``ABANDONED_TEMP_SECONDS`` are removed here (a file being written is younger: each write moves its mtime).

    Args:
        store: The store directory.

    Returns:
        Its absolute path.

    Raises:
        ArchiveError: No store is given, it is an existing file, or it cannot be created.
    """
    if store is None:
        raise ArchiveError("no store to serve: pass a store directory")
    root = Path(store).absolute()
    if root.exists() and not root.is_dir():
        raise ArchiveError("a writable store must be a directory, not a file", path=root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the store directory: {exc.strerror}", path=root) from exc
    removed = sweep_temp_files(root, older_than=ABANDONED_TEMP_SECONDS)
    if removed:
        log.info("abandoned temp files removed store=%s count=%d", root, len(removed))
    return root
