"""The refresh scheduler asks for refreshes of archives with update logic shortly before they expire.

Most tests drive ``RefreshScheduler.scan`` directly with a clock they move, so "due" and "back-off" are
exact; the thread's own timing is shown by one test on the real clock (a TTL of seconds) and by ``close``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recording_hook import RecordingHook
from redis_server import wait_for

from broker.swapped import SwappedEvent
from mountd import ArchiveFacts, ArchiveIndex
from mountd.dav.facts_store import FactsStore
from mountd.refresh.scheduler import (
    MAX_RETRY_BACKOFF,
    NS_PER_SECOND,
    RETRY_BACKOFF,
    RefreshScheduler,
    lead_ns,
)
from sync_format import EMPTY_WASM, FileIdentity, Manifest, commit_payload, open_archive
from sync_format.freshness import format_timestamp, now_ns
from sync_format.testing import make_archive, make_manifest

#: A valid module that is not the empty one: the empty module plus a custom section named "sync".
LOGIC_WASM = EMPTY_WASM + b"\x00\x05\x04sync"
#: Seconds the real-clock tests wait for the scheduler at most.
WAIT = 20.0
#: Archives of the open-counting test.
MANY = 10_000


class Clock:
    """Wall-clock nanoseconds that a test moves forward by hand, starting at the real time."""

    def __init__(self) -> None:
        self.now = now_ns()

    def __call__(self) -> int:
        return self.now

    def advance_to(self, moment_ns: int) -> None:
        """Move to ``moment_ns`` (never backwards)."""
        assert moment_ns >= self.now
        self.now = moment_ns


class StampedHook(RecordingHook):
    """A recording hook that also keeps the wall-clock time of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[int] = []

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Record the call and when it came."""
        self.stamps.append(now_ns())
        super().on_stale(archive, generation, timeout)


def manifest(*, ttl: int, created_at: str = "2020-01-01T00:00:00Z", timeout: int = 5) -> Manifest:
    """A manifest with the given TTL; expired long ago unless ``created_at`` says otherwise."""
    return make_manifest(ttl=ttl, created_at=created_at, timeout=timeout)


def add(
    store: Path, name: str, *, ttl: int, logic: bool = True, created_at: str = "2020-01-01T00:00:00Z"
) -> Path:
    """Build ``store/name`` (parents created), with update logic unless told otherwise."""
    path = store / name
    path.parent.mkdir(parents=True, exist_ok=True)
    wasm = LOGIC_WASM if logic else EMPTY_WASM
    make_archive(path, b"payload", manifest=manifest(ttl=ttl, created_at=created_at), wasm=wasm)
    return path


def expiry_ns(path: Path) -> int:
    """The archive's expiry instant."""
    with open_archive(path) as snap:
        at = snap.expiry().at_ns
    assert at is not None
    return at


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves."""
    return Clock()


@pytest.fixture
def make_scheduler(store: Path, hook: RecordingHook, clock: Clock) -> Callable[..., RefreshScheduler]:
    """A scheduler over ``store`` with the recording hook and the test's clock (not started)."""

    def make(root: Path = store) -> RefreshScheduler:
        return RefreshScheduler(root, hook, ArchiveIndex(), clock=clock)

    return make


def test_an_archive_expiring_in_seconds_is_requested_before_it_expires(store: Path) -> None:
    """On the real clock, an archive expiring in 2-3 s is asked for once, before it expires, by a thread that
    slept until it was due instead of polling."""
    path = add(store, "soon.txt.sync", ttl=3, created_at=format_timestamp(now_ns()))
    hook = StampedHook()
    scheduler = RefreshScheduler(store, hook, ArchiveIndex()).start()
    try:
        wait_for(lambda: hook.calls, WAIT, what="the archive was asked for")
        assert hook.calls == [("soon.txt.sync", 0, 5)]
        assert hook.stamps[0] < expiry_ns(path)
        # One pass found it not yet due and slept until it was; the next asked for it.
        assert scheduler.stats.scans <= 2
    finally:
        scheduler.close()


