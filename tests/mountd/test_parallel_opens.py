"""A first listing's opens shared with a forked helper (``mountd.dav.parallel_opens``): real forks, real
archives; nothing lost whatever the helper does."""

from __future__ import annotations

import errno
import marshal
import os
import resource
import signal
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_manifests import csv_manifest

from mountd import ArchiveIndex
from mountd.dav import parallel_opens
from mountd.dav.facts_store import FactsStore, encode_facts
from mountd.dav.index import _received_facts, _sent_facts
from mountd.dav.parallel_opens import BATCH, HelperShare, share_with_helper
from sync_format import open_archive
from sync_format.testing import make_archive, make_manifest

pytestmark = pytest.mark.skipif(parallel_opens.usable_cpus() < 2, reason="the helper needs two CPUs")

COUNT = 400


class Received(dict[int, tuple[object, ...]]):
    """What ``receive`` was given, by item; an item given twice fails the test."""

    def __call__(self, i: int, values: tuple[object, ...]) -> None:
        assert i not in self, f"item {i} received twice"
        self[i] = values


def _union(share: HelperShare, count: int, own_done: list[int], received: Received) -> list[int]:
    # Every item, from whichever side did it: the caller's own, the helper's received ones, and ``missing``;
    # none of them twice.
    assert own_done == list(range(share.done))
    assert set(received) == share.received
    assert not set(received) & set(own_done)
    assert not set(share.missing(count)) & set(received)
    return sorted({*own_done, *received, *share.missing(count)})


def _slow_own(done: list[int], delay: float = 0.0005):
    def own(i: int) -> None:
        time.sleep(delay)  # slower than the helper: it takes more than a few items
        done.append(i)

    return own


def _stuck_at(stuck: int) -> Callable[[int], tuple[int]]:
    # The helper's item function, stuck for good on item ``stuck``.
    def theirs(i: int) -> tuple[int]:
        if i == stuck:
            time.sleep(3600)
        return (i,)

    return theirs


def _no_zombie(pids: list[int]) -> None:
    # The helper was reaped: waiting for it again finds no such child (give a reaper thread a moment).
    deadline = time.monotonic() + 5
    for pid in pids:
        while True:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            assert time.monotonic() < deadline, f"helper {pid} not reaped"
            time.sleep(0.01)


@pytest.fixture
def helper_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the helpers forked during the test."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(parallel_opens.os, "fork", fork)
    return pids


def test_both_sides_share_the_items_and_nothing_is_lost(helper_pids: list[int]) -> None:
    """The helper's values come back for the items it took; with the caller's own they are every item."""
    count = 1000  # both sides slowed alike: each gets items unless one stalls for a quarter of a second

    def theirs(i: int) -> tuple[object, ...]:
        time.sleep(0.0005)
        return (i, i * i, f"item {i}", None, 1.5)

    done: list[int] = []
    received = Received()
    share = share_with_helper(count, _slow_own(done), theirs, received)
    assert share.forked
    assert helper_pids
    assert len(received) > BATCH, "the helper sent no more than one batch"
    assert share.done > 0, "the caller took no item"
    for j, row in received.items():
        assert row == (j, j * j, f"item {j}", None, 1.5)
    assert share.missing(count) == []
    assert _union(share, count, done, received) == list(range(count))
    _no_zombie(helper_pids)


def test_items_the_helper_fails_on_are_left_to_the_caller(helper_pids: list[int]) -> None:
    """An item that raises in the helper is not sent: ``missing`` names it, nothing else is missing."""

    def theirs(i: int) -> tuple[int]:
        if i % 7 == 0:
            raise ValueError("unreadable")
        return (i,)

    done: list[int] = []
    received = Received()
    share = share_with_helper(COUNT, _slow_own(done), theirs, received)
    failed = [i for i in range(share.done, COUNT) if i % 7 == 0]
    assert failed, "the helper met no failing item"
    assert share.missing(COUNT) == failed
    assert _union(share, COUNT, done, received) == list(range(COUNT))


