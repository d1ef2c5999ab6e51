"""The contract shared by producers (mountd) and consumers (workers) of refresh jobs.

Task and queue names and the refresh request codec (``contract``), the Celery app factory (``celery_app``),
the one-refresh-per-archive claim (``claims``; taken with its message in one script, ``claimed_send``), one
delivery's life from start to release (``job``), the worker's consumer with batched task events
(``task_events``), ``request_refresh`` that never fails a read (``requests``), status records and failed
jobs (``status``, ``failed``), the swapped notification (``swapped``), Redis clients (``redis_client``), the
embedded broker (``embedded``), the retry backoff (``retry``), and the ``Settings`` both sides are
configured by. Nothing here holds a module-level app or client.

Names are loaded on first use (PEP 562): ``import broker`` or ``from broker.settings import Settings``
imports neither Celery nor Redis, so commands that only read archives start fast; ``from broker import
request_refresh`` imports the one submodule that defines it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.celery_app import (
        job_time_limits,
        make_celery_app,
    )
    from broker.contract import (
        QUEUE_REFRESH,
        TASK_REFRESH,
        ArchiveKey,
        MalformedRecord,
        RefreshRequest,
        RefreshStatus,
        archive_key,
        archive_path,
    )
    from broker.embedded import (
        EmbeddedRedis,
        find_redis_server,
    )
    from broker.failed import (
        FailedJob,
        forget_failed,
        list_failed,
    )
    from broker.job import RefreshJob
    from broker.redis_client import (
        PRODUCER_CONNECT_TIMEOUT,
        PRODUCER_SOCKET_TIMEOUT,
        SERVICE_CONNECT_TIMEOUT,
        SERVICE_SOCKET_TIMEOUT,
        make_redis,
        ping,
    )
    from broker.requests import (
        PendingRefreshes,
        RequestResult,
        replay_pending,
        request_refresh,
    )
    from broker.retry import RetryPolicy
    from broker.settings import (
        Settings,
        SettingsError,
    )
    from broker.status import (
        StatusRecord,
        forget_status,
        list_status,
        read_history,
        read_status,
    )
    from broker.swapped import SwappedSubscription

#: Public name -> the ``broker`` submodule that defines it.
_EXPORTS = {
    "job_time_limits": "celery_app",
    "make_celery_app": "celery_app",
    "ArchiveKey": "contract",
    "MalformedRecord": "contract",
    "QUEUE_REFRESH": "contract",
    "RefreshRequest": "contract",
    "RefreshStatus": "contract",
    "TASK_REFRESH": "contract",
    "archive_key": "contract",
    "archive_path": "contract",
    "EmbeddedRedis": "embedded",
    "find_redis_server": "embedded",
    "FailedJob": "failed",
    "forget_failed": "failed",
    "list_failed": "failed",
    "RefreshJob": "job",
    "PRODUCER_CONNECT_TIMEOUT": "redis_client",
    "PRODUCER_SOCKET_TIMEOUT": "redis_client",
    "SERVICE_CONNECT_TIMEOUT": "redis_client",
    "SERVICE_SOCKET_TIMEOUT": "redis_client",
    "make_redis": "redis_client",
    "ping": "redis_client",
    "PendingRefreshes": "requests",
    "RequestResult": "requests",
    "replay_pending": "requests",
    "request_refresh": "requests",
    "RetryPolicy": "retry",
    "Settings": "settings",
    "SettingsError": "settings",
    "StatusRecord": "status",
    "forget_status": "status",
    "list_status": "status",
    "read_history": "status",
    "read_status": "status",
    "SwappedSubscription": "swapped",
}

__all__ = [
    "PRODUCER_CONNECT_TIMEOUT",
    "PRODUCER_SOCKET_TIMEOUT",
    "QUEUE_REFRESH",
    "SERVICE_CONNECT_TIMEOUT",
    "SERVICE_SOCKET_TIMEOUT",
    "TASK_REFRESH",
    "ArchiveKey",
    "EmbeddedRedis",
    "FailedJob",
    "MalformedRecord",
    "PendingRefreshes",
    "RefreshJob",
    "RefreshRequest",
    "RefreshStatus",
    "RequestResult",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "StatusRecord",
    "SwappedSubscription",
    "archive_key",
    "archive_path",
    "find_redis_server",
    "forget_failed",
    "forget_status",
    "job_time_limits",
    "list_failed",
    "list_status",
    "make_celery_app",
    "make_redis",
    "ping",
    "read_history",
    "read_status",
    "replay_pending",
    "request_refresh",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"broker.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
