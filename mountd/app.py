"""mountd's assembly: what a server is built from (``MountdConfig``), and building and running it.

``build_app`` assembles wsgidav's ``WsgiDAVApp`` over a ``SyncProvider`` — whose resources come from the
read-only factory or the writable store's (``mountd.dav.factory``) — with the options the measurements in
``docs/serving.md`` call for (1 MiB blocks instead of wsgidav's 8 KiB, property and lock managers, no
version banners, our freshness-aware HTML browser in place of wsgidav's (``mountd.http.browser``),
authentication and roles from ``mountd.auth.access``), behind our middleware: ``RequestGuard`` (Host
check, path check), ``XmlBodyLimit``, ``OpsEndpoints`` (health, metrics), ``ConditionalHeaders``,
``FreshnessHeaders`` and ``RequestScope`` (closes each request's snapshots).

``start`` builds and listens (``mountd.server``); ``serve_background`` and ``serve`` are the same from
settings and keyword options (the fields of ``MountdConfig``, declared once there). ``serve_with_broker``
is the whole service ``syncctl serve`` runs: a broker-backed freshness hook, locks and dead properties of a
writable store in the broker's Redis, the "swapped" listener, and the refresh scheduler with its lease.

Invariants:
    * A ``MountdConfig`` is frozen: one value describes one server; nothing reaches into a built server to
      change it.
    * The server's handle carries its provider and metrics, so that nothing walks the middleware chain.
    * Whoever passes a freshness hook owns it (closes it after the server is down); ``serve_with_broker``
      owns the ones it makes.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.prop_man.property_manager import ShelvePropertyManager  # type: ignore[import-untyped]
from wsgidav.wsgidav_app import WsgiDAVApp  # type: ignore[import-untyped]

from broker import Settings
from broker.connection import BrokerConnection, connect
from broker.redis_client import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
from broker.scheduling import SchedulerLease, claims_held, write_summary
from mountd.auth.access import auth_config
from mountd.auth.digest_nonces import DIGEST_KEY_BYTES, DIGEST_KEY_CONFIG_KEY
from mountd.auth.users import UserTable
from mountd.dav.factory import ReadOnlyResources, ResourceFactory
from mountd.dav.facts_store import FactsStore
from mountd.dav.index import ArchiveIndex
from mountd.dav.provider import FreshnessHook, SyncProvider
from mountd.http.browser import middleware_stack
from mountd.http.freshness_headers import FreshnessHeaders, SwapWaiters
from mountd.http.middleware import ConditionalHeaders, RequestGuard, RequestScope, host_names
from mountd.http.payload_headers import SETTINGS_CONFIG_KEY
from mountd.http.xml_limits import XmlBodyLimit
from mountd.ops.endpoints import OpsEndpoints, health_check
from mountd.ops.metrics import CountingFreshness, MountdMetrics
from mountd.processes import Supervisor, bind_listener
from mountd.refresh.hooks import BrokerFreshness, NullFreshness, observe
from mountd.refresh.scheduler import FreshnessSummary, RefreshScheduler
from mountd.refresh.swap_listener import SwapListener
from mountd.server import LISTEN_BACKLOG, ServerHandle, listen, run_until_signal
from mountd.writable.factory import WritableResources
from mountd.writable.locks import RedisLockStorage
from mountd.writable.policy import WritePolicy
from mountd.writable.properties import RedisPropertyManager
from sync_format import ArchiveError
from sync_format.atomic import sweep_temp_files

log = logging.getLogger(__name__)

#: Bytes per read of a payload while streaming it; wsgidav's 8 KiB default runs at a sixth of 1 MiB's speed.
BLOCK_SIZE = 1024 * 1024
#: Seconds a temp file in a writable store may go unmodified before it counts as abandoned by a crash.
ABANDONED_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class MountdConfig:
    """Everything one mountd server is built from.

    Attributes:
        settings: Host, port, limits, ``fresh_wait`` and ``allow_anonymous``.
        store: A store directory or one archive.
        freshness: Told about expired archives being read (the caller owns it).
        writable: The writable store's policy; None serves read-only.
        users: The users file; None for anonymous access (see ``mountd.auth.access`` for who gets which role).
        allowed_hosts: Further host names clients may use (e.g. the machine's DNS name when binding a public
            address).
        lock_storage: wsgidav's lock storage: True for one in memory (one server process), or a shared one
            such as ``mountd.writable.locks.RedisLockStorage``.
        property_store: A file to keep dead properties in across restarts (in memory when None), or a
            property manager shared by replicas (``mountd.writable.properties.RedisPropertyManager``).
        index: The listing cache; when None, a new one with the facts store of ``settings``
            (``open_facts_store``), which the server's shutdown closes.
        swaps: Where reads asking for fresh data wait for a new generation
            (``mountd.http.freshness_headers``); feed it "swapped" notifications
            (``mountd.refresh.swap_listener``). A new one when None.
        sendfile: Send payload bodies with ``os.sendfile`` (``mountd.http.sendfile``); False copies them in
            blocks, as over TLS.
        digest_key: The key Digest nonces are signed with (``mountd.auth.digest_nonces``): the same for every
            process of one server; a new random one when None.
        process_slot: This server's slot among several processes on one socket (``mountd.processes``),
            exported by ``/metrics``; None for a server alone in its process group.
    """

    settings: Settings
    store: Path
    freshness: FreshnessHook = field(default_factory=NullFreshness)
    writable: WritePolicy | None = None
    users: UserTable | None = None
    allowed_hosts: tuple[str, ...] = ()
    lock_storage: Any = True
    property_store: Path | Any | None = None
    index: ArchiveIndex | None = None
    swaps: SwapWaiters | None = None
    sendfile: bool = True
    digest_key: bytes | None = field(default=None, repr=False)
    process_slot: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(self.store))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))

    @classmethod
    def of(
        cls,
        settings: Settings,
        store: Path | None = None,
        freshness: FreshnessHook | None = None,
        **options: Any,
    ) -> MountdConfig:
        """The config of ``settings`` and keyword options (``MountdConfig``'s fields).

        Args:
            settings: The settings.
            store: A store directory or one archive; ``settings.store`` when None.
            freshness: The hook; ``NullFreshness`` when None.
            **options: Further fields.

        Returns:
            The config.

        Raises:
            ArchiveError: No store is given.
            TypeError: An option that is no field.
        """
        root = store if store is not None else settings.store
        if root is None:
            raise ArchiveError("no store to serve: pass a store directory or an archive")
        return cls(settings, Path(root), freshness if freshness is not None else NullFreshness(), **options)


@dataclass(frozen=True)
class MountdApp:
    """An assembled application.

    Attributes:
        wsgi: The WSGI application (its outermost middleware).
        provider: The provider serving the store.
        metrics: The application's metrics.
    """

    wsgi: RequestGuard
    provider: SyncProvider
    metrics: MountdMetrics


def open_facts_store(settings: Settings) -> FactsStore | None:
    """The facts index on disk of ``settings`` (``mountd.dav.facts_store``), or None to keep facts in memory.

    None when ``settings.facts_index`` is off, when the settings name no cache directory (``Settings()``
    built in code has ``Path()``; settings read from the environment always name one), or when the
    directory may not be used (logged).

    Args:
        settings: Supplies ``cache_dir`` and ``facts_index``.

    Returns:
        The store or None.
    """
    if not settings.facts_index or settings.cache_dir == Path():
        return None
    return FactsStore.open(settings.cache_dir)


def build_app(config: MountdConfig) -> MountdApp:
    """The WSGI application serving ``config.store`` (read-only unless ``config.writable`` is given).

    Args:
        config: What to serve, and how.

    Returns:
        The application: ``RequestGuard`` → ``XmlBodyLimit`` → ``OpsEndpoints`` → ``ConditionalHeaders`` →
        ``FreshnessHeaders`` → ``RequestScope`` → wsgidav's ``WsgiDAVApp``, with its provider and metrics.

    Raises:
        ArchiveError: The store is neither a directory nor a file.
        SettingsError: A non-loopback host without users and without ``settings.allow_anonymous``.
        UsersFileError: ``users`` has no users.
    """
    resources: ResourceFactory = (
        WritableResources(config.writable) if config.writable is not None else ReadOnlyResources()
    )
    index = config.index
    if index is None:
        index = ArchiveIndex(name_rule=resources.name_rule, store=open_facts_store(config.settings))
    try:
        return _assemble(config, resources, index)
    except BaseException:
        index.close()
        raise


def _assemble(config: MountdConfig, resources: ResourceFactory, index: ArchiveIndex) -> MountdApp:
    settings = config.settings
    observed = observe(config.freshness)
    metrics = MountdMetrics(lambda: observed.counts)
    if config.process_slot is not None:
        metrics.identify_process(config.process_slot)
    provider = SyncProvider(
        config.store,
        CountingFreshness(config.freshness, metrics),
        resources=resources,
        index=index,
        fresh_wait=settings.fresh_wait,
        swaps=config.swaps,
    )
    dav_config: dict[str, Any] = {
        "provider_mapping": {"/": provider},
        "block_size": BLOCK_SIZE,
        "property_manager": _property_manager(config.property_store),
        "lock_storage": config.lock_storage,
        "suppress_version_info": True,
        "verbose": 2,
        "logging": {"enable": False},
        **auth_config(config.users, host=settings.host, allow_anonymous=settings.allow_anonymous),
        "dir_browser": {"enable": False},
        "middleware_stack": middleware_stack(),
        SETTINGS_CONFIG_KEY: settings,  # limits read by our middleware in wsgidav's stack (issue 12)
        DIGEST_KEY_CONFIG_KEY: config.digest_key,
    }
    _suppress_version_info()
    _forward_wsgidav_errors()
    # wsgidav logs "Share '/' will allow anonymous write access" here because SyncProvider.is_readonly() is
    # False (so that LOCK works); in read-only mode the resources refuse every write with 403 all the same.
    dav = WsgiDAVApp(dav_config)
    ops = OpsEndpoints(
        ConditionalHeaders(FreshnessHeaders(RequestScope(dav))),
        metrics,
        health_check(config.store, observed.broker_health),
    )
    bounded = XmlBodyLimit(ops, max_body=settings.max_xml_body, max_elements=settings.max_xml_elements)
    guard = RequestGuard(bounded, host_names(settings.host, config.allowed_hosts))
    return MountdApp(guard, provider, metrics)


class _WsgidavErrors(logging.Handler):
    """Passes wsgidav's error records (a request that failed with 500, and its traceback) to mountd's log.

    wsgidav's loggers end at its base logger ``wsgidav``, which does not propagate (its logging is off here,
    ``"logging": {"enable": False}``, to keep its per-request lines out): a 500 left no trace in any log.
    """

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("e.src_exception:"):  # (the exception once more, after its traceback)
            log.error("request failed inside wsgidav: %s", message)


def _forward_wsgidav_errors() -> None:
    # Once per process, however many apps are built.
    errors = logging.getLogger("wsgidav.error_printer")
    if not any(isinstance(handler, _WsgidavErrors) for handler in errors.handlers):
        errors.addHandler(_WsgidavErrors(logging.ERROR))


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


def start(config: MountdConfig, *, sock: socket.socket | None = None) -> ServerHandle:
    """Build the application of ``config`` and serve it on a background thread (``mountd.server.listen``).

    Args:
        config: What to serve, and how.
        sock: A listening socket shared with other server processes (``mountd.processes``) to serve instead
            of binding ``config.settings``' host and port.

    Returns:
        The handle, once the socket listens; call ``shutdown`` (or use it as a context manager).

    Raises:
        ArchiveError: The store is neither a directory nor a file.
        SettingsError: A non-loopback host without users and without ``settings.allow_anonymous``.
        UsersFileError: ``users`` has no users.
        OSError: The address cannot be bound.
    """
    app = build_app(config)
    try:
        return listen(
            config.settings, app.wsgi, app.provider, app.metrics, sendfile=config.sendfile, sock=sock
        )
    except BaseException:
        app.provider.index.close()
        raise


def serve_background(
    settings: Settings, store: Path | None = None, freshness: FreshnessHook | None = None, **options: Any
) -> ServerHandle:
    """``start`` with the config of ``settings`` and keyword options (``MountdConfig.of``).

    Args:
        settings: Host, port and (when ``store`` is None) the store.
        store: A store directory or one archive; ``settings.store`` when None.
        freshness: Told about expired archives being read; ``NullFreshness`` when None.
        **options: Further ``MountdConfig`` fields (``writable``, ``users``, ``lock_storage`` …).

    Returns:
        The handle.
    """
    return start(MountdConfig.of(settings, store, freshness, **options))


def serve(
    settings: Settings,
    store: Path | None = None,
    freshness: FreshnessHook | None = None,
    *,
    on_ready: Callable[[ServerHandle], object] | None = None,
    **options: Any,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. Call from the main thread.

    Args:
        settings: Host, port and (when ``store`` is None) the store.
        store: A store directory or one archive; ``settings.store`` when None.
        freshness: Told about expired archives being read; ``NullFreshness`` when None.
        on_ready: Called with the handle once the server listens (e.g. to print the URL).
        **options: Further ``MountdConfig`` fields.
    """
    run_until_signal(start(MountdConfig.of(settings, store, freshness, **options)), on_ready)


