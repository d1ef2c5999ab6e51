"""``make_celery_app``: the one way to build sync's Celery app, for producers and workers alike.

There is no module-level app (CONTRIBUTING.md). A producer (mountd, ``syncctl refresh``) builds an app and
sends ``TASK_REFRESH`` by name; it registers no tasks and imports nothing from ``workers``. A worker builds
the same app and registers its task bodies under the names in ``broker.contract``.

Invariants:
    * At-least-once delivery: a task is acknowledged after it ran (``acks_late``), and requeued when its
      pool process dies (``task_reject_on_worker_lost``) or the worker loses the broker while it runs.
      Duplicates that this allows are absorbed by the claim (``broker.claims``) and the generation guard of
      the commit.
    * A worker holds one message per pool process (prefetch multiplier 1), so a long job never hides
      queued work from idle workers.
    * The visibility timeout (after which Redis redelivers an unacknowledged message) is short, so a job
      whose whole worker died (SIGKILL, lost host) runs again within about two minutes. It exceeds the
      longest retry countdown, so a retry waiting for its ETA is not redelivered. A job that runs longer
      than it is redelivered while it runs; that copy finds the claim held by a live runner of the same
      request (``Claims.start``) and drops out, so a slow job still runs once at a time.
    * Task events (Flower's task list) are sent for every job, batched a short while apart
      (``broker.task_events``); the producer's ``task-sent`` goes out with the claim
      (``broker.claimed_send``).
    * Its broker connections use kombu's Redis transport with one reusable client per channel
      (``broker.transport``): the same commands, without a new ``redis.Redis`` per delivery and ack.
    * Results are not stored unless ``Settings.result_backend`` names a backend: the state of refreshes
      lives in our status records (``broker.status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from broker.claims import RUNNING_CLAIM_TTL_MS
from broker.contract import QUEUE_REFRESH, TASK_REFRESH
from broker.redis_client import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    to_celery_url,
)
from broker.retry import RetryPolicy
from broker.settings import Settings, SettingsError
from broker.transport import SyncAMQP

#: Time a job gets beyond its guest budget before Celery's soft limit, in seconds: opening the archive,
#: compiling the module, staging and committing the payload. The supervisor kills the guest at its own
#: deadline; Celery's limits are the backstop for everything around it.
SOFT_LIMIT_MARGIN = 60.0
#: Time between the soft limit (the task still records its status and releases its claim) and the hard
#: kill of the pool process, in seconds.
HARD_LIMIT_MARGIN = 30.0
#: How often a worker scans for unacknowledged messages past their visibility timeout, in seconds
#: (kombu's ``unacked_restore_interval``; with throttle 1 a dead worker's messages return within about
#: visibility timeout + this).
UNACKED_RESTORE_INTERVAL = 10
#: The worker's consumer: Celery's, with task events sent in batches (``broker.task_events``; named, not
#: imported, so producers never load Celery's worker modules).
WORKER_CONSUMER = "broker.task_events:DeferredEventsConsumer"
#: How a producer's connection is (re)established: one immediate retry (a pooled connection that went stale
#: while Redis restarted), then fail. Kombu's default retries every 2 s would hold a read that long.
PRODUCER_RECONNECT = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


@dataclass(frozen=True)
class TimeLimits:
    """Celery time limits of one refresh job.

    Attributes:
        soft: Seconds until ``SoftTimeLimitExceeded`` is raised in the task.
        hard: Seconds until the pool process is killed.
    """

    soft: float
    hard: float


def guest_budget(manifest_timeout: float, settings: Settings) -> float:
    """The wall-clock budget of a guest, from its manifest's ``policy.timeout``.

    Args:
        manifest_timeout: ``policy.timeout`` in seconds; 0 means "the default".
        settings: Supplies the default and the cap.

    Returns:
        ``settings.guest_timeout`` for 0, else the timeout capped at ``settings.max_guest_timeout``.

    Raises:
        ValueError: ``manifest_timeout`` is negative.
    """
    if manifest_timeout < 0:
        raise ValueError(f"a guest timeout cannot be negative: {manifest_timeout}")
    budget = settings.guest_timeout if manifest_timeout == 0 else manifest_timeout
    return min(budget, settings.max_guest_timeout)


def job_time_limits(manifest_timeout: float, settings: Settings) -> TimeLimits:
    """Celery's soft and hard limits for refreshing an archive with this manifest timeout.

    Args:
        manifest_timeout: ``policy.timeout`` in seconds (0: the default budget).
        settings: Supplies the default budget and its cap.

    Returns:
        The guest budget plus ``SOFT_LIMIT_MARGIN``, and that plus ``HARD_LIMIT_MARGIN``.

    Raises:
        ValueError: ``manifest_timeout`` is negative.
    """
    soft = guest_budget(manifest_timeout, settings) + SOFT_LIMIT_MARGIN
    return TimeLimits(soft=soft, hard=soft + HARD_LIMIT_MARGIN)


def visibility_timeout(settings: Settings, retry: RetryPolicy | None = None) -> float:
    """The broker's visibility timeout: ``settings.visibility_margin`` past the longer of two spans.

    It must outlast the longest retry countdown (a retry waiting for its ETA must not be redelivered) and
    a dead job's running claim (a copy redelivered while the claim of the killed runner still lives finds
    it held and drops out, so the job would be lost until the next request).

    Args:
        settings: The process's settings (the retry policy and the margin; guest budgets do not count).
        retry: The retry policy in use; the one the settings configure when None.

    Returns:
        Seconds.
    """
    longest_delay = (retry or RetryPolicy.from_settings(settings)).max_delay
    return max(longest_delay, RUNNING_CLAIM_TTL_MS / 1000) + settings.visibility_margin


def make_celery_app(
    settings: Settings,
    *,
    broker_url: str | None = None,
    producer: bool = False,
    retry: RetryPolicy | None = None,
) -> Celery:
    """Build sync's Celery app.

    Args:
        settings: The process's settings (broker URL, result backend, guest budgets).
        broker_url: Overrides ``settings.broker_url`` (e.g. an ``EmbeddedRedis``'s URL).
        producer: An app that only sends, on a request path (mountd): the producer timeouts of
            ``broker.redis_client`` and one immediate reconnect instead of kombu's retries every 2 s (a
            failed send is remembered and replayed by ``broker.requests``). Workers and the CLI use the
            default, the service timeouts and kombu's reconnect loop.
        retry: The retry policy the workers use (it bounds the visibility timeout); the one the settings
            configure when None.

    Returns:
        The app; it is not set as Celery's current app.

    Raises:
        SettingsError: No broker URL is given, or it is not a Redis URL.
    """
    url = broker_url or settings.broker_url
    if not url:
        raise SettingsError("no broker URL: pass --broker, set SYNC_BROKER_URL or start the embedded broker")
    app = Celery("sync", broker=to_celery_url(url), set_as_current=False, amqp=SyncAMQP)
    limits = job_time_limits(settings.max_guest_timeout, settings)
    socket_timeout = PRODUCER_SOCKET_TIMEOUT if producer else SERVICE_SOCKET_TIMEOUT
    connect_timeout = PRODUCER_CONNECT_TIMEOUT if producer else SERVICE_CONNECT_TIMEOUT
    transport: dict[str, Any] = {
        "visibility_timeout": visibility_timeout(settings, retry),
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "fanout_prefix": True,
        "fanout_patterns": True,
    }
    if producer:
        transport.update(PRODUCER_RECONNECT)
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=connect_timeout,
        result_backend=settings.result_backend,
        task_ignore_result=settings.result_backend is None,
        task_default_queue=QUEUE_REFRESH,
        task_routes={TASK_REFRESH: {"queue": QUEUE_REFRESH}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_soft_time_limit=limits.soft,
        task_time_limit=limits.hard,
        worker_prefetch_multiplier=1,
        # A job running when the broker connection drops is left to finish, not cancelled: its end (status
        # record, "swapped", the claim's release) waits for Redis (broker.job.END_RETRY_SECONDS), where a
        # cancel would kill it mid-wait and lose a committed job's record (seen in the stack's Redis restart
        # check). Its late ack cannot reach the lost channel, so the message is redelivered after the
        # visibility timeout and that copy finds the claim released and the archive fresh (already_fresh).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=True,
        worker_consumer=WORKER_CONSUMER,
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        enable_utc=True,
        timezone="UTC",
    )
    return app