def test_archives_without_update_logic_or_expiry_are_never_requested(
    store: Path, hook: RecordingHook, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """Expired archives with the empty module, with TTL 0, or that never expire are left alone; an expired
    one with update logic is asked for."""
    add(store, "empty-module.txt.sync", ttl=60, logic=False)
    add(store, "ttl-zero.txt.sync", ttl=0)
    add(store, "never.txt.sync", ttl=2**62)
    add(store, "due.txt.sync", ttl=60)
    report = make_scheduler().scan()
    assert hook.calls == [("due.txt.sync", 0, 5)]
    assert (report.archives, report.requested) == (1, 1)


def test_a_fresh_archive_is_scheduled_at_its_expiry_minus_the_lead(
    store: Path, hook: RecordingHook, clock: Clock, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """An archive with an hour of TTL left is not asked for; it becomes due 60 s (10 % of the TTL, clamped)
    before expiry, and is asked for then."""
    path = add(store, "hourly.txt.sync", ttl=3600, created_at=format_timestamp(clock.now))
    scheduler = make_scheduler()
    report = scheduler.scan()
    due = expiry_ns(path) - 60 * NS_PER_SECOND
    assert (hook.calls, report.next_due_ns) == ([], due)
    clock.advance_to(due - 1)
    assert scheduler.scan().requested == 0
    clock.advance_to(due)
    assert scheduler.scan().requested == 1
    assert hook.calls == [("hourly.txt.sync", 0, 5)]
    assert [lead_ns(ttl) // NS_PER_SECOND for ttl in (3, 100, 3600)] == [1, 10, 60]


def test_the_same_generation_is_not_requested_again_until_the_back_off_ends(
    store: Path, hook: RecordingHook, clock: Clock, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """An expired archive whose refresh does not come is asked for once per back-off, which doubles per
    repeat, and the next pass is scheduled at the end of the back-off."""
    add(store, "stuck.txt.sync", ttl=60)
    scheduler = make_scheduler()
    first = scheduler.scan()
    assert scheduler.scan().requested == 0
    assert len(hook.calls) == 1
    backoff = int(RETRY_BACKOFF * NS_PER_SECOND)
    assert first.next_due_ns == clock.now + backoff
    clock.advance_to(clock.now + backoff)
    second = scheduler.scan()
    assert (second.requested, second.next_due_ns) == (1, clock.now + 2 * backoff)
    assert hook.calls == [("stuck.txt.sync", 0, 5)] * 2
    assert 2 * RETRY_BACKOFF <= MAX_RETRY_BACKOFF


def test_after_a_commit_the_next_expiry_is_scheduled(
    store: Path, hook: RecordingHook, clock: Clock, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """Once a refresh commits generation 1, the archive is no longer due; it is scheduled from its new
    expiry and asked for again, for generation 1, when that comes."""
    path = add(store, "daily.txt.sync", ttl=60)
    scheduler = make_scheduler()
    scheduler.scan()
    commit_payload(path, 0, b"refreshed")
    report = scheduler.scan()
    due = expiry_ns(path) - lead_ns(60)
    assert (report.requested, report.next_due_ns) == (0, due)
    clock.advance_to(max(due, clock.now))
    assert scheduler.scan().requested == 1
    assert hook.calls == [("daily.txt.sync", 0, 5), ("daily.txt.sync", 1, 5)]


def test_a_one_second_ttl_is_not_refreshed_back_to_back(
    store: Path, hook: RecordingHook, clock: Clock, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """TTL 1 s: the lead is half the TTL (it was the whole of it), and a new generation is asked for no sooner
    than 1 s after the scheduler learned of it, even when (commit times have whole seconds) it is due at
    once: one request per second at most, not one per commit (814 commits in 15 s, nobody reading)."""
    assert [lead_ns(ttl) for ttl in (1, 2)] == [NS_PER_SECOND // 2, NS_PER_SECOND]
    path = add(store, "fast.txt.sync", ttl=1)
    scheduler = make_scheduler()
    assert scheduler.scan().requested == 1  # generation 0 expired long ago
    commit_payload(path, 0, b"refreshed")
    clock.advance_to(max(clock.now, expiry_ns(path) - lead_ns(1)))  # generation 1 is due now
    learned = clock.now
    report = scheduler.scan()
    assert report.requested == 0
    assert report.next_due_ns == learned + NS_PER_SECOND
    clock.advance_to(learned + NS_PER_SECOND)
    assert scheduler.scan().requested == 1
    assert hook.calls == [("fast.txt.sync", 0, 5), ("fast.txt.sync", 1, 5)]


def test_the_walk_follows_folders_and_skips_what_listings_skip(
    store: Path,
    hook: RecordingHook,
    make_scheduler: Callable[..., RefreshScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nested folders are walked; hidden names, symlinked archives and folders are not; an unreadable archive
    is skipped and logged once over two passes."""
    nested = add(store, "a/b/deep.txt.sync", ttl=60)
    add(store, ".hidden/secret.txt.sync", ttl=60)
    add(store, "a/.dot.txt.sync", ttl=60)
    os.symlink(nested, store / "link.txt.sync")
    os.symlink(store / "a", store / "linked-folder")
    (store / "broken.txt.sync").write_bytes(b"not a zip")
    scheduler = make_scheduler()
    with caplog.at_level(logging.WARNING, logger="mountd.dav.index"):
        scheduler.scan()
        scheduler.scan()
    assert hook.calls == [("a/b/deep.txt.sync", 0, 5)]
    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 1


def test_a_single_archive_store_is_scheduled_under_its_file_name(
    tmp_path: Path, hook: RecordingHook, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """Serving one archive file, the scheduler asks for it by its file name, as the provider's reads do."""
    path = add(tmp_path, "one.txt.sync", ttl=60)
    make_scheduler(path).scan()
    assert hook.calls == [("one.txt.sync", 0, 5)]


class FailingHook:
    """A hook that raises, as a broken implementation would."""

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Fail."""
        raise RuntimeError("hook is broken")


def test_a_failing_hook_is_logged_and_not_called_in_a_loop(
    store: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """When the hook raises, the pass goes on, the failure is logged with its traceback, and the archive
    waits for its back-off like a successful request."""
    add(store, "x.txt.sync", ttl=60)
    add(store, "y.txt.sync", ttl=60)
    scheduler = RefreshScheduler(store, FailingHook(), ArchiveIndex(), clock=clock)
    with caplog.at_level(logging.ERROR, logger="mountd.refresh.scheduler"):
        first = scheduler.scan()
        second = scheduler.scan()
    assert (first.archives, first.requested, second.requested) == (2, 0, 0)
    assert scheduler.stats.hook_failures == 2
    failures = [r for r in caplog.records if "freshness hook failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_close_returns_promptly_even_mid_pass(store: Path, hook: RecordingHook) -> None:
    """``close`` ends a thread that sleeps for the 30 s scan interval, and one in the middle of a pass over
    hundreds of archives it has not opened yet, without waiting for either."""
    idle = RefreshScheduler(store, hook, ArchiveIndex()).start()
    wait_for(lambda: idle.stats.scans == 1, WAIT, what="the first pass ended")
    idle.close()
    assert not idle.running
    RefreshScheduler(store, hook, ArchiveIndex()).close()  # never started: nothing to join

    source = add(store, "src/a.txt.sync", ttl=2**62)
    for i in range(500):
        shutil.copyfile(source, store / "src" / f"copy{i:03d}.txt.sync")
    index = ArchiveIndex()
    opened = threading.Event()
    release = threading.Event()
    original = index._open

    def open_one(
        path: Path, identity: FileIdentity, source: str | None = None, **where: Any
    ) -> ArchiveFacts | None:
        if not opened.is_set():
            opened.set()
            release.wait(WAIT)  # hold the pass at its first archive until close was called
        return original(path, identity, source, **where)

    index._open = open_one  # type: ignore[method-assign]
    busy = RefreshScheduler(store, hook, index).start()
    assert opened.wait(WAIT)
    closer = threading.Thread(target=busy.close)
    closer.start()
    wait_for(lambda: busy.closing, WAIT, what="close was called")
    release.set()
    closer.join(WAIT)
    assert not busy.running
    # The pass stopped after the archive it was opening; what the folder's helper process opened meanwhile
    # is dropped with it.
    assert index.stats.opens == 1


@pytest.mark.slow
def test_passes_over_ten_thousand_archives_open_each_once(
    store: Path, hook: RecordingHook, make_scheduler: Callable[..., RefreshScheduler]
) -> None:
    """Two passes over 10,000 archives open each archive once (the index's cache answers the second)."""
    source = store.parent / "source.sync"
    make_archive(
        source,
        b"payload",
        manifest=manifest(ttl=3600, created_at=format_timestamp(now_ns())),
        wasm=LOGIC_WASM,
    )
    for i in range(MANY):
        shutil.copyfile(source, store / f"a{i:05d}.txt.sync")
    scheduler = make_scheduler()
    first = scheduler.scan()
    assert (first.archives, scheduler.index.stats.opens) == (MANY, MANY)
    second = scheduler.scan()
    assert (second.archives, scheduler.index.stats.opens) == (MANY, MANY)
    assert scheduler.index.stats.hits >= MANY
    assert hook.calls == []


def test_a_restarted_scheduler_opens_nothing_that_did_not_change(
    store: Path, hook: RecordingHook, tmp_path: Path
) -> None:
    """The walk learns facts as a listing does: after a restart (a new index over the same facts store) the
    first pass finds every unchanged archive on disk and opens only the one that changed; a new folder of
    many archives is shared with a helper process."""
    for i in range(30):
        add(store, f"sub/a{i:02d}.txt.sync", ttl=3600)
    later = time.time_ns() + 10 * 10**9  # every version is old enough to be recorded

    def scheduler() -> RefreshScheduler:
        index = ArchiveIndex(store=FactsStore.open(tmp_path / "cache"), clock=lambda: later, parallel_min=10)
        real = index._open

        def slow_open(*args: object, **where: object) -> object:  # the helper surely opens some of the 30
            time.sleep(0.005)
            return real(*args, **where)  # type: ignore[arg-type]

        index._open = slow_open  # type: ignore[method-assign,assignment]
        return RefreshScheduler(store, hook, index, clock=lambda: later)

    first = scheduler()
    assert first.scan().archives == 30
    assert (first.index.stats.opens, first.index.stats.restored) == (30, 0)
    assert first.index.stats.helper_opens > 0
    first.index.close()
    add(store, "sub/a07.txt.sync", ttl=7200)  # rewritten: a new version
    again = scheduler()
    assert again.scan().archives == 30
    assert (again.index.stats.opens, again.index.stats.restored) == (1, 29)
    again.index.close()


# -- issue 16: commits announced, the window, the lag ---------------------------------------------------


class CommittingHook:
    """Plays the workers: commits each requested archive one at a time, in request order, at most one commit
    per ``pause`` seconds, and announces each commit to the scheduler, as the swap listener does."""

    def __init__(self, store: Path, pause: float, latency: float = 0.0) -> None:
        self.store = store
        self.pause = pause
        self.latency = latency
        self.commits: list[str] = []
        self.scheduler: RefreshScheduler | None = None
        self._queue: list[tuple[str, int]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Queue the refresh (one per archive, as the claims keep it)."""
        with self._cond:
            if all(queued != archive for queued, _ in self._queue):
                self._queue.append((archive, generation))
                self._cond.notify()

    def close(self) -> None:
        """Stop committing."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(WAIT)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stop)
                if self._stop:
                    return
                archive, generation = self._queue.pop(0)
            threading.Event().wait(self.latency)
            committed = commit_payload(self.store / archive, generation, f"{generation + 1}".encode())
            self.commits.append(archive)
            assert self.scheduler is not None
            self.scheduler.on_swapped(SwappedEvent(archive, committed.generation))
            threading.Event().wait(self.pause)


def test_a_commit_announced_is_scheduled_from_its_own_expiry_at_once(store: Path) -> None:
    """With a walk only every 10 minutes, an archive with a 2 s TTL is refreshed generation after generation:
    each announced commit is scheduled from the new expiry (the scheduler did not learn of commits before
    its next walk, so it refreshed such an archive once per walk)."""
    add(store, "fast.txt.sync", ttl=2, created_at=format_timestamp(now_ns()))
    hook = CommittingHook(store, pause=0.0)
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), max_scan_interval=600)
    hook.scheduler = scheduler
    scheduler.start()
    try:
        # The hook records a commit before it announces it: wait for the third announcement too.
        wait_for(
            lambda: len(hook.commits) >= 3 and scheduler.stats.swapped >= 3,
            WAIT,
            what="three generations committed and announced",
        )
        # Each request came before expiry (the lead), with one walk in all.
        assert scheduler.stats.scans == 1
        assert scheduler.summary().lag_count >= 2
    finally:
        scheduler.close()
        hook.close()


def test_the_lead_widens_to_cover_slow_refreshes(store: Path) -> None:
    """Refreshes that take 2.5 s (a busy queue) against a fixed lead of 1 s (TTL 6 s) would commit 1.5 s
    after every expiry; the lead widens to twice the observed latency (at most half the TTL: 3 s), so after
    the first refresh the commits come before expiry (lag 0; commit times have whole seconds)."""
    add(store, "slow.txt.sync", ttl=6, created_at=format_timestamp(now_ns()))
    hook = CommittingHook(store, pause=0.0, latency=2.5)
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), max_scan_interval=600)
    hook.scheduler = scheduler
    scheduler.start()
    try:
        wait_for(lambda: len(hook.commits) >= 3, 2 * WAIT, what="three generations committed")
    finally:
        scheduler.close()
        hook.close()
    summary = scheduler.summary()
    assert summary.lag_count >= 2
    assert summary.lag_buckets[0] >= summary.lag_count - 1  # all but the first at lag 0


def test_in_overload_archives_are_refreshed_round_robin(store: Path) -> None:
    """k = 1 + rho on a small scale: 12 archives with a 2 s TTL (demand 6/s) and a "worker" that commits one
    archive per 0.25 s (capacity 4/s, rho = 1.5). With a window of one request, archives are asked for
    oldest due first, so between two refreshes of one archive every other archive is refreshed once: nobody
    starves, each archive is refreshed at least once per TTL + N / C = (1 + rho) * TTL seconds."""
    names = [f"a{i:02d}.txt.sync" for i in range(12)]
    for name in names:
        add(store, name, ttl=2, created_at=format_timestamp(now_ns()))
    hook = CommittingHook(store, pause=0.25)
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), max_scan_interval=600, window=1)
    hook.scheduler = scheduler
    scheduler.start()
    try:
        wait_for(lambda: len(hook.commits) >= 2 * len(names) + 2, 3 * WAIT, what="two full cycles")
    finally:
        scheduler.close()
        hook.close()
    commits = hook.commits
    for i, archive in enumerate(commits):
        following = commits[i + 1 :]
        if archive in following:
            between = following[: following.index(archive)]
            assert sorted(between) == sorted(n for n in names if n != archive), (i, commits)


def test_archives_due_in_the_same_second_go_in_the_order_they_were_refreshed(
    store: Path, hook: RecordingHook, clock: Clock
) -> None:
    """Timestamps have whole seconds, so archives refreshed one after the other are often due at the same
    moment: the one refreshed first is asked for first, whatever the names. (Ties went by name: an archive
    refreshed right after another in the same second overtook it at every cycle, which the round-robin
    test caught now and then.)"""
    add(store, "z.txt.sync", ttl=60, created_at="2019-01-01T00:00:00Z")  # due first: asked for first
    add(store, "a.txt.sync", ttl=60, created_at="2020-01-01T00:00:00Z")
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), clock=clock, window=1)
    assert scheduler.scan().requested == 1
    time.sleep(1 - time.time() % 1)  # both commits in one second (a few ms apart)
    for name in ("z.txt.sync", "a.txt.sync"):
        assert hook.calls[-1][0] == name
        commit_payload(store / name, 0, b"new")
        scheduler.on_swapped(SwappedEvent(name, 1))
        scheduler.step()
    stamps = set()
    for name in ("z.txt.sync", "a.txt.sync"):
        with open_archive(store / name) as snapshot:
            stamps.add(snapshot.state.updated_at)
    assert len(stamps) == 1, stamps  # the premise: due at the same moment
    clock.advance_to(clock.now + 120 * NS_PER_SECOND)
    calls = len(hook.calls)
    assert scheduler.step() == 1
    assert [call[0] for call in hook.calls[calls:]] == ["z.txt.sync"]


def test_the_window_bounds_requests_in_flight_and_counts_the_backlog(
    store: Path, hook: RecordingHook, clock: Clock
) -> None:
    """Five expired archives and a window of two: two are asked for, oldest expiry first; three wait. A
    committed one leaves the window and the next oldest is asked for without a walk."""
    for i in range(5):
        add(store, f"w{i}.txt.sync", ttl=60, created_at=f"2020-01-01T00:0{i}:00Z")
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), clock=clock, window=2)
    report = scheduler.scan()
    assert report.requested == 2
    assert [call[0] for call in hook.calls] == ["w0.txt.sync", "w1.txt.sync"]
    summary = scheduler.summary()
    assert (summary.archives, summary.expired, summary.waiting, summary.in_flight) == (5, 5, 3, 2)
    commit_payload(store / "w0.txt.sync", 0, b"new")
    scheduler.on_swapped(SwappedEvent("w0.txt.sync", 1))
    assert scheduler.step() == 1
    assert hook.calls[-1][0] == "w2.txt.sync"
    summary = scheduler.summary()
    assert (summary.expired, summary.waiting, summary.in_flight, summary.lag_count) == (4, 2, 2, 1)
    assert summary.lag_max > 365 * 24 * 3600  # expired since 2020


def test_a_released_claim_frees_the_window_and_keeps_the_back_off(
    store: Path, hook: RecordingHook, clock: Clock
) -> None:
    """A request whose claim is gone without a commit (failed or unchanged) leaves the window at the next
    probe; its archive is not asked for again before its back-off ends."""
    add(store, "x.txt.sync", ttl=60)
    add(store, "y.txt.sync", ttl=60, created_at="2020-01-02T00:00:00Z")
    held = {"x.txt.sync": True}
    scheduler = RefreshScheduler(
        store,
        hook,
        ArchiveIndex(),
        clock=clock,
        window=1,
        probe_grace=0,
        claim_probe=lambda keys: [held.get(k, False) for k in keys],
    )
    assert scheduler.scan().requested == 1
    assert scheduler.step() == 0  # x's claim is held: the window stays full
    held["x.txt.sync"] = False
    assert scheduler.step() == 1
    assert [call[0] for call in hook.calls] == ["x.txt.sync", "y.txt.sync"]
    assert scheduler.summary().in_flight == 1


class Lease:
    """A lease a test hands out or takes back."""

    def __init__(self) -> None:
        self.held = False

    def acquire(self) -> bool:
        """Held or not, as the test says."""
        return self.held

    def release(self) -> bool:
        """Give it up."""
        self.held = False
        return True


def test_without_the_lease_nothing_is_asked_for(store: Path, hook: RecordingHook) -> None:
    """A replica that does not hold the lease asks for nothing; once it takes the lease it walks and asks."""
    add(store, "due.txt.sync", ttl=60)
    lease = Lease()
    scheduler = RefreshScheduler(store, hook, ArchiveIndex(), lease=lease).start()
    try:
        wait_for(lambda: not scheduler.leader and scheduler.stats.scans == 0, WAIT, what="not leading")
        assert hook.calls == []
        lease.held = True
        wait_for(lambda: hook.calls, WAIT, what="asked once leading")
        assert scheduler.summary().leader
    finally:
        scheduler.close()
