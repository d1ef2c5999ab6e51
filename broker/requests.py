"""``request_refresh``: ask for one refresh of an archive without ever failing or holding up a read.

mountd calls this on the request path when it sees an expired archive. The archive is claimed in Redis
(``broker.claims``); only the request that takes the claim sends ``TASK_REFRESH`` by name, every other is
merged into it. Claim and send are one script, one round trip (``broker.claimed_send``); a producer whose
channel cannot do that claims, then sends. When Redis or the broker cannot be reached, the wanted refresh is
remembered in a bounded, per-process ``PendingRefreshes`` and the read carries on; the caller runs
``replay_pending`` periodically, which sends them once Redis is back.

Invariants:
    * ``request_refresh`` never raises because Redis is down and waits at most about one client timeout per
      Redis round trip (producers use ``PRODUCER_SOCKET_TIMEOUT``); Celery's own publish retries are off:
      the pending set is the retry.
    * A claim is taken together with its message or not at all (``broker.claimed_send``). On the two-step
      path, a claim is released when the send fails, so a failed send never blocks the archive; if the release
      fails too, the pending entry keeps the same token, and claiming is re-entrant for its holder, so the
      replay re-takes its own claim instead of merging into it.
    * One pending entry per archive: a later request for a pending archive raises its base generation
      and keeps the first request's id.
    * A merged request re-sends the holder's message, under the holder's id, when the claim script says the
      holder's job has not started ``STALE_QUEUED_CLAIM_MS`` after its send (``broker.claims``): at most one
      re-send per that span and archive, best effort (a failed re-send waits for the next span).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]

from broker.celery_app import TimeLimits
from broker.claimed_send import CaptureError, claim_and_send
from broker.claims import QUEUED_CLAIM_TTL_MS, ClaimResult, Claims
from broker.contract import QUEUE_REFRESH, TASK_REFRESH, RefreshRequest
from broker.redis_client import UNAVAILABLE_ERRORS, redact_url
from sync_format.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Most wanted refreshes one process remembers while Redis is down; beyond it the oldest is forgotten
#: (a later read of that archive, still expired, asks again).
MAX_PENDING = 10_000


class RequestResult(StrEnum):
    """What ``request_refresh`` did."""

    #: This request took the claim and its task was sent.
    QUEUED = "queued"
    #: A refresh of the archive was already queued or running; this request was merged into it.
    MERGED = "merged"
    #: Redis or the broker was unreachable; the refresh is remembered for ``replay_pending``.
    DEFERRED = "deferred"


@dataclass(frozen=True)
class WantedRefresh:
    """A refresh that could not be requested yet.

    Attributes:
        request: The request (its id is the claim token used when it is replayed).
        limits: Celery time limits to send it with, or None for the app's defaults.
        force: An operator's explicit refresh: it takes over a claim no job runs under (``Claims.claim``).
    """

    request: RefreshRequest
    limits: TimeLimits | None = None
    force: bool = False


@dataclass(frozen=True)
class ReplayReport:
    """What one ``replay_pending`` pass did.

    Attributes:
        queued: Refreshes sent.
        merged: Refreshes dropped because one was already queued or running.
        remaining: Refreshes still pending (Redis still unreachable).
    """

    queued: int
    merged: int
    remaining: int


class PendingRefreshes:
    """Refreshes wanted while Redis was unreachable: bounded, one per archive, thread-safe.

    Args:
        limit: Most entries kept; adding beyond it forgets the oldest.
    """

    def __init__(self, limit: int = MAX_PENDING) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self._limit = limit
        self._entries: OrderedDict[str, WantedRefresh] = OrderedDict()
        self._lock = threading.Lock()
        self._dropped = 0

    def add(self, wanted: WantedRefresh) -> bool:
        """Remember a refresh, merging it with one already pending for the same archive.

        Args:
            wanted: The refresh.

        Returns:
            True when the archive was not pending before.
        """
        key = wanted.request.archive
        with self._lock:
            earlier = self._entries.get(key)
            if earlier is not None:
                self._entries[key] = _merge(earlier, wanted)
                return False
            if len(self._entries) >= self._limit:
                self._entries.popitem(last=False)
                self._dropped += 1
            self._entries[key] = wanted
            return True

    def get(self, archive: str) -> WantedRefresh | None:
        """The pending refresh of an archive.

        Args:
            archive: Archive key.

        Returns:
            The entry, or None.
        """
        with self._lock:
            return self._entries.get(archive)

    def discard(self, request: RefreshRequest) -> None:
        """Forget the archive's entry if it is still the one for ``request`` (same request id).

        Args:
            request: A request that was sent or merged.
        """
        with self._lock:
            entry = self._entries.get(request.archive)
            if entry is not None and entry.request.request_id == request.request_id:
                del self._entries[request.archive]

    def snapshot(self) -> list[WantedRefresh]:
        """The pending refreshes, oldest first.

        Returns:
            A copy of the entries.
        """
        with self._lock:
            return list(self._entries.values())

    @property
    def dropped(self) -> int:
        """Entries forgotten because the set was full."""
        with self._lock:
            return self._dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, archive: object) -> bool:
        with self._lock:
            return archive in self._entries


def request_refresh(
    app: Celery,
    client: redis.Redis,
    request: RefreshRequest,
    pending: PendingRefreshes,
    *,
    limits: TimeLimits | None = None,
    claim_ttl_ms: int = QUEUED_CLAIM_TTL_MS,
    force: bool = False,
) -> RequestResult:
    """Claim the archive and send its refresh, or merge into the one queued or running, or defer.

    Args:
        app: A producer app from ``make_celery_app``.
        client: A Redis client on the same Redis (``make_redis`` with the producer timeouts).
        request: The wanted refresh.
        pending: This process's pending refreshes.
        limits: Celery time limits for this archive (``job_time_limits`` of its manifest timeout).
        claim_ttl_ms: Lifetime of the claim until the job heartbeats it.
        force: An operator's explicit refresh (``syncctl refresh``, ``syncctl failed retry``): it takes
            over a claim no job runs under, such as the cooldown after a failure, instead of merging into it.

    Returns:
        ``QUEUED``, ``MERGED`` or ``DEFERRED``; an unreachable Redis or broker never raises.

    Raises:
        Exception: Only what is not an outage (a programming error), after releasing the claim.
    """
    wanted = WantedRefresh(request, limits, force)
    earlier = pending.get(request.archive)
    if earlier is not None:
        wanted = _merge(earlier, wanted)
    result, reason = _enqueue(app, client, wanted, claim_ttl_ms)
    if result is RequestResult.DEFERRED:
        if pending.add(wanted):
            log.warning(
                "refresh deferred archive=%s generation=%d request=%s pending=%d reason=%s",
                request.archive,
                wanted.request.base_generation,
                wanted.request.request_id,
                len(pending),
                reason,
            )
    else:
        pending.discard(wanted.request)
    return result


def replay_pending(
    app: Celery,
    client: redis.Redis,
    pending: PendingRefreshes,
    *,
    claim_ttl_ms: int = QUEUED_CLAIM_TTL_MS,
) -> ReplayReport:
    """Try the pending refreshes again, oldest first; stop at the first that Redis still refuses.

    Stopping early keeps one pass short when Redis is still down or hung: one timeout, not one per entry.

    Args:
        app: The producer app.
        client: The producer's Redis client.
        pending: The pending refreshes; sent and merged ones are removed.
        claim_ttl_ms: Lifetime of each claim until its job heartbeats it.

    Returns:
        Counts of this pass.
    """
    queued = merged = 0
    for wanted in pending.snapshot():
        result, reason = _enqueue(app, client, wanted, claim_ttl_ms)
        if result is RequestResult.DEFERRED:
            log.info("replay paused remaining=%d reason=%s", len(pending), reason)
            break
        pending.discard(wanted.request)
        if result is RequestResult.QUEUED:
            queued += 1
        else:
            merged += 1
    if queued or merged:
        log.info("replay done queued=%d merged=%d remaining=%d", queued, merged, len(pending))
    return ReplayReport(queued, merged, len(pending))


def _merge(earlier: WantedRefresh, later: WantedRefresh) -> WantedRefresh:
    base = max(earlier.request.base_generation, later.request.base_generation)
    return WantedRefresh(
        replace(earlier.request, base_generation=base),
        later.limits or earlier.limits,
        earlier.force or later.force,
    )


def _enqueue(
    app: Celery, client: redis.Redis, wanted: WantedRefresh, claim_ttl_ms: int
) -> tuple[RequestResult, str | None]:
    request = wanted.request

    def send(producer: Any = None) -> None:
        _send_refresh(app, request, wanted.limits, producer)

    try:
        claim = claim_and_send(
            app, client, request.archive, request.request_id, claim_ttl_ms, send, force=wanted.force
        )
    except BrokerUnavailable as exc:
        return RequestResult.DEFERRED, exc.message
    except UNAVAILABLE_ERRORS as exc:
        # The broker channel failed while the message was built (a stale pooled connection, say): nothing
        # was claimed or sent.
        return RequestResult.DEFERRED, _broker_down(app, exc)
    except CaptureError as exc:
        log.warning("claim and send in one script unavailable archive=%s reason=%s", request.archive, exc)
        claim = None
    if claim is None:
        return _claim_then_send(app, client, wanted, claim_ttl_ms, send)
    if not claim.ok:
        return _merged(app, wanted, claim), None
    _log_queued(request)
    return RequestResult.QUEUED, None


def _claim_then_send(
    app: Celery, client: redis.Redis, wanted: WantedRefresh, claim_ttl_ms: int, send: Any
) -> tuple[RequestResult, str | None]:
    # Two steps, for a producer whose channel cannot hand its message to the claim script
    # (``broker.claimed_send``): claim, then send, releasing the claim if the send fails.
    request = wanted.request
    claims = Claims(client)
    try:
        claim = claims.claim(request.archive, request.request_id, claim_ttl_ms, force=wanted.force)
    except BrokerUnavailable as exc:
        return RequestResult.DEFERRED, exc.message
    if not claim.ok:
        return _merged(app, wanted, claim), None
    try:
        send()
    except UNAVAILABLE_ERRORS as exc:
        _release_quietly(claims, request)
        return RequestResult.DEFERRED, _broker_down(app, exc)
    except Exception:
        _release_quietly(claims, request)
        raise
    _log_queued(request)
    return RequestResult.QUEUED, None


def _send_refresh(
    app: Celery, request: RefreshRequest, limits: TimeLimits | None, producer: Any = None
) -> None:
    # The refresh task's message for ``request``, under its request id (on ``producer`` when given: the claim
    # script's capturing one, ``broker.claimed_send``), with the archive's time limits when it has them.
    options: dict[str, Any] = {}
    if limits is not None:
        options = {"soft_time_limit": limits.soft, "time_limit": limits.hard}
    app.send_task(
        TASK_REFRESH,
        args=[request.to_json()],
        queue=QUEUE_REFRESH,
        task_id=request.request_id,
        retry=False,
        producer=producer,
        **options,
    )


def _merged(app: Celery, wanted: WantedRefresh, claim: ClaimResult) -> RequestResult:
    # Merged into the held claim. When the claim script found the holder's job never started within
    # STALE_QUEUED_CLAIM_MS, its message is presumed lost (a Redis restart can drop a message between the
    # queue and the worker) and this request sends it again, with the holder's token: a copy of a message
    # that was not lost after all finds the claim running (or released, and the archive fresh) and drops out.
    request = wanted.request
    log.debug("refresh merged archive=%s merged=%d", request.archive, claim.merged)
    if claim.resend is None:
        return RequestResult.MERGED
    again = replace(request, request_id=claim.resend)
    try:
        _send_refresh(app, again, wanted.limits)
    except UNAVAILABLE_ERRORS as exc:
        # The next merged request after STALE_QUEUED_CLAIM_MS tries again.
        log.warning("refresh re-send failed archive=%s job=%s reason=%s", request.archive, claim.resend, exc)
        return RequestResult.MERGED
    log.warning(
        "refresh re-sent archive=%s generation=%d job=%s reason=queued claim without a started job",
        request.archive,
        again.base_generation,
        again.request_id,
    )
    return RequestResult.MERGED


def _broker_down(app: Celery, exc: Exception) -> str:
    broker = redact_url(str(app.conf.broker_url))
    return f"send: broker at {broker} unavailable: {exc}"


def _log_queued(request: RefreshRequest) -> None:
    log.info(
        "refresh queued archive=%s generation=%d job=%s",
        request.archive,
        request.base_generation,
        request.request_id,
    )


def _release_quietly(claims: Claims, request: RefreshRequest) -> None:
    # Best effort: when Redis is gone too, the claim expires on its own, and the pending entry keeps its
    # token so the replay re-takes this very claim (claiming is re-entrant for its holder).
    try:
        claims.release(request.archive, request.request_id)
    except BrokerUnavailable as exc:
        log.debug("claim release failed archive=%s reason=%s", request.archive, exc)