class Listening(Protocol):
    """What ``serve_with_broker``'s ``on_ready`` is told: a ``ServerHandle``, or the processes' handle."""

    @property
    def mount_url(self) -> str:
        """``http://host:port``."""


class Stoppable(Protocol):
    """A service started next to the server (e.g. ``syncctl``'s local workers), stopped after it."""

    def stop(self) -> None:
        """Stop it (blocking until it has)."""


def serve_with_broker(
    config: MountdConfig,
    *,
    scheduler: bool = True,
    start_workers: Callable[[BrokerConnection], Stoppable | None] | None = None,
    on_ready: Callable[[Listening, BrokerConnection], object] | None = None,
) -> None:
    """Serve ``config`` with live refreshes from the broker of ``config.settings`` until SIGTERM or SIGINT.

    The broker is resolved once (``broker.connection.connect``: ``settings.broker_url``, or the embedded
    one). Reads of expired archives get a ``BrokerFreshness`` hook; a writable store keeps its locks and
    dead properties in the broker's Redis (every mountd of the store, and a restarted one, sees them); the
    workers' "swapped" notifications drop the listing cache's old version, wake reads waiting for fresh data
    and (with ``scheduler``) schedule the new generation; the refresh scheduler runs on the server's listing
    cache, and replicas serving the same store share its lease (``broker.scheduling``): one of them asks for
    refreshes. Stops the server first, then the listener and the scheduler, then what ``start_workers``
    started (workers finish the job in progress), then the hook and the broker.

    With ``settings.mountd_processes`` above 1 this process becomes the supervisor of that many server
    processes on one listening socket (``mountd.processes``); each builds all of the above for itself on
    the one broker, and locks and dead properties live in the broker's Redis for a read-only store too, so
    that a lock taken through one process holds in all of them. Digest nonces are signed with one key
    passed to every process (``mountd.auth.digest_nonces``).

    Args:
        config: What to serve; its ``freshness``, ``lock_storage``, ``property_store`` and ``swaps`` are
            replaced by the broker-backed ones.
        scheduler: Ask for refreshes shortly before archives expire (else only when an expired one is read).
        start_workers: Starts local refresh workers on the resolved broker (or returns None); called before
            the server listens.
        on_ready: Called with the server (or, with several processes, the process group) and the broker once
            the server listens and the listener runs.

    Raises:
        BrokerUnavailable: The broker cannot be reached or started.
        ProcessesFailed: A server process exited during start-up (several processes).
        ArchiveError, SettingsError, UsersFileError, OSError: As ``start``.
    """
    settings = config.settings
    count = settings.mountd_processes
    with connect(settings) as connection:
        workers = start_workers(connection) if start_workers is not None else None
        try:
            if count == 1:
                _serve_one(
                    config,
                    connection,
                    scheduler=scheduler,
                    on_ready=None if on_ready is None else lambda handle: on_ready(handle, connection),
                )
                return
            # Checked here, once, so that a bad store or users file fails the command before any fork.
            build_app(config)
            shared = replace(config, digest_key=config.digest_key or secrets.token_bytes(DIGEST_KEY_BYTES))
            listener = bind_listener(settings.host, settings.port, LISTEN_BACKLOG)

            def child(slot: int, ready: Callable[[], None]) -> None:
                _serve_one(
                    replace(shared, process_slot=slot),
                    connection,
                    scheduler=scheduler,
                    on_ready=lambda handle: ready(),
                    sock=listener,
                )

            Supervisor(count, listener, child).run(
                None if on_ready is None else lambda group: on_ready(group, connection)
            )
        finally:
            if workers is not None:
                workers.stop()


