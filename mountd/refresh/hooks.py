"""Freshness hooks: what mountd does when a client reads an expired archive.

``BrokerFreshness`` asks the broker for a refresh (``broker.request_refresh``: claim the archive in Redis,
send ``sync.refresh`` by name, or merge into the refresh already queued). ``NullFreshness`` serves only.

Invariants:
    * ``on_stale`` never blocks on the network and never raises: it records the wanted refresh (one per
      archive, highest generation wins) and wakes one background thread, which calls ``request_refresh``.
      A GET is therefore never delayed, even by a hung Redis — ``request_refresh`` alone bounds the delay
      by the producer timeouts, which is still too long for a read — and a burst of reads of one archive
      costs one Redis round trip, not one per read.
    * Exactly one message per archive comes from the broker's claim, across threads and processes; the
      coalescing here only saves round trips.
    * When Redis is unreachable, ``request_refresh`` keeps the refresh in this hook's ``PendingRefreshes``
      (it logs the deferral); the same thread calls ``replay_pending`` every ``REPLAY_INTERVAL`` seconds.
    * Nothing is swallowed silently: outcomes are counted (``counts``), a programming error in a request is
      logged with its traceback and the thread carries on. ``close`` stops the thread and closes the app
      and the client, which the hook owns.
    * No ``workers`` import: the task is sent by name (``broker.contract.TASK_REFRESH``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

import redis
from celery import Celery  # type: ignore[import-untyped]

from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    job_time_limits,
    make_celery_app,
    make_redis,
    ping,
    replay_pending,
    request_refresh,
)
from broker.connection import BrokerConnection
from sync_format import BrokerUnavailable

log = logging.getLogger(__name__)

#: Seconds between two replays of refreshes deferred while Redis was unreachable.
REPLAY_INTERVAL = 5.0
#: Seconds ``close`` waits for the background thread to finish the request it is in.
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class FreshnessCounts:
    """What a hook did so far.

    Attributes:
        stale_reads: Calls of ``on_stale``.
        coalesced: Calls folded into a refresh already waiting to be requested.
        queued: Refreshes this process sent.
        merged: Requests merged into a refresh already queued or running (in any process).
        deferred: Requests deferred because Redis or the broker was unreachable.
        replayed: Deferred refreshes sent (or merged) later by the replay.
        failed: Requests that raised something other than an outage (logged with the traceback).
    """

    stale_reads: int = 0
    coalesced: int = 0
    queued: int = 0
    merged: int = 0
    deferred: int = 0
    replayed: int = 0
    failed: int = 0


#: ``BrokerHealth.state`` values.
BROKER_OK = "ok"
BROKER_UNAVAILABLE = "unavailable"
BROKER_NONE = "none"


@dataclass(frozen=True)
class BrokerHealth:
    """Whether the broker behind a hook answers (the health endpoint's ``broker`` fields).

    Attributes:
        state: ``ok``, ``unavailable`` or ``none`` (the hook has no broker).
        buffered: Refreshes kept for replay while the broker was unreachable.
    """

    state: str = BROKER_NONE
    buffered: int = 0


@runtime_checkable
class ObservableHook(Protocol):
    """A freshness hook that reports what it did and whether its broker answers (``mountd.ops``)."""

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """See ``mountd.dav.provider.FreshnessHook``."""

    @property
    def counts(self) -> FreshnessCounts:
        """What the hook did so far."""

    def broker_health(self) -> BrokerHealth:
        """Ask the broker, if there is one (bounded by the client's timeouts)."""


class _Unobserved:
    """Stands for a hook that reports nothing: no counts, no broker."""

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        return None

    @property
    def counts(self) -> FreshnessCounts:
        return FreshnessCounts()

    def broker_health(self) -> BrokerHealth:
        return BrokerHealth()


def observe(hook: object) -> ObservableHook:
    """What the ops endpoints read of ``hook``: the hook itself when it reports, else zeros and no broker.

    Args:
        hook: The freshness hook the server was given (any object with ``on_stale``).

    Returns:
        Something to read counts and broker health from.
    """
    return hook if isinstance(hook, ObservableHook) else _Unobserved()


class NullFreshness:
    """Serve only: expired archives are counted and served as they are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stale_reads = 0

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Count the stale read; nothing is requested.

        Args:
            archive: The archive key.
            generation: The generation served.
            timeout: The manifest's ``policy.timeout``.
        """
        with self._lock:
            self._stale_reads += 1
        log.debug("stale read without broker archive=%s generation=%d", archive, generation)

    @property
    def counts(self) -> FreshnessCounts:
        """What the hook did so far."""
        with self._lock:
            return FreshnessCounts(stale_reads=self._stale_reads)

    def broker_health(self) -> BrokerHealth:
        """No broker."""
        return BrokerHealth()

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class _Wanted:
    generation: int
    timeout: int


class BrokerFreshness:
    """Request refreshes of expired archives through the broker, from one background thread.

    Args:
        app: A producer Celery app (``make_celery_app(..., producer=True)``); owned and closed by the hook.
        client: A Redis client with the producer timeouts, on the broker's Redis; owned and closed.
        settings: Supplies the guest budget bounds for the jobs' time limits.
        pending: Where deferred refreshes wait for the replay; a new one when None.
        replay_interval: Seconds between replays of deferred refreshes.
    """

    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        settings: Settings,
        *,
        pending: PendingRefreshes | None = None,
        replay_interval: float = REPLAY_INTERVAL,
    ) -> None:
        self.app = app
        self.client = client
        self.settings = settings
        self.pending = pending if pending is not None else PendingRefreshes()
        self.replay_interval = replay_interval
        self._wanted: dict[str, _Wanted] = {}
        self._counts: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._stopping = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="mountd-freshness", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, settings: Settings, connection: BrokerConnection) -> BrokerFreshness:
        """Build the hook for a resolved broker (``broker.connection.connect``).

        Args:
            settings: The process's settings.
            connection: Where the broker and Redis are; the caller keeps and closes it.

        Returns:
            The running hook.
        """
        app = make_celery_app(settings, broker_url=connection.celery_url, producer=True)
        client = make_redis(
            connection.redis_url,
            socket_timeout=PRODUCER_SOCKET_TIMEOUT,
            connect_timeout=PRODUCER_CONNECT_TIMEOUT,
        )
        return cls(app, client, settings)

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Remember that ``archive`` needs a refresh from ``generation`` and wake the thread; never blocks.

        Args:
            archive: The archive key.
            generation: The generation served (the refresh's base).
            timeout: The manifest's ``policy.timeout`` (sets the job's time limits).
        """
        with self._cond:
            self._counts["stale_reads"] += 1
            earlier = self._wanted.get(archive)
            if earlier is not None:
                self._counts["coalesced"] += 1
                generation = max(generation, earlier.generation)
            self._wanted[archive] = _Wanted(generation, timeout)
            self._idle = False
            self._cond.notify()

    @property
    def counts(self) -> FreshnessCounts:
        """What the hook did so far."""
        with self._cond:
            return FreshnessCounts(**self._counts)

    def broker_health(self) -> BrokerHealth:
        """Ping the broker's Redis; refreshes buffered for replay are counted either way."""
        buffered = len(self.pending)
        try:
            ping(self.client)
        except BrokerUnavailable as exc:
            log.info("health broker unavailable reason=%s", exc.message)
            return BrokerHealth(BROKER_UNAVAILABLE, buffered)
        return BrokerHealth(BROKER_OK, buffered)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every stale read so far was turned into a request (queued, merged or deferred).

        Args:
            timeout: Seconds to wait at most.

        Returns:
            True when idle.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._idle, timeout)

    def close(self) -> None:
        """Stop the thread (after the request it is in) and close the app and the client."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            log.warning("freshness thread still busy at close timeout=%.1f", CLOSE_TIMEOUT)
        self.client.close()
        self.app.close()

    def __enter__(self) -> BrokerFreshness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        next_replay = 0.0
        while True:
            with self._cond:
                batch = self._next_batch(next_replay)
            if batch is None:
                return
            had_pending = len(self.pending) > 0
            for archive, wanted in batch.items():
                self._request(archive, wanted)
            now = time.monotonic()
            if not had_pending:
                # Deferrals of this batch are replayed one interval from now, not at once.
                next_replay = now + self.replay_interval
            elif len(self.pending) and now >= next_replay:
                self._replay()
                next_replay = time.monotonic() + self.replay_interval

    def _next_batch(self, next_replay: float) -> dict[str, _Wanted] | None:
        # Caller holds the lock. Returns the wanted refreshes (empty when only a replay is due), or None
        # when the hook is closing.
        while not self._wanted and not self._stopping:
            self._idle = True
            self._cond.notify_all()
            if not len(self.pending):
                self._cond.wait()
                continue
            remaining = next_replay - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        if self._stopping:
            self._idle = True
            self._cond.notify_all()
            return None
        batch, self._wanted = self._wanted, {}
        return batch

    def _request(self, archive: str, wanted: _Wanted) -> None:
        try:
            limits = job_time_limits(wanted.timeout, self.settings)
            result = request_refresh(
                self.app,
                self.client,
                RefreshRequest.new(archive, wanted.generation),
                self.pending,
                limits=limits,
            )
        except Exception:
            # request_refresh absorbs outages; anything else is a bug to see, not a reason to stop serving.
            log.exception("refresh request failed archive=%s generation=%d", archive, wanted.generation)
            self._count("failed")
            return
        self._count(
            {
                RequestResult.QUEUED: "queued",
                RequestResult.MERGED: "merged",
                RequestResult.DEFERRED: "deferred",
            }[result]
        )

    def _replay(self) -> None:
        try:
            report = replay_pending(self.app, self.client, self.pending)
        except Exception:
            log.exception("replay of deferred refreshes failed pending=%d", len(self.pending))
            self._count("failed")
            return
        self._count("replayed", report.queued + report.merged)

    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._counts[name] += n
