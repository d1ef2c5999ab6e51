"""``RefreshScheduler``: ask for refreshes shortly before archives expire, so a reader rarely sees stale data.

A read of an expired archive already asks for a refresh (``SyncProvider`` → ``FreshnessHook.on_stale``), but
that reader gets the stale payload. The scheduler asks earlier: one daemon thread walks the store and hands
every archive that is *due* to the same hook, so the broker merges a proactive request and a stale read into
one job per archive.

An archive is due when it has update logic (``ArchiveFacts.has_update_logic``), a TTL that is neither 0 nor
"never", and ``now >= expires_at - lead``, with ``lead = clamp(ttl * LEAD_FRACTION, MIN_LEAD, MAX_LEAD)``.
An archive whose base timestamp does not parse counts as expired, as it does for reads (fail closed).

Invariants:
    * The walk sees what listings see: ``ArchiveIndex.directory_entries`` (hidden names, temp files and
      symlinks skipped; nested folders followed) and ``ArchiveIndex.facts_of``, so an unchanged archive is
      never reopened and an unreadable one is skipped and logged once (by the index). Name collisions do not
      matter here: an archive hidden from listings by a collision is still refreshed.
    * One request per (archive, generation) per back-off: asking again for a generation already asked for
      waits ``max(retry_backoff, policy.timeout)``, doubled per repeat up to ``MAX_RETRY_BACKOFF`` (a failed
      or unchanged refresh leaves the generation as it was). A committed refresh makes a new generation,
      which is scheduled from its own expiry.
    * The thread sleeps until the earliest due time or back-off end, never longer than ``max_scan_interval``
      (which bounds how long a new archive goes unnoticed) and never shorter than ``MIN_SCAN_INTERVAL``.
    * ``close`` stops the walk between two archives and joins the thread; nothing here raises into the
      thread: a failing hook or a bug in a pass is logged with its traceback and the next pass runs.
    * The clock is wall-clock nanoseconds (expiry is wall-clock); it is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from broker.contract import archive_key
from mountd.facts import ArchiveFacts
from mountd.index import ArchiveIndex
from mountd.provider import FreshnessHook
from sync_format import SyncError
from sync_format.freshness import now_ns

log = logging.getLogger(__name__)

NS_PER_SECOND = 1_000_000_000
#: Share of the TTL before expiry at which a refresh is asked for.
LEAD_FRACTION = 0.1
#: Seconds before expiry a refresh is asked for at least (short TTLs).
MIN_LEAD = 1.0
#: Seconds before expiry a refresh is asked for at most (long TTLs: a refresh takes seconds, not hours).
MAX_LEAD = 60.0
#: Seconds between two passes at most: how long a new or replaced archive can go unnoticed.
MAX_SCAN_INTERVAL = 30.0
#: Seconds between two passes at least, so that a clock going backwards cannot make the thread spin.
MIN_SCAN_INTERVAL = 0.05
#: Seconds before the same generation of an archive is asked for again (at least its ``policy.timeout``).
RETRY_BACKOFF = 30.0
#: Seconds between two requests for the same generation at most, however often it was asked for.
MAX_RETRY_BACKOFF = 600.0
#: Seconds ``close`` waits for the thread (it stops between two archives, so this is never reached).
CLOSE_TIMEOUT = 10.0
#: Archive keys remembered as unusable (logged once each); more are logged again.
MAX_LOGGED_KEYS = 10_000


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
        scans: Passes over the store (complete or not).
        requested: Refreshes asked for.
        hook_failures: Calls of the hook that raised (logged with the traceback).
    """

    scans: int
    requested: int
    hook_failures: int


@dataclass(frozen=True)
class _Asked:
    generation: int
    attempts: int
    retry_at_ns: int