def _serve_one(
    config: MountdConfig,
    connection: BrokerConnection,
    *,
    scheduler: bool,
    on_ready: Callable[[ServerHandle], object] | None,
    sock: socket.socket | None = None,
) -> None:
    """One server process of ``serve_with_broker``: its hook, listener and scheduler, until a signal."""
    settings = config.settings
    store = config.store.absolute()
    root = store if store.is_dir() else store.parent
    scope = str(store)
    freshness = BrokerFreshness.connect(settings, connection)
    # One client for the lease, claim probes and summaries; the listener's subscription holds its own.
    client = make_redis(
        connection.redis_url,
        socket_timeout=SERVICE_SOCKET_TIMEOUT,
        connect_timeout=SERVICE_CONNECT_TIMEOUT,
    )
    listen_client = make_redis(
        connection.redis_url,
        socket_timeout=SERVICE_SOCKET_TIMEOUT,
        connect_timeout=SERVICE_CONNECT_TIMEOUT,
    )
    swaps = SwapWaiters()
    shared: dict[str, Any] = {}
    if config.writable is not None or settings.mountd_processes > 1:
        # Locks and dead properties (PROPPATCH) of a writable store live in the broker's Redis: they
        # survive restarts (the embedded broker keeps an append-only file) and every mountd of the store,
        # replicas behind a load balancer and the processes of one mountd included, sees the same ones.
        prefix = f"sync:dav:{root}:"
        shared = {
            "lock_storage": RedisLockStorage(connection.redis_url, prefix=prefix),
            "property_store": RedisPropertyManager(connection.redis_url, prefix=prefix),
        }
    running: RefreshScheduler | None = None
    listener: SwapListener | None = None
    try:
        handle = start(replace(config, freshness=freshness, swaps=swaps, **shared), sock=sock)

        def ready(handle: ServerHandle) -> None:
            nonlocal running, listener
            index = handle.provider.index
            callbacks: list[Callable[[Any], object]] = [
                lambda event: index.forget(root / event.archive),
                swaps.notify,
            ]
            on_connect: list[Callable[[], object]] = []
            if scheduler:
                # On the server's index, so a pass and the reads open each archive version once in all.

                def publish(summary: FreshnessSummary) -> None:
                    if summary.leader:
                        write_summary(client, scope, {"store": scope, **summary.to_json()})

                running = RefreshScheduler(
                    store,
                    freshness,
                    index,
                    window=settings.scheduler_window,
                    claim_probe=lambda keys: claims_held(client, keys),
                    lease=SchedulerLease(client, scope),
                    publish=publish,
                )
                callbacks.insert(0, running.on_swapped)
                on_connect.append(running.wake)
                handle.metrics.attach_scheduler(running.summary)
                running.start()
            listener = SwapListener(listen_client, callbacks, on_connect=on_connect).start()
            if on_ready is not None:
                on_ready(handle)

        run_until_signal(handle, ready)
    finally:
        if listener is not None:
            listener.close()
        if running is not None:
            running.close()
        client.close()
        listen_client.close()
        freshness.close()


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
