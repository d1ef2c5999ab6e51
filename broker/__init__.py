"""The contract shared by producers (mountd) and consumers (workers) of refresh jobs.

Task and queue names and the refresh request codec (``contract``), the Celery app factory (``celery_app``),
the one-refresh-per-archive claim (``claims``), ``request_refresh`` that never fails a read (``requests``),
status records and failed jobs (``status``, ``failed``), the swapped notification (``swapped``), Redis
clients (``redis_client``), the embedded broker (``embedded``), the retry backoff (``retry``), and the
``Settings`` both sides are configured by. Nothing here holds a module-level app or client.
"""

from __future__ import annotations

from broker.celery_app import TimeLimits, guest_budget, job_time_limits, make_celery_app, visibility_timeout
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