def lead_ns(ttl: int) -> int:
    """How long before expiry an archive with this TTL becomes due.

    Args:
        ttl: ``policy.ttl`` in seconds.

    Returns:
        Nanoseconds: ``ttl * LEAD_FRACTION`` clamped to ``[MIN_LEAD, MAX_LEAD]``.
    """
    return int(min(max(ttl * LEAD_FRACTION, MIN_LEAD), MAX_LEAD) * NS_PER_SECOND)


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
    """Walk a store on one background thread and ask ``hook`` for refreshes of archives about to expire.

    Args:
        store: The store directory, or one archive (as ``SyncProvider`` takes it).
        hook: Told about each due archive, as for a stale read (``on_stale``); must not block.
        index: The listing cache (share the server's, so reads and passes open each version once).
        clock: Wall-clock nanoseconds since the epoch.
        max_scan_interval: Seconds between two passes at most.
        retry_backoff: Seconds before the same generation is asked for again (doubling per repeat).
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
    ) -> None:
        store = Path(store).absolute()
        self.single: Path | None = None if store.is_dir() else store
        self.root = store.parent if self.single is not None else store
        self.hook = hook
        self.index = index
        self.clock = clock
        self.max_scan_interval = max_scan_interval
        self.retry_backoff = retry_backoff
        self._asked: dict[str, _Asked] = {}
        self._bad_keys: dict[Path, None] = {}
        self._lock = threading.Lock()
        self._scans = self._requested = self._hook_failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mountd-scheduler", daemon=True)

    def __repr__(self) -> str:
        return f"RefreshScheduler({self.single or self.root})"

    @property
    def stats(self) -> SchedulerStats:
        """The counters so far."""
        with self._lock:
            return SchedulerStats(self._scans, self._requested, self._hook_failures)

    @property
    def closing(self) -> bool:
        """True once ``close`` was called."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread.is_alive()

    def start(self) -> RefreshScheduler:
        """Start the background thread (the first pass runs at once).

        Returns:
            The scheduler itself.
        """
        self._thread.start()
        log.info("refresh scheduler started store=%s", self.single or self.root)
        return self

    def wake(self) -> None:
        """Run a pass now instead of at the next due time (e.g. after archives were added)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the walk (between two archives) and join the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is None:
            return
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            log.warning("refresh scheduler still busy at close timeout=%.1f", CLOSE_TIMEOUT)
        else:
            log.info("refresh scheduler stopped store=%s", self.single or self.root)

    def scan(self) -> ScanReport:
        """One pass over the store now: ask for every due archive not in back-off.

        Returns:
            What the pass found and when the next one is needed.
        """
        started = time.monotonic()
        seen: set[str] = set()
        archives = requested = 0
        next_due: int | None = None
        complete = True
        for path, facts in self._archives():
            if self._stop.is_set():
                complete = False
                break
            due = due_ns(facts)
            if due is None:
                continue
            key = self._key(path)
            if key is None:
                continue
            archives += 1
            seen.add(key)
            now = self.clock()
            if now < due:
                wake_at = due
            else:
                wake_at, asked = self._ask(key, facts, now)
                requested += asked
            next_due = wake_at if next_due is None else min(next_due, wake_at)
        if complete:
            # Archives that are gone (or no longer due for anything) need no memory.
            self._asked = {k: v for k, v in self._asked.items() if k in seen}
        with self._lock:
            self._scans += 1
        log.debug(
            "refresh scan archives=%d requested=%d complete=%s duration_ms=%.1f",
            archives,
            requested,
            complete,
            (time.monotonic() - started) * 1000,
        )
        return ScanReport(archives, requested, next_due, complete)

    def _ask(self, key: str, facts: ArchiveFacts, now: int) -> tuple[int, int]:
        # Returns when to look at this archive again and how many requests were made (0 or 1).
        asked = self._asked.get(key)
        if asked is not None and asked.generation == facts.generation and now < asked.retry_at_ns:
            return asked.retry_at_ns, 0
        attempts = asked.attempts + 1 if asked is not None and asked.generation == facts.generation else 1
        backoff = min(max(self.retry_backoff, facts.timeout) * 2 ** (attempts - 1), MAX_RETRY_BACKOFF)
        retry_at = now + int(backoff * NS_PER_SECOND)
        self._asked[key] = _Asked(facts.generation, attempts, retry_at)
        expires_in = facts.expiry.expires_in(now)
        log.info(
            "proactive refresh requested archive=%s generation=%d expires_in_s=%s attempt=%d",
            key,
            facts.generation,
            "0" if expires_in is None else f"{expires_in:.1f}",
            attempts,
        )
        try:
            self.hook.on_stale(key, facts.generation, facts.timeout)
        except Exception:
            # The hook must not raise; if it does, this is where it is handled: logged with the traceback,
            # the back-off kept (a broken hook is not called in a loop), and the pass goes on.
            log.exception("freshness hook failed archive=%s generation=%d", key, facts.generation)
            with self._lock:
                self._hook_failures += 1
            return retry_at, 0
        with self._lock:
            self._requested += 1
        return retry_at, 1

    def _archives(self) -> Iterator[tuple[Path, ArchiveFacts]]:
        if self.single is not None:
            listed = self.index.describe(self.single)
            if listed is not None:
                yield listed.path, listed.facts
            return
        pending = [self.root]
        while pending and not self._stop.is_set():
            entries = self.index.directory_entries(pending.pop())
            pending.extend(entries.directory / name for name in reversed(entries.folders))
            for path, identity in entries.archives:
                if self._stop.is_set():
                    return
                facts = self.index.facts_of(path, identity)
                if facts is not None:
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

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                report = self.scan()
            except Exception:
                # A bug in a pass must not end proactive refreshes: logged here, retried after the interval.
                log.exception("refresh scan failed store=%s", self.single or self.root)
                report = ScanReport(0, 0, None, complete=False)
            self._wake.wait(self._seconds_until(report.next_due_ns))

    def _seconds_until(self, due: int | None) -> float:
        if due is None:
            return self.max_scan_interval
        seconds = (due - self.clock()) / NS_PER_SECOND
        return min(max(seconds, MIN_SCAN_INTERVAL), self.max_scan_interval)