def test_a_helper_that_dies_midway_costs_nothing_but_time(helper_pids: list[int]) -> None:
    """A helper that exits before it sends anything: the items it finished are the caller's again."""

    def theirs(i: int) -> tuple[int]:
        if i == COUNT - 50:
            os._exit(3)  # after 49 items marked done
        return (i,)

    done: list[int] = []
    received = Received()
    share = share_with_helper(COUNT, _slow_own(done), theirs, received)
    assert share.forked
    assert received == {}  # fewer items than a batch: nothing was sent
    # The caller stopped at the first item the helper had marked done (unless it was there first).
    assert share.done in (COUNT - 49, COUNT)
    assert _union(share, COUNT, done, received) == list(range(COUNT))
    _no_zombie(helper_pids)


def test_a_stuck_helper_is_killed_and_its_share_done_here(helper_pids: list[int]) -> None:
    """A helper stuck after finishing some items: the caller waits ``wait`` at most, kills it, and does the
    rest itself."""

    stuck_at = COUNT - BATCH - 20  # after one batch was sent
    done: list[int] = []
    received = Received()
    started = time.monotonic()
    share = share_with_helper(COUNT, _slow_own(done), _stuck_at(stuck_at), received, wait=0.5)
    assert time.monotonic() - started < 30
    if share.done <= stuck_at:  # (unless the caller got past it first)
        assert sorted(received) == list(range(COUNT - BATCH, COUNT))  # the batch sent before it stuck stands
    assert _union(share, COUNT, done, received) == list(range(COUNT))
    _no_zombie(helper_pids)


def test_a_helper_stuck_after_sending_all_it_owes_is_not_waited_for(helper_pids: list[int]) -> None:
    """A helper stuck on an item the caller does itself, after its batches held every item past where the
    caller stopped: nothing more is needed from it, so it is killed without waiting ``wait``."""
    stuck_at = COUNT - BATCH - 1  # right after its first batch was sent
    done: list[int] = []
    received = Received()
    started = time.monotonic()
    share = share_with_helper(COUNT, _slow_own(done), _stuck_at(stuck_at), received, wait=60)
    assert time.monotonic() - started < 30
    assert share.done == COUNT - BATCH
    assert sorted(received) == list(range(COUNT - BATCH, COUNT))
    assert _union(share, COUNT, done, received) == list(range(COUNT))
    _no_zombie(helper_pids)


def test_a_helper_stuck_from_the_start_is_killed_without_a_wait(helper_pids: list[int]) -> None:
    """When the caller did every item, the helper's results are not waited for."""
    done: list[int] = []
    received = Received()
    started = time.monotonic()
    share = share_with_helper(50, _slow_own(done), lambda i: time.sleep(3600), received, wait=60)
    assert time.monotonic() - started < 30
    assert (share.done, received) == (50, {})
    _no_zombie(helper_pids)


def test_one_helper_at_a_time(helper_pids: list[int]) -> None:
    """A second call while a helper runs does all its work itself, without forking."""
    inner: list[HelperShare] = []
    ignored: list[int] = []

    def own(i: int) -> None:
        if not inner:  # the first item this side takes
            thread = threading.Thread(
                target=lambda: inner.append(share_with_helper(10, ignored.append, tuple, Received()))
            )
            thread.start()
            thread.join()
        time.sleep(0.0005)

    def theirs(i: int) -> tuple[int]:
        time.sleep(0.0005)
        return (i,)

    share = share_with_helper(COUNT, own, theirs, Received())
    assert share.done > 0, "the caller took no item"
    assert len(helper_pids) == 1
    assert (inner[0].forked, inner[0].done) == (False, 10)


