"""The Celery task body of a worker: a thin shell over ``broker.job.RefreshJob`` and ``run_refresh``.

``register_tasks(app, settings)`` binds ``broker.contract.TASK_REFRESH`` on an app from
``broker.make_celery_app``. One delivery: decode the request (the archive key is checked there, once);
``RefreshJob.start`` (claim as this execution and mark running; a superseded or duplicate delivery drops
out); run the refresh with the job's heartbeat; then one end of the job: ``retry`` (transient failures,
``workers.outcomes``; the claim is kept for it and Celery republishes the message), ``give_up`` (recorded in
the failed list) or ``complete`` (publishing "swapped" on commit). Each delivery is recorded once in the
worker's metrics (``workers.metrics``) as soon as its outcome is known. The guest runtime (engine, module
cache, seccomp program) and the metrics are built lazily once per pool process, after Celery forked it.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]
from celery.exceptions import Reject, SoftTimeLimitExceeded  # type: ignore[import-untyped]

from broker.contract import TASK_REFRESH, MalformedRecord, RefreshRequest, RefreshStatus, archive_path
from broker.job import RefreshJob
from broker.redis_client import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
from broker.retry import RetryPolicy
from broker.settings import Settings
from sync_format.errors import BrokerUnavailable
from workers.metrics import JobMetrics, JobRecord
from workers.outcomes import decide
from workers.refresh import RefreshOutcome, run_refresh
from workers.runtime import GuestRuntime

log = logging.getLogger(__name__)

#: Error code of a job whose key leads outside the store.
OUTSIDE_STORE = "outside_store"
#: Milliseconds a retry's claim outlives its countdown (the retry must start within this margin).
REQUEUE_MARGIN_MS = 120_000


class WorkerState:
    """Per-process resources of a worker: Redis client, guest runtime, metrics; built on first use."""

    def __init__(self, settings: Settings, broker_url: str, retry: RetryPolicy) -> None:
        self.settings = settings
        self.broker_url = broker_url
        self.retry = retry
        self._pid = -1
        self._client: redis.Redis | None = None
        self._runtime: GuestRuntime | None = None
        self._metrics: JobMetrics | None = None

    def _check_fork(self) -> None:
        # Celery forks its pool after registering tasks: never share a client or engine across processes.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._client = self._runtime = self._metrics = None

    @property
    def client(self) -> redis.Redis:
        """This process's Redis client."""
        self._check_fork()
        if self._client is None:
            self._client = make_redis(
                self.broker_url,
                socket_timeout=SERVICE_SOCKET_TIMEOUT,
                connect_timeout=SERVICE_CONNECT_TIMEOUT,
            )
        return self._client

    @property
    def runtime(self) -> GuestRuntime:
        """This process's guest runtime."""
        self._check_fork()
        if self._runtime is None:
            self._runtime = GuestRuntime(self.settings)
        return self._runtime

    @property
    def metrics(self) -> JobMetrics:
        """This process's job metrics (built after the fork, so they write this process's files)."""
        self._check_fork()
        if self._metrics is None:
            self._metrics = JobMetrics()
        return self._metrics


def register_tasks(
    app: Celery, settings: Settings, *, broker_url: str, retry: RetryPolicy | None = None
) -> None:
    """Bind the refresh task to ``app``.

    Args:
        app: An app from ``broker.make_celery_app``.
        settings: The worker's settings (``store`` maps archive keys to paths).
        broker_url: The Redis holding claims, status and notifications (the broker's own Redis).
        retry: Retry delays and count; the settings' (``SYNC_RETRY_*``) when None.
    """
    state = WorkerState(settings, broker_url, retry or RetryPolicy.from_settings(settings))

    @app.task(name=TASK_REFRESH, bind=True)  # type: ignore[untyped-decorator]
    def refresh(task: Any, payload: object) -> dict[str, Any]:
        with state.metrics.job() as record:
            return refresh_job(task, payload, state, record)


def _requeue(
    request: RefreshRequest, job_id: str, exc: BrokerUnavailable, record: JobRecord | None
) -> Reject:
    """The exception that hands a job that could not start back to the broker.

    Redis went away before the job began (a Redis restart, say). Failing the task would let Celery
    acknowledge the message once it reconnects, and the job would be lost while the archive's claim (taken
    by the producer) keeps every new request merged into it for the claim's lifetime. Rejecting with
    requeue puts the message back in the queue, or, while Redis is still down, leaves it unacknowledged so
    the broker redelivers it after the visibility timeout; the new delivery starts on the same claim.
    """
    log.warning(
        "refresh requeued archive=%s job=%s reason=broker_unavailable error=%s", request.archive, job_id, exc
    )
    if record is not None:
        record.done("error", exc.code)
    return Reject(exc, requeue=True)


