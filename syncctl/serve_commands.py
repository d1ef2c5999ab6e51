"""``syncctl serve``: serve a store (or one archive) over WebDAV with live refreshes, on one machine.

It resolves the broker once (``--broker`` Redis, or the embedded one), gives mountd a broker-backed
freshness hook (an expired archive that is read gets one refresh job, never delaying the read), and unless
told otherwise starts local refresh workers on the same broker. Stops on SIGINT/SIGTERM: the server first,
then the workers (they finish the job in progress), then an embedded broker it started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``syncctl serve``.

    Args:
        args: Parsed arguments.

    Returns:
        0 after a clean shutdown.
    """
    from broker.connection import connect
    from broker.settings import Settings
    from mountd.freshness import BrokerFreshness
    from mountd.server import ServerHandle, serve
    from syncctl.local_workers import LocalWorkers

    settings = Settings.from_env(
        {
            "store": args.path,
            "host": args.host,
            "port": args.port,
            "broker_url": args.broker,
            "cache_dir": args.cache_dir,
            "sandbox": args.sandbox,
        }
    )
    store = Path(args.path).absolute()
    root = store if store.is_dir() else store.parent
    workers_wanted = args.workers
    if workers_wanted is None:
        workers_wanted = 0 if settings.broker_url else DEFAULT_LOCAL_CONCURRENCY
    with connect(settings) as connection:
        freshness = BrokerFreshness.connect(settings, connection)
        workers = None
        if workers_wanted > 0:
            workers = LocalWorkers(
                store=root,
                broker_url=connection.redis_url,
                cache_dir=settings.cache_dir,
                concurrency=workers_wanted,
                sandbox=settings.sandbox,
                log_format=getattr(args, "log_format", "text"),
            ).start()

        def ready(handle: ServerHandle) -> Any:
            local = f", {workers_wanted} local worker processes" if workers is not None else ""
            sys.stdout.write(
                f"serving {store} at {handle.mount_url} (broker: {connection.description}{local})\n"
            )
            sys.stdout.flush()

        try:
            serve(settings, store, freshness, on_ready=ready)
        finally:
            freshness.close()
            if workers is not None:
                workers.stop()
    return 0