def test_no_helper_on_one_cpu(monkeypatch: pytest.MonkeyPatch, helper_pids: list[int]) -> None:
    """Where the process may use a single CPU, the caller does everything and nothing is forked."""
    monkeypatch.setattr(parallel_opens, "usable_cpus", lambda: 1)
    done: list[int] = []
    share = share_with_helper(COUNT, done.append, lambda i: (i,), Received())
    assert (share.forked, share.done, helper_pids) == (False, COUNT, [])
    assert done == list(range(COUNT))


# --- a first listing -----------------------------------------------------------------------------------


def _slowed(index: ArchiveIndex) -> ArchiveIndex:
    # The listing's own opens take a millisecond more each, so that the helper (a fork of a big test
    # process may take a while) surely gets to open some.
    real = index._open

    def slow_open(*args: object, **options: object) -> object:
        time.sleep(0.001)
        return real(*args, **options)  # type: ignore[arg-type]

    index._open = slow_open  # type: ignore[method-assign,assignment]
    return index


def _fill(store: Path, count: int) -> None:
    for i in range(count):
        manifest = csv_manifest(ttl=3600 + i) if i % 3 else make_manifest(display_ext="bin", ttl=60 + i)
        make_archive(store / f"a{i:04d}.csv.sync", f"row {i}\n".encode() * (i % 5 + 1), manifest=manifest)


