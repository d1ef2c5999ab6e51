"""``RefreshScheduler``: ask for refreshes shortly before archives expire, so a reader rarely sees stale data.

A read of an expired archive already asks for a refresh (``SyncProvider`` → ``FreshnessHook.on_stale``), but
that reader gets the stale payload. The scheduler asks earlier: one daemon thread keeps every archive's due
time in a priority queue and hands each archive that is *due* to the same hook, so the broker merges a
proactive request and a stale read into one job per archive.

An archive is due when it has update logic (``ArchiveFacts.has_update_logic``), a TTL that is neither 0 nor
"never", and ``now >= expires_at - lead``, with ``lead = mountd.dav.facts.lead_ns(ttl)`` (10 % of the TTL,
clamped to 1..60 s, at most half the TTL). A new generation is not asked for again sooner than
``MIN_PROACTIVE_SPACING`` (or half its TTL) after the scheduler learned of it.
An archive whose base timestamp does not parse counts as expired, as it does for reads (fail closed).
When refreshes take longer than that lead (a busy queue), the lead widens to twice the recent 90th
percentile of the time from request to announced commit, at most half the TTL: the lead is kept.

How it learns of commits: ``on_swapped`` (fed by ``mountd.refresh.swap_listener.SwapListener`` from the
workers'
"swapped" notifications) re-reads that one archive at once and schedules the new generation from its own
expiry; when a request's claim is released without a notification (a failed or unchanged refresh, or a
notification lost while Redis was away), ``claim_probe`` finds that and the archive is re-read too. A walk
of the whole store runs every ``max_scan_interval`` (and after each reconnection of the listener) as the
safety net: it finds new, replaced and deleted archives and whatever a lost notification hid.

Overload (more due archives than the workers can refresh): the scheduler keeps at most ``window`` requests
in flight and asks for the others in the order they became due (oldest due first), so the broker's queue
holds at most ``window`` proactive jobs and a refreshed archive goes behind every archive already waiting.
With demand/capacity ``rho = N / (TTL * C)`` (N archives, C refreshes per second), each archive is refreshed
at least every ``(1 + rho) * TTL`` plus one window's run time: no archive starves (k = 1 + rho). Reads do
not go through the window (the provider calls the hook directly), so an archive being read waits behind at
most ``window`` proactive jobs, not behind the whole backlog: archives being read go first.

Several replicas: with a ``lease`` (``broker.scheduling.SchedulerLease``) only the holder asks for refreshes;
the others keep trying to take it (every ``LEASE_RENEW_INTERVAL``) and one takes over within the lease's TTL
when the holder dies.

Invariants:
    * The walk sees what listings see: ``ArchiveIndex.archive_facts``, one folder at a time (hidden names,
      temp files and symlinks skipped; nested folders followed; the facts store looked up first), so an
      unchanged archive is never reopened, even after a restart, and an unreadable one is skipped and logged
      once (by the index).
    * One request per (archive, generation) per back-off: asking again for a generation already asked for
      waits ``max(retry_backoff, policy.timeout)``, doubled per repeat up to ``MAX_RETRY_BACKOFF`` (a failed
      or unchanged refresh leaves the generation as it was). A committed refresh makes a new generation,
      which is scheduled from its own expiry.
    * The thread sleeps until the earliest due time, back-off end, probe or lease renewal, never longer than
      ``max_scan_interval`` and never shorter than ``MIN_SCAN_INTERVAL``; ``on_swapped`` wakes it.
    * ``close`` stops the walk between two folders or two archives and joins the thread; nothing here raises
      into the thread: a failing hook or a bug in a pass is logged with its traceback and the next pass runs.
    * The clock is wall-clock nanoseconds (expiry is wall-clock); it is injectable for tests.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.contract import archive_key
from broker.swapped import SwappedEvent
from mountd.dav.facts import ArchiveFacts, lead_ns
from mountd.dav.index import ArchiveIndex
from mountd.dav.provider import FreshnessHook
from sync_format import FileIdentity, SyncError
from sync_format.freshness import now_ns, parse_timestamp_ns

log = logging.getLogger(__name__)

NS_PER_SECOND = 1_000_000_000
#: Seconds between two walks at most: how long a new or replaced archive can go unnoticed when no
#: notification tells of it.
MAX_SCAN_INTERVAL = 30.0
#: Seconds between two passes at least, so that a clock going backwards cannot make the thread spin.
MIN_SCAN_INTERVAL = 0.05
#: Seconds before the same generation of an archive is asked for again (at least its ``policy.timeout``).
RETRY_BACKOFF = 30.0
#: Seconds between two requests for the same generation at most, however often it was asked for.
MAX_RETRY_BACKOFF = 600.0
#: Seconds after learning a new generation before it is asked for again at the soonest (or half its TTL,
#: when that is longer). Commit times have whole seconds, so a new generation of a 1 s TTL can be due at
#: once: without this floor such an archive was refreshed back to back with nobody reading it.
MIN_PROACTIVE_SPACING = 1.0
#: Seconds ``close`` waits for the thread (it stops between two archives, so this is never reached).
CLOSE_TIMEOUT = 10.0
#: Archive keys remembered as unusable (logged once each); more are logged again.
MAX_LOGGED_KEYS = 10_000
#: Seconds between two probes of the claims of the requests in flight.
PROBE_INTERVAL = 1.0
#: Seconds after a request before its claim is probed (the hook sends it from its own thread).
PROBE_GRACE = 2.0
#: Seconds between two attempts to take or renew the lease.
LEASE_RENEW_INTERVAL = 1.0
#: Seconds between two summaries handed to ``publish``.
PUBLISH_INTERVAL = 1.0
#: Recent refresh latencies (request to announced commit) the adaptive lead is computed from.
LATENCY_SAMPLES = 200
#: The lead covers this multiple of the recent 90th-percentile latency (when that exceeds the fixed lead).
LATENCY_LEAD_FACTOR = 2.0
#: Upper bounds (seconds past expiry at commit) of the refresh-lag histogram's buckets.
LAG_BUCKETS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 3600.0)


@dataclass(frozen=True)
class ScanReport:
    """What one pass over the store found.

    Attributes:
        archives: Archives with update logic and a finite TTL (the ones the scheduler looks after).
        requested: Refreshes asked for in this pass.
        next_due_ns: The earliest wall-clock time (ns) something becomes due, or a back-off ends; None when
            nothing is scheduled.
        complete: False when the pass was stopped by ``close``.
    """

    archives: int
    requested: int
    next_due_ns: int | None
    complete: bool = True


@dataclass(frozen=True)
class SchedulerStats:
    """Counters of one scheduler since it was made.

    Attributes:
        scans: Walks over the store (complete or not).
        requested: Refreshes asked for.
        hook_failures: Calls of the hook that raised (logged with the traceback).
        swapped: Commit notifications handled.
        pass_cpu_seconds: CPU seconds the walks took in all (thread time).
    """

    scans: int
    requested: int
    hook_failures: int
    swapped: int = 0
    pass_cpu_seconds: float = 0.0


@dataclass(frozen=True)
class FreshnessSummary:
    """What the scheduler knows about the store's freshness now (metrics, ``syncctl status``).

    Attributes:
        archives: Archives watched (update logic, finite TTL).
        expired: Of those, expired now.
        waiting: Due but not yet asked for because the window is full (the backlog).
        in_flight: Asked for and not yet committed, failed or given up.
        window: Most requests in flight (None: unbounded).
        leader: True when this scheduler may ask (holds the lease, or needs none).
        lag_buckets: Cumulative counts of commits per ``LAG_BUCKETS`` bound (seconds past expiry).
        lag_count: Commits seen.
        lag_sum: Seconds past expiry, summed over commits.
        lag_max: Largest lag seen, in seconds.
        scans: Walks so far.
        pass_cpu_seconds: CPU seconds of all walks.
        requested: Refreshes asked for so far.
    """

    archives: int
    expired: int
    waiting: int
    in_flight: int
    window: int | None
    leader: bool
    lag_buckets: tuple[int, ...]
    lag_count: int
    lag_sum: float
    lag_max: float
    scans: int
    pass_cpu_seconds: float
    requested: int

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON object (``broker.scheduling.write_summary``)."""
        return {
            "archives": self.archives,
            "expired": self.expired,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "window": self.window,
            "leader": self.leader,
            "lag_buckets": dict(zip([str(b) for b in LAG_BUCKETS], self.lag_buckets, strict=True)),
            "lag_count": self.lag_count,
            "lag_sum": round(self.lag_sum, 3),
            "lag_max": round(self.lag_max, 3),
            "scans": self.scans,
            "pass_cpu_seconds": round(self.pass_cpu_seconds, 4),
            "requested": self.requested,
        }


