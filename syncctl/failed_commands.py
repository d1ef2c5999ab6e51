"""``syncctl failed list|retry|forget``: the refreshes that gave up, and what an operator does about them.

Jobs land in the failed list (``broker.failed``) after a deterministic failure or when their retries ran
out. ``list`` shows them newest first; ``retry KEY`` sends a new refresh of the archive (from its current
generation when the store is known here, else from the failed request's) and drops its entries;
``forget KEY`` drops its entries and its status record and history (the archive left the store). KEY is an
archive key as ``list`` prints it; it is checked here, where it enters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sync_format.escape import escape_text
from syncctl.broker_options import broker_options


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``failed`` to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    broker = broker_options()
    failed = subparsers.add_parser(
        "failed",
        parents=[common, broker],
        help="list, retry or forget refreshes that gave up",
        description="The refreshes that gave up (newest first), and retrying or forgetting them.",
    )
    actions = failed.add_subparsers(dest="failed_action", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common, broker], help="list failed refreshes (default)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--limit", type=int, default=100, help="most entries shown (default 100)")
    retry = actions.add_parser("retry", parents=[common, broker], help="send a new refresh of KEY")
    retry.add_argument("key", metavar="KEY", help="the archive key, as 'failed list' prints it")
    retry.add_argument(
        "--store", metavar="DIR", help="the store (SYNC_STORE): start from the current generation"
    )
    forget = actions.add_parser("forget", parents=[common, broker], help="drop KEY's failures and status")
    forget.add_argument("key", metavar="KEY", help="the archive key, as 'failed list' prints it")
    failed.set_defaults(handler=cmd_failed, json=False, limit=100)


def cmd_failed(args: argparse.Namespace) -> int:
    """``syncctl failed``: dispatch to list (the default), retry or forget.

    Args:
        args: Parsed arguments.

    Returns:
        0 (failures raise: ``MalformedRecord`` for a bad key, ``BrokerUnavailable``, ``CommandFailed``).
    """
    from broker.connection import connect
    from broker.contract import ArchiveKey
    from broker.redis_client import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
    from broker.settings import Settings

    action = args.failed_action or "list"
    key = ArchiveKey(args.key) if action != "list" else None
    settings = Settings.from_env(
        {"broker_url": args.broker, "cache_dir": args.cache_dir, "store": getattr(args, "store", None)}
    )
    with connect(settings) as connection:
        client = make_redis(
            connection.redis_url,
            socket_timeout=SERVICE_SOCKET_TIMEOUT,
            connect_timeout=SERVICE_CONNECT_TIMEOUT,
        )
        try:
            if key is None:
                return _list(client, args)
            if action == "forget":
                return _forget(client, key)
            return _retry(client, key, settings, connection.celery_url)
        finally:
            client.close()


def _list(client: Any, args: argparse.Namespace) -> int:
    from broker.failed import list_failed

    jobs = [job.to_json() for job in list_failed(client, limit=args.limit)]
    if args.json:
        json.dump(jobs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for job in jobs:
        sys.stdout.write(
            f"{escape_text(job['request']['archive'])}  {job['error_code']}  attempts {job['attempts']}  "
            f"{job['failed_at']}  {escape_text(job['worker'])}: {escape_text(job['error'] or '')}{os.linesep}"
        )
    if not jobs:
        sys.stdout.write("no failed refreshes\n")
    return 0


def _forget(client: Any, key: Any) -> int:
    from broker.failed import forget_failed
    from broker.status import forget_status

    dropped = forget_failed(client, key)
    forget_status(client, key)
    sys.stdout.write(f"{escape_text(key)}: forgot {dropped} failed job(s) and its status\n")
    return 0


def _retry(client: Any, key: Any, settings: Any, celery_url: str) -> int:
    from broker.celery_app import job_time_limits, make_celery_app
    from broker.contract import RefreshRequest, archive_path
    from broker.failed import forget_failed, list_failed
    from broker.requests import PendingRefreshes, RequestResult, request_refresh
    from sync_format import open_archive
    from sync_format.errors import BrokerUnavailable
    from syncctl.errors import CommandFailed

    last = next((job for job in list_failed(client) if job.request.archive == key), None)
    if last is None:
        raise CommandFailed(f"{key}: no failed refresh of this archive is recorded", code="not_failed")
    generation, timeout = last.request.base_generation, 0.0
    if settings.store is not None:
        with open_archive(archive_path(settings.store, key)) as snap:
            generation, timeout = snap.generation, snap.manifest.policy.timeout
    app = make_celery_app(settings, broker_url=celery_url)
    request = RefreshRequest.new(key, generation)
    # An operator's explicit retry: not swallowed by the cooldown after the failure it retries.
    result = request_refresh(
        app, client, request, PendingRefreshes(), limits=job_time_limits(timeout, settings), force=True
    )
    if result is RequestResult.DEFERRED:
        raise BrokerUnavailable("the broker is not reachable: nothing was sent")
    dropped = forget_failed(client, key)
    sys.stdout.write(
        f"{escape_text(key)}: {result.value} (generation {generation}); dropped {dropped} failed job(s)\n"
    )
    return 0
