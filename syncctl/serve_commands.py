"""``syncctl serve``: serve a store (or one archive) over WebDAV with live refreshes, on one machine.

This module parses the arguments, builds the settings and mountd's config, and starts the local refresh
workers; mountd assembles the rest (``mountd.app.serve_with_broker``): the broker resolved once
(``--broker`` Redis, or the embedded one), a broker-backed freshness hook (an expired archive that is read
gets one refresh job, never delaying the read), the refresh scheduler on the same hook and the server's
listing cache (archives with update logic are asked for shortly before they expire; ``--no-scheduler``
leaves refreshes to reads), and the listener of the workers' "swapped" notifications (the scheduler
schedules each new generation at once, the listing cache drops the old one, reads waiting for fresh data
wake; see ``mountd.refresh.swap_listener``). Replicas serving the same store path on one broker share a
scheduler lease in Redis: one of them schedules (``broker.scheduling``). Stops on SIGINT/SIGTERM: the server
first, then the listener and the scheduler, then the workers (they finish the job in progress), then an
embedded broker it started.

Access (``mountd.auth.access``): without ``--auth`` only a loopback address may be served (anonymous users
are owners there) unless ``--allow-anonymous`` lets anonymous users read from other addresses; with ``--auth
FILE`` users log in with the passwords and roles ``syncctl user`` wrote. The users file is read before
anything starts, so a bad one fails the command at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.connection import BrokerConnection
    from broker.settings import Settings
    from mountd.app import Listening
    from mountd.auth.users import UserTable
    from mountd.writable.policy import WritePolicy

#: Pool processes of the local workers when serving with the embedded broker.
DEFAULT_LOCAL_CONCURRENCY = 2


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``serve`` to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    serve = subparsers.add_parser(
        "serve",
        parents=[common],
        help="serve a store over WebDAV (read-only) with live refreshes",
        description="Serve PATH (a store directory or one archive) over WebDAV; each archive appears as its "
        "payload. Reads of expired archives enqueue a refresh; without --broker the embedded broker and "
        "local workers make this work with nothing else installed or running.",
    )
    serve.add_argument("path", metavar="PATH", help="store directory or one .sync archive (SYNC_STORE)")
    serve.add_argument("--host", help="address to bind (SYNC_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (SYNC_PORT, default 4918; 0 picks one)")
    serve.add_argument("--broker", metavar="URL", help="Redis URL (SYNC_BROKER_URL); embedded when absent")
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        help=f"local worker pool processes (default {DEFAULT_LOCAL_CONCURRENCY} with the embedded broker, "
        "0 with --broker: run `syncctl worker` elsewhere)",
    )
    serve.add_argument("--cache-dir", metavar="DIR", help="cache and embedded-broker data (SYNC_CACHE_DIR)")
    serve.add_argument("--sandbox", choices=("strict", "permissive"), help="for local workers (SYNC_SANDBOX)")
    serve.add_argument(
        "--writable",
        action="store_true",
        help="accept uploads, deletes, moves and new folders (PATH must be a directory; created if missing)",
    )
    serve.add_argument(
        "--max-upload",
        metavar="SIZE",
        type=parse_size,
        default=None,
        help="largest upload with --writable, e.g. 512M or 16G (default 16G)",
    )
    serve.add_argument(
        "--auth",
        metavar="FILE",
        type=Path,
        help="users file (see `syncctl user`): clients log in with basic (or digest) authentication",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve a non-loopback address without --auth, read-only for anonymous clients; with --auth, "
        "clients without credentials read anonymously (SYNC_ALLOW_ANONYMOUS)",
    )
    serve.add_argument(
        "--fresh-wait",
        metavar="SECONDS",
        help="longest wait of a read asking for fresh data (Cache-Control: no-cache) for a refresh, e.g. 5s "
        "or 500ms; 0 never waits (SYNC_FRESH_WAIT, default 5s)",
    )
    serve.add_argument(
        "--processes",
        metavar="N",
        type=int,
        help="server processes sharing the port, under a supervisor that restarts a crashed one "
        "(SYNC_MOUNTD_PROCESSES, default 1): up to one per core for many small reads; each keeps its own "
        "caches and metrics (docs/serving.md)",
    )
    serve.add_argument(
        "--no-scheduler",
        action="store_true",
        help="refresh archives only when an expired one is read, not shortly before they expire",
    )
    serve.set_defaults(handler=cmd_serve)


def parse_size(text: str) -> int:
    """``--max-upload``'s value: bytes, or a number with K, M, G or T (powers of 1024).

    Args:
        text: The option's text.

    Returns:
        Bytes.

    Raises:
        argparse.ArgumentTypeError: Not a positive size.
    """
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in units else ""
    number = body[: len(body) - len(unit)]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1048576, 512M, 16G)")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    """``syncctl serve``.

    Args:
        args: Parsed arguments.

    Returns:
        0 after a clean shutdown.
    """
    from broker.settings import Settings
    from mountd.app import writable_root
    from mountd.auth.access import access_policy
    from mountd.auth.users import load_users
    from mountd.writable.policy import DEFAULT_MAX_UPLOAD, WritePolicy
    from sync_format.errors import SyncError

    settings = Settings.from_env(
        {
            "store": args.path,
            "host": args.host,
            "port": args.port,
            "broker_url": args.broker,
            "cache_dir": args.cache_dir,
            "sandbox": args.sandbox,
            "allow_anonymous": args.allow_anonymous,
            "fresh_wait": args.fresh_wait,
            "mountd_processes": args.processes,
        }
    )
    users = load_users(args.auth) if args.auth is not None else None
    # Refuse an unusable access configuration before a broker or workers are started.
    access_policy(users, host=settings.host, allow_anonymous=settings.allow_anonymous)
    path = Path(args.path)
    writable = None
    if args.writable:
        path = writable_root(path)
        writable = WritePolicy(path, max_upload=args.max_upload or DEFAULT_MAX_UPLOAD)
    elif args.max_upload is not None:
        raise SyncError("--max-upload needs --writable")
    return serve_store(
        settings,
        path,
        worker_count=args.workers,
        writable=writable,
        users=users,
        scheduler=not args.no_scheduler,
        log_format=args.log_format,
    )


def serve_store(
    settings: Settings,
    path: Path,
    *,
    worker_count: int | None = None,
    worker_log: Path | None = None,
    on_ready: Callable[[Listening], object] | None = None,
    writable: WritePolicy | None = None,
    users: UserTable | None = None,
    scheduler: bool = True,
    log_format: str = "text",
) -> int:
    """Serve ``path`` as ``syncctl serve`` does, until SIGTERM or SIGINT; ``syncctl demo`` uses it too.

    mountd assembles the server (``mountd.app.serve_with_broker``); this adds the local refresh workers and
    the ``serving …`` line.

    Args:
        settings: Built from flags and the environment.
        path: A store directory or one archive.
        worker_count: Local worker pool processes; None for the default (see ``--workers``).
        worker_log: Where the local workers' output goes; this process's stdout and stderr when None.
        on_ready: Called with the server (or the server processes, ``--processes``) once it listens, after
            the ``serving …`` line is printed.
        writable: Serve the store directory writable with this policy; read-only when None.
        users: Who may log in, and their roles; None for anonymous access (see ``mountd.auth.access``).
        scheduler: Ask for refreshes shortly before archives expire (``--no-scheduler`` turns it off).
        log_format: ``text`` or ``json``, for the local workers' logs (``--log-format``).

    Returns:
        0 after a clean shutdown.
    """
    from mountd.app import MountdConfig, serve_with_broker
    from syncctl.local_workers import LocalWorkers
    from syncctl.log_format import announce

    store = path.absolute()
    root = store if store.is_dir() else store.parent
    workers_wanted = worker_count
    if workers_wanted is None:
        workers_wanted = 0 if settings.broker_url else DEFAULT_LOCAL_CONCURRENCY

    def start_workers(connection: BrokerConnection) -> LocalWorkers | None:
        if workers_wanted <= 0:
            return None
        return LocalWorkers(
            store=root,
            broker_url=connection.redis_url,
            cache_dir=settings.cache_dir,
            concurrency=workers_wanted,
            sandbox=settings.sandbox,
            egress_allow_private=settings.egress_allow_private,
            log=worker_log,
            log_format=log_format,
        ).start()

    def ready(handle: Listening, connection: BrokerConnection) -> None:
        local = f", {workers_wanted} local worker processes" if workers_wanted > 0 else ""
        if settings.mountd_processes > 1:
            local += f", {settings.mountd_processes} server processes"
        mode = "writable" if writable is not None else "read-only"
        line = f"serving {store} ({mode}) at {handle.mount_url} (broker: {connection.description}{local})"
        if log_format == "json":
            announce(line, log_format)  # one JSON event like every other line of the service
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if on_ready is not None:
            on_ready(handle)

    config = MountdConfig(settings, store, writable=writable, users=users)
    serve_with_broker(config, scheduler=scheduler, start_workers=start_workers, on_ready=ready)
    return 0
