"""The service half of ``syncctl``: ``worker`` consumes refresh jobs; ``refresh`` and ``status`` talk to them.

Each command builds ``Settings`` from its flags and the environment and resolves the broker once
(``broker.connection.connect``: the ``--broker`` Redis, or the embedded one). Celery, Redis and the guest
runtime are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sync_format.escape import escape_text
from syncctl.broker_options import broker_options


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add the service commands to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    broker = broker_options()

    worker = subparsers.add_parser(
        "worker",
        parents=[common, broker],
        help="run a refresh worker",
        description="Consume refresh jobs from the broker and run them in the sandbox (Celery prefork pool).",
    )
    worker.add_argument("--store", metavar="DIR", help="the store the jobs refer to (SYNC_STORE)")
    worker.add_argument("--concurrency", metavar="N", type=int, default=None, help="pool processes (cores)")
    worker.add_argument("--name", metavar="NAME", help="worker node name (default sync@<host>)")
    worker.add_argument("--sandbox", choices=("strict", "permissive"), help="SYNC_SANDBOX")
    worker.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=int,
        help="serve GET /metrics and /health on this port (SYNC_METRICS_PORT; default 0: off)",
    )
    worker.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="address of the metrics port (SYNC_METRICS_HOST, default 127.0.0.1)",
    )
    worker.set_defaults(handler=cmd_worker)

    refresh = subparsers.add_parser(
        "refresh",
        parents=[common, broker],
        help="ask the workers to refresh an archive",
        description="Enqueue a refresh of ARCHIVE (merged into one already queued or running).",
    )
    refresh.add_argument("archive", metavar="PATH", help="the archive")
    refresh.add_argument("--store", metavar="DIR", help="the store it belongs to (default: its directory)")
    refresh.add_argument("--wait", action="store_true", help="wait until a worker finished the refresh")
    refresh.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait")
    refresh.set_defaults(handler=cmd_refresh)

    status = subparsers.add_parser(
        "status",
        parents=[common, broker],
        help="show refresh status and history",
        description="Show the last refresh of each archive (or of PATH, with its history).",
    )
    status.add_argument("archive", metavar="PATH", nargs="?", help="one archive")
    status.add_argument("--store", metavar="DIR", help="the store (SYNC_STORE; default: PATH's directory)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)


def _settings(args: argparse.Namespace, *, defaults: Any = None, **extra: Any) -> Any:
    from broker.settings import Settings

    overrides = {"broker_url": args.broker, "cache_dir": args.cache_dir, **extra}
    return Settings.from_env(overrides, defaults=defaults)


def cmd_worker(args: argparse.Namespace) -> int:
    """``syncctl worker``: run a Celery worker with our app, settings and task.

    Args:
        args: Parsed arguments.

    Returns:
        The worker's exit status.
    """
    from celery import signals  # type: ignore[import-untyped]

    from broker.celery_app import make_celery_app
    from broker.connection import connect
    from broker.contract import QUEUE_REFRESH
    from broker.settings import WORKER_DEFAULTS
    from sync_format.errors import SyncError
    from syncctl.log_format import announce, use_formatter
    from workers.metrics_server import start_endpoint
    from workers.tasks import register_tasks

    settings = _settings(
        args,
        store=args.store,
        sandbox=args.sandbox,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        defaults=WORKER_DEFAULTS,
    )
    if settings.store is None:
        raise SyncError("a worker needs the store its jobs refer to: pass --store or set SYNC_STORE")
    log_format = getattr(args, "log_format", "text")
    if log_format != "text":
        # Celery replaces the root logger's handlers (worker_hijack_root_logger) and gives its task logger
        # one of its own; both signals fire right after, in this process, before the pool forks.
        def restyle(logger: Any, **_: Any) -> None:
            use_formatter(logger, log_format)

        signals.after_setup_logger.connect(restyle, weak=False)
        signals.after_setup_task_logger.connect(restyle, weak=False)
    with connect(settings) as connection:
        app = make_celery_app(settings, broker_url=connection.celery_url)
        register_tasks(app, settings, broker_url=connection.redis_url)
        endpoint = start_endpoint(settings, connection.redis_url)
        if endpoint is not None:
            signals.worker_process_init.connect(endpoint.close_inherited, weak=False)
        argv = [
            *(["--quiet"] if log_format != "text" else []),  # the banner is not a log line
            "worker",
            f"--queues={QUEUE_REFRESH}",
            "--pool=prefork",
            f"--hostname={args.name or 'sync@' + socket.gethostname()}",
            "--events",
            "--loglevel=INFO",
        ]
        if args.concurrency is not None:
            argv.append(f"--concurrency={args.concurrency}")
        metrics = "" if endpoint is None else ", metrics on {}:{}".format(*endpoint.address)
        announce(f"worker: store {settings.store}, broker {connection.description}{metrics}", log_format)
        try:
            app.worker_main(argv)
        finally:
            if endpoint is not None:
                endpoint.stop()
    return 0


def _store_and_key(args: argparse.Namespace, settings: Any) -> tuple[Path, str]:
    from broker.contract import archive_key

    archive = Path(args.archive)
    store = Path(args.store) if args.store else settings.store or archive.parent
    return store, archive_key(store, archive)


def cmd_refresh(args: argparse.Namespace) -> int:
    """``syncctl refresh``: enqueue one refresh (optionally wait for its outcome).

    Args:
        args: Parsed arguments.

    Returns:
        0 when queued or merged (and, with ``--wait``, finished successfully), else 1.
    """
    from broker.celery_app import job_time_limits, make_celery_app
    from broker.connection import connect
    from broker.contract import RefreshRequest
    from broker.redis_client import PRODUCER_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
    from broker.requests import PendingRefreshes, RequestResult, request_refresh
    from broker.status import read_status
    from sync_format import open_archive
    from sync_format.errors import BrokerUnavailable
    from syncctl.errors import CommandFailed, RefreshFailed

    settings = _settings(args)
    _, key = _store_and_key(args, settings)
    with open_archive(args.archive) as snap:
        generation, timeout = snap.generation, snap.manifest.policy.timeout
    with connect(settings) as connection:
        app = make_celery_app(settings, broker_url=connection.celery_url)
        client = make_redis(
            connection.redis_url,
            socket_timeout=SERVICE_SOCKET_TIMEOUT,
            connect_timeout=PRODUCER_CONNECT_TIMEOUT,
        )
        started = time.time()
        request = RefreshRequest.new(key, generation)
        # An operator's explicit refresh: not swallowed by the cooldown after a failed or unchanged end.
        result = request_refresh(
            app, client, request, PendingRefreshes(), limits=job_time_limits(timeout, settings), force=True
        )
        if result is RequestResult.DEFERRED:
            raise BrokerUnavailable(f"the broker at {connection.description} is not reachable")
        sys.stdout.write(f"{key}: {result.value} (generation {generation})\n")
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            record = read_status(client, key)
            if record is not None and record.status != "running" and record.updated_at.timestamp() >= started:
                sys.stdout.write(f"{key}: {record.status} (generation {record.generation})\n")
                if record.error_code:
                    raise RefreshFailed(record.error_code, record.error)
                return 0
            time.sleep(0.2)
        raise CommandFailed(
            f"no worker finished the refresh of {key} within {args.timeout:g} s", code="timeout"
        )


def cmd_status(args: argparse.Namespace) -> int:
    """``syncctl status``: the last refresh of every archive, or one archive's history.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from broker.connection import connect
    from broker.redis_client import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
    from broker.scheduling import read_summaries
    from broker.status import list_status, read_history

    settings = _settings(args, store=args.store)
    summaries: dict[str, dict[str, Any]] = {}
    with connect(settings) as connection:
        client = make_redis(
            connection.redis_url,
            socket_timeout=SERVICE_SOCKET_TIMEOUT,
            connect_timeout=SERVICE_CONNECT_TIMEOUT,
        )
        if args.archive:
            _, key = _store_and_key(args, settings)
            records = read_history(client, key)
        else:
            records = list_status(client)
            summaries = read_summaries(client)
    docs = [r.to_json() for r in records]
    if args.json:
        json.dump(docs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for scope, summary in summaries.items():
        sys.stdout.write(freshness_line(scope, summary) + os.linesep)
    for doc in docs:
        error = f" {doc['error_code']}: {escape_text(doc['error'])}" if doc.get("error_code") else ""
        sys.stdout.write(
            f"{doc['archive']}  {doc['status']}  generation {doc['generation']}  "
            f"{doc.get('updated_at', '')}  {escape_text(doc.get('worker') or '')}{error}{os.linesep}"
        )
        for line in doc.get("guest_log") or ():  # the guest's own lines (ABI v2 log), already escaped
            sys.stdout.write(f"    guest: {line}{os.linesep}")
        for refused in doc.get("egress") or []:
            # Stored escaped; escaped again here in case the record was written by something else.
            rule, host = escape_text(refused["rule"]), escape_text(refused["host"])
            reason = escape_text(refused["reason"])
            sys.stdout.write(f"    egress {rule} ({refused['code']}) host {host}: {reason}{os.linesep}")
    if not docs:
        sys.stdout.write("no refreshes recorded\n")
    return 0


def freshness_line(scope: str, summary: dict[str, Any]) -> str:
    """One line of ``syncctl status`` for a scheduler's published summary (``broker.scheduling``).

    Args:
        scope: The store the scheduler looks after.
        summary: Its summary (``mountd.refresh.scheduler.FreshnessSummary.to_json``).

    Returns:
        ``freshness STORE: N archives, E expired now, queue W waiting + F in flight (window K), refresh lag
        mean/max seconds past expiry over C commits``.
    """
    count = int(summary.get("lag_count") or 0)
    mean = float(summary.get("lag_sum") or 0) / count if count else 0.0
    return (
        f"freshness {scope}: {summary.get('archives', 0)} archives, {summary.get('expired', 0)} expired now, "
        f"queue {summary.get('waiting', 0)} waiting + {summary.get('in_flight', 0)} in flight "
        f"(window {summary.get('window')}), refresh lag mean {mean:.1f} s max "
        f"{float(summary.get('lag_max') or 0):.1f} s over {count} commits"
    )