@dataclass(frozen=True)
class _Asked:
    generation: int
    attempts: int
    retry_at_ns: int


@dataclass
class _Watched:
    path: Path
    generation: int
    timeout: int
    expires_at_ns: int  # 0 when the expiry cannot be computed (due now, counts as expired)
    next_ns: int  # when the heap entry for this archive is due (its due time or its back-off end)
    # When this version was learned, in the scheduler's own order: it breaks ties between equal due times,
    # which are common (timestamps have whole seconds), so that of two archives due in the same second the
    # one refreshed earlier goes first, not the one whose name sorts first.
    order: int = 0


def due_ns(facts: ArchiveFacts) -> int | None:
    """When an archive becomes due for a proactive refresh.

    Args:
        facts: The archive's facts.

    Returns:
        Wall-clock nanoseconds (0 when its expiry cannot be computed: due now), or None when the scheduler
        leaves it alone (no update logic, TTL 0, never expires).
    """
    if not facts.has_update_logic or facts.ttl == 0:
        return None
    if facts.expiry.error is not None:
        return 0
    if facts.expiry.at_ns is None:
        return None
    return facts.expiry.at_ns - lead_ns(facts.ttl)


class RefreshScheduler:
    """Keep the archives of a store refreshed shortly before they expire, from one background thread.

    Args:
        store: The store directory, or one archive (as ``SyncProvider`` takes it).
        hook: Told about each due archive, as for a stale read (``on_stale``); must not block.
        index: The listing cache (share the server's, so reads and passes open each version once).
        clock: Wall-clock nanoseconds since the epoch.
        max_scan_interval: Seconds between two walks at most.
        retry_backoff: Seconds before the same generation is asked for again (doubling per repeat).
        window: Most requests in flight at once; None for no bound.
        claim_probe: Tells, for archive keys, whether their refresh claim is still held (one call per probe);
            None when there is no broker to ask (a request then ends with its back-off).
        lease: Only ask while holding it (anything with ``acquire() -> bool`` and ``release()``); None
            when this scheduler is the only one.
        publish: Called about once a second with the summary (e.g. to write it to Redis for
            ``syncctl status``); it may raise, which is logged.
        probe_grace: Seconds after a request before its claim is probed.
    """

    def __init__(
        self,
        store: Path,
        hook: FreshnessHook,
        index: ArchiveIndex,
        *,
        clock: Callable[[], int] = now_ns,
        max_scan_interval: float = MAX_SCAN_INTERVAL,
        retry_backoff: float = RETRY_BACKOFF,
        window: int | None = None,
        claim_probe: Callable[[list[str]], list[bool]] | None = None,
        lease: Any = None,
        publish: Callable[[FreshnessSummary], object] | None = None,
        probe_grace: float = PROBE_GRACE,
    ) -> None:
        store = Path(store).absolute()
        self.single: Path | None = None if store.is_dir() else store
        self.root = store.parent if self.single is not None else store
        self.hook = hook
        self.index = index
        self.clock = clock
        self.max_scan_interval = max_scan_interval
        self.retry_backoff = retry_backoff
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.window = window
        self.claim_probe = claim_probe
        self.lease = lease
        self.publish = publish
        self.probe_grace = probe_grace
        self._asked: dict[str, _Asked] = {}
        self._watched: dict[str, _Watched] = {}
        self._heap: list[tuple[int, int, str]] = []  # (when, ``_Watched.order``, key)
        self._order = itertools.count()
        self._in_flight: dict[str, float] = {}  # key -> monotonic time of the request
        self._events: list[SwappedEvent] = []
        self._bad_keys: dict[Path, None] = {}
        self._lock = threading.Lock()  # guards counters, _events and the summary's view
        self._scans = self._requested = self._hook_failures = self._swapped = 0
        self._pass_cpu = 0.0
        self._lag_counts = [0] * len(LAG_BUCKETS)
        self._lag_count = 0
        self._lag_sum = self._lag_max = 0.0
        self._leader = lease is None
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self._latency_lead = 0  # ns; see _due
        self._walk_wanted = True
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mountd-scheduler", daemon=True)

    def __repr__(self) -> str:
        return f"RefreshScheduler({self.single or self.root})"

    @property
    def stats(self) -> SchedulerStats:
        """The counters so far."""
        with self._lock:
            return SchedulerStats(
                self._scans, self._requested, self._hook_failures, self._swapped, self._pass_cpu
            )

    @property
    def closing(self) -> bool:
        """True once ``close`` was called."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread.is_alive()

    @property
    def leader(self) -> bool:
        """True while this scheduler may ask for refreshes (it holds the lease, or needs none)."""
        with self._lock:
            return self._leader

    def start(self) -> RefreshScheduler:
        """Start the background thread (the first walk runs at once).

        Returns:
            The scheduler itself.
        """
        self._thread.start()
        log.info("refresh scheduler started store=%s", self.single or self.root)
        return self

    def wake(self) -> None:
        """Walk the store now instead of at the next interval (e.g. after archives were added, or after the
        swapped subscription came back: what was committed meanwhile is found)."""
        with self._lock:
            self._walk_wanted = True
        self._wake.set()

    def on_swapped(self, event: SwappedEvent) -> None:
        """A commit was announced: schedule the archive's new generation (on the thread, at once).

        Args:
            event: The notification.
        """
        with self._lock:
            self._events.append(event)
        self._wake.set()

    def close(self) -> None:
        """Stop the walk (between two archives), join the thread, give the lease up."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is None:
            return
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            log.warning("refresh scheduler still busy at close timeout=%.1f", CLOSE_TIMEOUT)
        else:
            log.info("refresh scheduler stopped store=%s", self.single or self.root)
        if self.lease is not None and self.leader:
            try:
                self.lease.release()
            except SyncError as exc:
                log.warning("scheduler lease not released error=%s", exc)

    def summary(self) -> FreshnessSummary:
        """The freshness of the archives watched, now.

        Returns:
            The summary (counts are a consistent view of the scheduler's own records).
        """
        now = self.clock()
        with self._lock:
            watched = list(self._watched.items())
            in_flight = set(self._in_flight)
            expired = sum(1 for _, w in watched if w.expires_at_ns <= now)
            waiting = sum(1 for key, w in watched if w.next_ns <= now and key not in in_flight)
            cumulative, total = [], 0
            for count in self._lag_counts:
                total += count
                cumulative.append(total)
            return FreshnessSummary(
                archives=len(watched),
                expired=expired,
                waiting=waiting,
                in_flight=len(in_flight),
                window=self.window,
                leader=self._leader,
                lag_buckets=tuple(cumulative),
                lag_count=self._lag_count,
                lag_sum=self._lag_sum,
                lag_max=self._lag_max,
                scans=self._scans,
                pass_cpu_seconds=self._pass_cpu,
                requested=self._requested,
            )

    def scan(self) -> ScanReport:
        """One walk over the store now, then ask for every due archive not in back-off (within the window).

        Returns:
            What the pass found and when the next one is needed.
        """
        started = time.monotonic()
        cpu = time.thread_time()
        seen: set[str] = set()
        archives = 0
        complete = True
        for path, facts in self._archives():
            if self._stop.is_set():
                complete = False
                break
            if due_ns(facts) is None:
                continue
            key = self._key(path)
            if key is None:
                continue
            archives += 1
            seen.add(key)
            self._track(key, path, facts)
        if complete:
            # Archives that are gone (or no longer due for anything) need no memory.
            with self._lock:
                for key in [k for k in self._watched if k not in seen]:
                    del self._watched[key]
                    self._in_flight.pop(key, None)
            self._asked = {k: v for k, v in self._asked.items() if k in seen}
        self._apply_events()
        requested = self._dispatch() if complete or archives else 0
        with self._lock:
            self._scans += 1
            self._pass_cpu += time.thread_time() - cpu
        log.debug(
            "refresh scan archives=%d requested=%d complete=%s duration_ms=%.1f",
            archives,
            requested,
            complete,
            (time.monotonic() - started) * 1000,
        )
        return ScanReport(archives, requested, self._next_due(), complete)

    def step(self) -> int:
        """Handle commit notifications, probe the claims in flight and ask for what is due, without a walk.

        Returns:
            Refreshes asked for.
        """
        self._apply_events()
        self._probe()
        return self._dispatch()

    # -- records ---------------------------------------------------------------------------------------

    def _due(self, facts: ArchiveFacts) -> int | None:
        # The fixed lead (due_ns), widened to cover the refreshes' recent latency: when the queue makes a
        # refresh take longer than the lead, asking earlier keeps the archive fresh (never more than half
        # the TTL early).
        due = due_ns(facts)
        if due is None or not due or not self._latency_lead:
            return due
        fixed = lead_ns(facts.ttl)
        widened = min(self._latency_lead, facts.ttl * NS_PER_SECOND // 2)
        return due - max(0, widened - fixed)

    def _note_latency(self, seconds: float) -> None:
        # Caller holds the lock.
        self._latencies.append(seconds)
        ordered = sorted(self._latencies)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        self._latency_lead = int(p90 * LATENCY_LEAD_FACTOR * NS_PER_SECOND)

    def _track(self, key: str, path: Path, facts: ArchiveFacts) -> None:
        # Records (or updates) an archive's facts; a new generation ends its request (its latency widens
        # the lead when refreshes are slow) and is scheduled from its own expiry; the previous generation's
        # expiry gives the refresh lag.
        with self._lock:
            old = self._watched.get(key)
            if due_ns(facts) is None:
                if old is not None:
                    del self._watched[key]
                    self._in_flight.pop(key, None)
                return
            expires = facts.expiry.at_ns or 0
            if old is not None and (old.generation, old.expires_at_ns) == (facts.generation, expires):
                old.path = path
                return
            if old is not None and facts.generation > old.generation:
                self._observe_lag(facts, old.expires_at_ns)
                asked_at = self._in_flight.pop(key, None)
                if asked_at is not None:
                    self._note_latency(time.monotonic() - asked_at)
            due = self._due(facts)
            assert due is not None  # checked above; _due only moves it earlier
            if old is not None and facts.generation > old.generation:
                spacing = max(MIN_PROACTIVE_SPACING * NS_PER_SECOND, facts.ttl * NS_PER_SECOND / 2)
                due = max(due, self.clock() + int(spacing))
            asked = self._asked.get(key)
            next_ns = due
            if asked is not None and asked.generation == facts.generation:
                next_ns = max(due, asked.retry_at_ns)
            order = next(self._order)
            self._watched[key] = _Watched(path, facts.generation, facts.timeout, expires, next_ns, order)
        heapq.heappush(self._heap, (next_ns, order, key))

    def _observe_lag(self, facts: ArchiveFacts, old_expiry_ns: int) -> None:
        # Caller holds the lock. Seconds past the old generation's expiry at which the new one was committed
        # (its updated_at); 0 when it came before expiry.
        if not old_expiry_ns or facts.updated_at is None:
            return
        try:
            committed = parse_timestamp_ns(facts.updated_at)
        except ValueError:
            return
        lag = max(0.0, (committed - old_expiry_ns) / NS_PER_SECOND)
        index = bisect.bisect_left(LAG_BUCKETS, lag)
        if index < len(self._lag_counts):
            self._lag_counts[index] += 1
        self._lag_count += 1
        self._lag_sum += lag
        self._lag_max = max(self._lag_max, lag)

    def _reread(self, key: str) -> None:
        # Looks at one archive on disk again (after a notification or a released claim).
        with self._lock:
            known = self._watched.get(key)
        path = known.path if known is not None else self.root / key
        if self.single is not None and path != self.single:
            return
        try:
            st = os.lstat(path)
        except OSError:
            return  # gone: the next walk forgets it
        facts = self.index.facts_of(path, FileIdentity.from_stat(st), follow_symlinks=self.single is not None)
        if facts is not None:
            self._track(key, path, facts)

    def _apply_events(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            self._swapped += len(events)
        for event in events:
            self._reread(event.archive)

    def _probe(self) -> None:
        # Requests whose claim is gone ended without a notification we heard (failed, unchanged, or the
        # notification was lost): free their place in the window and look at the archive again.
        if self.claim_probe is None:
            return
        cutoff = time.monotonic() - self.probe_grace
        with self._lock:
            keys = [k for k, at in self._in_flight.items() if at <= cutoff]
        if not keys:
            return
        try:
            held = self.claim_probe(keys)
        except SyncError as exc:
            log.warning("claim probe failed error=%s", exc)
            return
        ended = [k for k, h in zip(keys, held, strict=True) if not h]
        with self._lock:
            for key in ended:
                self._in_flight.pop(key, None)
        for key in ended:
            self._reread(key)

    # -- asking ----------------------------------------------------------------------------------------

    def _dispatch(self) -> int:
        # Asks for due archives, oldest due first, while the window has room.
        if not self.leader:
            return 0
        requested = 0
        now = self.clock()
        with self._lock:
            in_flight = self._in_flight
            # A request whose back-off ended without a commit is over (failed, unchanged, or lost): it
            # leaves the window, and the archive is asked for again below when it is still due.
            for key in [k for k in in_flight if (w := self._watched.get(k)) is None or w.next_ns <= now]:
                del in_flight[key]
        while self._heap and self._heap[0][0] <= now and not self._stop.is_set():
            if self.window is not None and len(in_flight) >= self.window:
                break
            when, _, key = heapq.heappop(self._heap)
            with self._lock:
                watched = self._watched.get(key)
            if watched is None or watched.next_ns != when:
                continue  # a stale entry: the archive was rescheduled or is gone
            retry_at, asked = self._ask(key, watched, now)
            with self._lock:
                watched.next_ns = retry_at
                if asked or self.claim_probe is not None:
                    self._in_flight[key] = time.monotonic()
            heapq.heappush(self._heap, (retry_at, watched.order, key))
            requested += asked
        return requested

    def _ask(self, key: str, watched: _Watched, now: int) -> tuple[int, int]:
        # Returns when to look at this archive again and how many requests were made (0 or 1).
        asked = self._asked.get(key)
        if asked is not None and asked.generation == watched.generation and now < asked.retry_at_ns:
            return asked.retry_at_ns, 0
        attempts = asked.attempts + 1 if asked is not None and asked.generation == watched.generation else 1
        backoff = min(max(self.retry_backoff, watched.timeout) * 2 ** (attempts - 1), MAX_RETRY_BACKOFF)
        retry_at = now + int(backoff * NS_PER_SECOND)
        self._asked[key] = _Asked(watched.generation, attempts, retry_at)
        log.info(
            "proactive refresh requested archive=%s generation=%d expires_in_s=%.1f attempt=%d",
            key,
            watched.generation,
            max(0, watched.expires_at_ns - now) / NS_PER_SECOND,
            attempts,
        )
        try:
            self.hook.on_stale(key, watched.generation, watched.timeout)
        except Exception:
            # The hook must not raise; if it does, this is where it is handled: logged with the traceback,
            # the back-off kept (a broken hook is not called in a loop), and the pass goes on.
            log.exception("freshness hook failed archive=%s generation=%d", key, watched.generation)
            with self._lock:
                self._hook_failures += 1
            return retry_at, 0
        with self._lock:
            self._requested += 1
        return retry_at, 1

    def next_due_ns(self) -> int | None:
        """When the next archive becomes due or leaves its back-off (wall-clock ns), or None."""
        return self._next_due()

    def _next_due(self) -> int | None:
        # The earliest live heap entry (stale entries at the top are dropped on the way).
        while self._heap:
            when, _, key = self._heap[0]
            with self._lock:
                watched = self._watched.get(key)
            if watched is not None and watched.next_ns == when:
                return when
            heapq.heappop(self._heap)
        return None

    # -- walking ---------------------------------------------------------------------------------------

    def _archives(self) -> Iterator[tuple[Path, ArchiveFacts]]:
        if self.single is not None:
            listed = self.index.describe(self.single)
            if listed is not None:
                yield listed.path, listed.facts
            return
        pending = [self.root]
        while pending and not self._stop.is_set():
            # One folder at a time, as a listing learns it: the facts store first (a restart opens only
            # what changed), and a folder of many new archives opened on two cores.
            directory = pending.pop()
            folders, archives = self.index.archive_facts(directory, self._stop, self.root)
            pending.extend(directory / name for name in reversed(folders))
            for path, facts in archives:
                if self._stop.is_set():
                    return
                yield path, facts

    def _key(self, path: Path) -> str | None:
        try:
            return archive_key(self.root, path)
        except SyncError as exc:
            if path not in self._bad_keys:
                self._bad_keys[path] = None
                while len(self._bad_keys) > MAX_LOGGED_KEYS:
                    del self._bad_keys[next(iter(self._bad_keys))]
                log.warning("archive has no refresh key archive=%s reason=%s", path, exc.message)
            return None

    # -- the thread ------------------------------------------------------------------------------------

    def _hold_lease(self) -> bool:
        if self.lease is None:
            return True
        try:
            held = bool(self.lease.acquire())
        except SyncError as exc:
            log.warning("scheduler lease unavailable error=%s", exc)
            held = False
        with self._lock:
            was, self._leader = self._leader, held
            if held and not was:
                self._walk_wanted = True
        if held != was:
            log.info("scheduler lease %s store=%s", "taken" if held else "lost", self.single or self.root)
        return held

    def _run(self) -> None:
        next_walk = next_lease = next_publish = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            try:
                if now >= next_lease:
                    self._hold_lease()
                    next_lease = now + LEASE_RENEW_INTERVAL
                with self._lock:
                    walk, self._walk_wanted = self._walk_wanted or now >= next_walk, False
                if self.leader and walk:
                    self.scan()
                    next_walk = time.monotonic() + self.max_scan_interval
                elif self.leader:
                    self.step()
                if self.publish is not None and time.monotonic() >= next_publish:
                    next_publish = time.monotonic() + PUBLISH_INTERVAL
                    self.publish(self.summary())
            except Exception:
                # A bug in a pass must not end proactive refreshes: logged here, retried after the interval.
                log.exception("refresh pass failed store=%s", self.single or self.root)
            self._wake.wait(self._sleep_seconds(next_walk, next_lease, next_publish))

    def _sleep_seconds(self, next_walk: float, next_lease: float, next_publish: float) -> float:
        now = time.monotonic()
        moments = [next_walk]
        if self.lease is not None:
            moments.append(next_lease)
        if self.publish is not None:
            moments.append(next_publish)
        with self._lock:
            busy = bool(self._in_flight)
            full = self.window is not None and len(self._in_flight) >= self.window
        if busy and self.claim_probe is not None:
            moments.append(now + PROBE_INTERVAL)
        due = None if full else self._next_due()
        if due is not None:
            moments.append(now + (due - self.clock()) / NS_PER_SECOND)
        seconds = min(moments) - now
        return min(max(seconds, MIN_SCAN_INTERVAL), self.max_scan_interval)
