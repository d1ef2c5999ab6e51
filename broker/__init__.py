"""The contract shared by producers (mountd) and consumers (workers) of refresh jobs.

Task and queue names and the refresh request codec (``contract``), the Celery app factory (``celery_app``),
the one-refresh-per-archive claim (``claims``), ``request_refresh`` that never fails a read (``requests``),
status records and failed jobs (``status``, ``failed``), the swapped notification (``swapped``), Redis
clients (``redis_client``), the embedded broker (``embedded``), the retry backoff (``retry``), and the
``Settings`` both sides are configured by. Nothing here holds a module-level app or client.

Names are loaded on first use (PEP 562): ``import broker`` or ``from broker.settings import Settings``
imports neither Celery nor Redis, so commands that only read archives start fast; ``from broker import
request_refresh`` imports the one submodule that defines it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.celery_app import (
        TimeLimits,
        guest_budget,
        job_time_limits,
        make_celery_app,
        visibility_timeout,
    )
    from broker.claims import (
        QUEUED_CLAIM_TTL_MS,
        RUNNING_CLAIM_TTL_MS,
        ClaimHolder,
        ClaimResult,
        Claims,
        claim_key,
    )
    from broker.contract import (
        QUEUE_REFRESH,
        SWAPPED_CHANNEL,
        TASK_REFRESH,
        MalformedRecord,
        RefreshRequest,
        archive_key,
        archive_path,
        validate_archive_key,
    )
    from broker.embedded import EmbeddedRedis, find_redis_server
    from broker.failed import FailedJob, list_failed, record_failed
    from broker.redis_client import (
        PRODUCER_CONNECT_TIMEOUT,
        PRODUCER_SOCKET_TIMEOUT,
        SERVICE_CONNECT_TIMEOUT,
        SERVICE_SOCKET_TIMEOUT,
        make_redis,
        ping,
        redact_url,
        to_celery_url,
        to_redis_url,
    )
    from broker.requests import (
        PendingRefreshes,
        ReplayReport,
        RequestResult,
        WantedRefresh,
        replay_pending,
        request_refresh,
    )
    from broker.retry import RetryPolicy
    from broker.settings import Settings, SettingsError
    from broker.status import (
        StatusRecord,
        forget_status,
        list_status,
        mark_running,
        read_history,
        read_status,
        write_status,
    )
    from broker.swapped import SwappedEvent, SwappedSubscription, publish_swapped

#: Public name -> the ``broker`` submodule that defines it.
_EXPORTS = {
    "TimeLimits": "celery_app",
    "guest_budget": "celery_app",
    "job_time_limits": "celery_app",
    "make_celery_app": "celery_app",
    "visibility_timeout": "celery_app",
    "ClaimHolder": "claims",
    "ClaimResult": "claims",
    "Claims": "claims",
    "QUEUED_CLAIM_TTL_MS": "claims",
    "RUNNING_CLAIM_TTL_MS": "claims",
    "claim_key": "claims",
    "MalformedRecord": "contract",
    "QUEUE_REFRESH": "contract",
    "RefreshRequest": "contract",
    "SWAPPED_CHANNEL": "contract",
    "TASK_REFRESH": "contract",
    "archive_key": "contract",
    "archive_path": "contract",
    "validate_archive_key": "contract",
    "EmbeddedRedis": "embedded",
    "find_redis_server": "embedded",
    "FailedJob": "failed",
    "list_failed": "failed",
    "record_failed": "failed",
    "PRODUCER_CONNECT_TIMEOUT": "redis_client",
    "PRODUCER_SOCKET_TIMEOUT": "redis_client",
    "SERVICE_CONNECT_TIMEOUT": "redis_client",
    "SERVICE_SOCKET_TIMEOUT": "redis_client",
    "make_redis": "redis_client",
    "ping": "redis_client",
    "redact_url": "redis_client",
    "to_celery_url": "redis_client",
    "to_redis_url": "redis_client",
    "PendingRefreshes": "requests",
    "ReplayReport": "requests",
    "RequestResult": "requests",
    "WantedRefresh": "requests",
    "replay_pending": "requests",
    "request_refresh": "requests",
    "RetryPolicy": "retry",
    "Settings": "settings",
    "SettingsError": "settings",
    "StatusRecord": "status",
    "forget_status": "status",
    "list_status": "status",
    "mark_running": "status",
    "read_history": "status",
    "read_status": "status",
    "write_status": "status",
    "SwappedEvent": "swapped",
    "SwappedSubscription": "swapped",
    "publish_swapped": "swapped",
}

__all__ = [
    "PRODUCER_CONNECT_TIMEOUT",
    "PRODUCER_SOCKET_TIMEOUT",
    "QUEUED_CLAIM_TTL_MS",
    "QUEUE_REFRESH",
    "RUNNING_CLAIM_TTL_MS",
    "SERVICE_CONNECT_TIMEOUT",
    "SERVICE_SOCKET_TIMEOUT",
    "SWAPPED_CHANNEL",
    "TASK_REFRESH",
    "ClaimHolder",
    "ClaimResult",
    "Claims",
    "EmbeddedRedis",
    "FailedJob",
    "MalformedRecord",
    "PendingRefreshes",
    "RefreshRequest",
    "ReplayReport",
    "RequestResult",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "StatusRecord",
    "SwappedEvent",
    "SwappedSubscription",
    "TimeLimits",
    "WantedRefresh",
    "archive_key",
    "archive_path",
    "claim_key",
    "find_redis_server",
    "forget_status",
    "guest_budget",
    "job_time_limits",
    "list_failed",
    "list_status",
    "make_celery_app",
    "make_redis",
    "mark_running",
    "ping",
    "publish_swapped",
    "read_history",
    "read_status",
    "record_failed",
    "redact_url",
    "replay_pending",
    "request_refresh",
    "to_celery_url",
    "to_redis_url",
    "validate_archive_key",
    "visibility_timeout",
    "write_status",
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