def refresh_job(
    task: Any, payload: object, state: WorkerState, record: JobRecord | None = None
) -> dict[str, Any]:
    """One delivery of a refresh job: decode, then drive a ``broker.job.RefreshJob`` around ``run_refresh``.

    Args:
        task: The bound Celery task (``request.id``, ``request.retries``, ``request.hostname``, ``retry``).
        payload: The ``RefreshRequest.to_json()`` document the producer sent.
        state: The process's resources.
        record: Where the delivery's outcome is recorded for the metrics, as soon as it is known.

    Returns:
        The refresh outcome as a dict (or ``{"status": "skipped", ...}`` when another job holds the archive).

    Raises:
        celery.exceptions.Retry: A transient failure is retried later.
        celery.exceptions.Reject: Redis was unavailable before the job started (requeued, see ``_requeue``).
    """
    try:
        request = RefreshRequest.from_json(payload)
    except MalformedRecord as exc:
        # Not retryable: acknowledge and drop; the error is handled (and logged) here, once.
        log.error("refresh request rejected error=%s", exc.message)  # noqa: TRY400
        if record is not None:
            record.done(RefreshStatus.REJECTED, exc.code)
        return {"status": RefreshStatus.REJECTED, "error_code": exc.code, "error": exc.message}
    store = state.settings.store
    if store is None:
        raise BrokerUnavailable("the worker has no store (set SYNC_STORE or --store)")
    job = RefreshJob(
        state.client,
        request,
        worker=str(task.request.hostname or socket.gethostname()),
        job_id=str(task.request.id),
        claim_ttl_ms=int(state.settings.running_claim_ttl * 1000),
    )
    retries = int(task.request.retries or 0)
    try:
        path = archive_path(store, request.archive)
    except MalformedRecord as exc:
        return _refuse_outside_store(job, exc, record=record)
    try:
        started = job.start()
    except BrokerUnavailable as exc:
        raise _requeue(request, job.job_id, exc, record) from exc
    if not started:
        log.info("refresh skipped archive=%s job=%s reason=claimed", request.archive, job.job_id)
        if record is not None:
            record.done(RefreshStatus.SKIPPED)
        return {"status": RefreshStatus.SKIPPED, "archive": request.archive}

    def heartbeat() -> None:
        try:
            job.heartbeat()
        except BrokerUnavailable as exc:
            log.warning("claim heartbeat failed archive=%s job=%s error=%s", request.archive, job.job_id, exc)

    try:
        outcome = run_refresh(
            path,
            state.runtime,
            base_generation=request.base_generation,
            heartbeat=heartbeat,
            store=os.path.realpath(store),  # the folder is reached from there, never through a symlink
        )
    except SoftTimeLimitExceeded:
        outcome = RefreshOutcome(
            path,
            RefreshStatus.FAILED,
            request.base_generation,
            request.base_generation,
            "job_time_limit",
            "the job ran past its Celery soft time limit",
        )
    decision = decide(outcome)
    if record is not None:
        record.done(outcome.status, outcome.error_code, outcome.sandbox)
    doc = outcome.to_json()
    doc["archive"] = request.archive
    if doc["error_code"] is None and decision.reason != "ok":
        # An unreachable source can end "unchanged" without an error of its own: name it in the status so
        # an operator sees why the payload did not move.
        doc["error_code"] = decision.reason
        doc["error"] = "the guest's source could not be reached: " + ", ".join(outcome.egress_errors)
    if decision.retry and state.retry.should_retry(retries):
        countdown = state.retry.delay(retries)
        job.retry(doc, hold_ms=int(countdown * 1000) + REQUEUE_MARGIN_MS)
        log.info(
            "refresh retry archive=%s job=%s reason=%s countdown_s=%.1f",
            request.archive,
            job.job_id,
            decision.reason,
            countdown,
        )
        raise task.retry(args=[payload], countdown=countdown)
    if not outcome.ok or decision.retry:
        # A job gives up on a failure, and on a retryable outcome whose retries are used up even when it is
        # not a failure by status (an unreachable source and no new payload ends "unchanged").
        entry = job.failed_entry(doc, attempts=retries + 1, at=datetime.now(UTC))
        job.give_up(doc, entry, cooldown_ms=int(state.settings.refresh_cooldown * 1000))
    else:
        job.complete(doc, cooldown_ms=int(state.settings.refresh_cooldown * 1000))
    return doc


def _refuse_outside_store(
    job: RefreshJob, exc: MalformedRecord, *, record: JobRecord | None
) -> dict[str, Any]:
    """A key that leads outside the store (a symlinked directory): nothing runs; the failure is recorded
    in the archive's status and the failed list, and the producer's claim is released."""
    request = job.request
    log.error("refresh refused archive=%s job=%s error=%s", request.archive, job.job_id, exc.message)
    doc: dict[str, Any] = {
        "archive": request.archive,
        "status": RefreshStatus.FAILED,
        "base_generation": request.base_generation,
        "generation": request.base_generation,
        "error_code": OUTSIDE_STORE,
        "error": exc.message,
        "duration_ms": 0.0,
    }
    job.give_up(doc, job.failed_entry(doc, attempts=1, at=datetime.now(UTC)))
    if record is not None:
        record.done(RefreshStatus.FAILED, OUTSIDE_STORE)
    return doc