def test_a_shared_first_listing_equals_one_done_alone(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Listed with a helper or without one, every archive has the same facts; unreadable archives are left
    out and logged once, from whichever side met them."""
    _fill(store, 300)
    for i in (5, 150, 290):  # one near the front, the middle, the back
        (store / f"bad{i}.csv.sync").write_bytes(b"PK\x03\x04 not an archive")
    alone = ArchiveIndex(parallel_min=10**9, watcher=False)
    shared = _slowed(ArchiveIndex(parallel_min=1, watcher=False))
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        expected = alone.list_directory(store)
        caplog.clear()
        listing = shared.list_directory(store)
    assert shared.stats.helper_opens > 0, "the helper opened nothing"
    assert shared.stats.opens == alone.stats.opens == 300
    assert list(listing.archives) == list(expected.archives)
    for name, listed in listing.archives.items():
        assert listed.facts == expected.archives[name].facts, name
        assert listed.path == expected.archives[name].path
    unreadable = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 3, unreadable
    for i in (5, 150, 290):  # each named by its path, whichever side met it
        assert sum(f"archive={store / f'bad{i}.csv.sync'} " in line for line in unreadable) == 1, unreadable
    assert shared.stats.unreadable == 3


def test_facts_a_helper_opened_are_recorded_for_a_restart(store: Path, tmp_path: Path) -> None:
    """What the helper sent is written to the facts store like the rest: a restarted index opens nothing."""
    _fill(store, 200)
    clock = time.time_ns() + 10 * 10**9  # the files are old enough to record
    first = _slowed(
        ArchiveIndex(store=FactsStore.open(tmp_path / "cache"), parallel_min=1, clock=lambda: clock)
    )
    listing = first.list_directory(store)
    assert first.stats.helper_opens > 0
    first.close()
    again = ArchiveIndex(store=FactsStore.open(tmp_path / "cache"), clock=lambda: clock)
    restored = again.list_directory(store)
    again.close()
    assert (again.stats.opens, again.stats.restored) == (0, 200)
    assert {n: a.facts for n, a in restored.archives.items()} == {
        n: a.facts for n, a in listing.archives.items()
    }


def test_received_facts_are_checked(store: Path) -> None:
    """Values from the helper become facts only when they are what ``_sent_facts`` gives."""
    make_archive(store / "x.csv.sync", b"a,b\n", manifest=csv_manifest())
    folder = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sent = _sent_facts(folder, "x.csv.sync", str(store / "x.csv.sync"))
    finally:
        os.close(folder)
    snapshot = open_archive(store / "x.csv.sync")
    from mountd import ArchiveFacts

    facts = ArchiveFacts.from_snapshot(snapshot)
    snapshot.close()
    assert sent[5:] == encode_facts(facts)
    assert _received_facts(sent, {}) == facts
    bad = [
        sent[:19],  # short
        ("1", *sent[1:]),  # identity not a number
        (True, *sent[1:]),  # nor a bool
        (*sent[:4], float(sent[4]), *sent[5:]),  # nor a float
        list(sent),  # not a tuple
        (*sent[:7], -1, *sent[8:]),  # negative payload size
        (*sent[:7], sent[3] + 1, *sent[8:]),  # payload larger than the file
        (*sent[:9], "not an etag!", *sent[10:]),
        (*sent[:18], 2, sent[19]),  # update logic neither 0 nor 1
        (*sent[:19], 2**32),  # CRC beyond 32 bits
        (*sent[:10], float("nan"), *sent[11:]),
        (*sent[:11], True, *sent[12:]),  # a bool is not a generation
    ]
    for values in bad:
        assert _received_facts(values, {}) is None, values


# --- the review's attack pass: failures of the sharing itself never fail the call ------------------------


def test_a_process_with_descriptors_above_1023_still_waits_for_batches() -> None:
    """A server with a thousand connections has descriptors above 1023, where ``select`` cannot wait: the
    caller still waits for the helper's last batches on such a pipe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the hard descriptor limit is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        read_fd, write_fd = os.pipe()
        assert read_fd > 1023
        data = marshal.dumps(([7], [["seven"]]))

        def later() -> None:  # the helper's last batch, sent after the caller began to wait
            time.sleep(0.2)
            os.write(write_fd, struct.pack("<I", len(data)) + data)
            os.close(write_fd)

        writer = threading.Thread(target=later)
        writer.start()
        batches = parallel_opens._Batches(read_fd, 10)
        deadline = time.monotonic() + 10
        while not batches.ended and batches.wait(deadline):
            pass
        ended = batches.ended
        writer.join()
        os.close(read_fd)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ended
    assert batches.take() == [([7], [["seven"]])]


def test_no_pipe_to_be_had_means_doing_everything_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (EMFILE) when setting up: the call does all items itself instead of raising."""

    def no_pipe() -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(parallel_opens.os, "pipe", no_pipe)
    done: list[int] = []
    share = share_with_helper(COUNT, done.append, lambda i: (i,), Received())
    assert (share.forked, share.done, done) == (False, COUNT, list(range(COUNT)))


def test_a_batch_larger_than_the_pipe_does_not_stall_the_helper(helper_pids: list[int]) -> None:
    """One item of 100 KB (a state.json may hold a 60 KB timestamp) makes a batch larger than the pipe's
    buffer: the caller reads it while it works, and the helper goes on sharing."""

    def theirs(i: int) -> tuple[object, ...]:
        time.sleep(0.0005)
        return (i, "x" * 100_000 if i == COUNT - 1 else "")

    done: list[int] = []
    received = Received()
    share = share_with_helper(COUNT, _slow_own(done), theirs, received)
    assert received[COUNT - 1] == (COUNT - 1, "x" * 100_000)
    assert len(received) > BATCH, "the helper stalled after its first batch"
    assert _union(share, COUNT, done, received) == list(range(COUNT))


def test_the_helper_keeps_no_descriptor_and_no_signal_of_the_server(helper_pids: list[int]) -> None:
    """The helper closes what it inherited (locks other threads hold through ``flock`` go with their
    descriptors) but its pipe, and takes SIGTERM by default even when the forking thread blocked it."""
    lock_file = os.open(os.devnull, os.O_RDONLY)

    def theirs(i: int) -> tuple[object, ...]:
        time.sleep(0.0005)
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        return (lock_file in fds, len([fd for fd in fds if fd > 2]), blocked, default)

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        received = Received()
        share_with_helper(COUNT, _slow_own([]), theirs, received)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(lock_file)
    assert received, "the helper sent nothing"
    # The pipe, and the directory listdir had open: nothing else.
    assert set(received.values()) == {(False, 2, False, True)}
