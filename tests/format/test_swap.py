"""The atomic payload swap ``commit_payload``: state, entry order, the generation guard, readers of old
snapshots, concurrent committers in separate processes, and crash safety under SIGKILL.

Concurrency and crash tests use real processes (``spawn`` workers and ``subprocess`` children), never
threads in the pytest process, and synchronise on pipes and barriers, not on sleeps.
"""

from __future__ import annotations

import fcntl
import inspect
import io
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import blake3
import pytest

from sync_format import (
    CONTEXT_ENTRY,
    MANIFEST_ENTRY,
    PAYLOAD_ENTRY,
    PROOF_ENTRY,
    STATE_ENTRY,
    WASM_ENTRY,
    ArchiveError,
    CommitLockBusy,
    SwapConflict,
    open_archive,
    parse_timestamp_ns,
    swap,
)
from sync_format.atomic import create_temp, is_temp_name
from sync_format.freshness import format_timestamp, now_ns
from sync_format.store import iter_archives
from sync_format.swap import StagedPayload, commit_payload
from sync_format.testing import make_archive

#: Generous bound for a child process to answer; only reached when something is broken.
CHILD_TIMEOUT_S = 60.0
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def payload_for(name: str, generation: int, max_size: int) -> bytes:
    """The payload archive ``name`` holds at ``generation``: deterministic, of size 0..max_size."""
    seed = blake3.blake3(f"{name}:{generation}".encode()).digest()
    size = int.from_bytes(seed[:4], "big") % (max_size + 1)
    return blake3.blake3(seed).digest(length=size)


def _temp_names(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if is_temp_name(name))


def _entries_in_file_order(path: Path) -> list[str]:
    with open_archive(path) as snapshot:
        return [e.name for e in sorted(snapshot.directory.entries, key=lambda e: e.header_offset)]


# --- state, order, manifest bytes ------------------------------------------------------------------


def _stage_bytes(data: bytes, _tmp: Path) -> StagedPayload:
    return data


def _stage_path(data: bytes, tmp: Path) -> StagedPayload:
    staged = tmp / "staged.bin"
    staged.write_bytes(data)
    return staged


def _stage_stream(data: bytes, _tmp: Path) -> StagedPayload:
    return (io.BytesIO(data), len(data))


@pytest.mark.parametrize(
    "stage",
    [
        pytest.param(_stage_bytes, id="bytes"),
        pytest.param(_stage_path, id="path"),
        pytest.param(_stage_stream, id="stream"),
    ],
)
def test_commit_increments_generation_and_records_state(
    tmp_path: Path, stage: Callable[[bytes, Path], StagedPayload]
) -> None:
    """Each commit adds one to the generation and stores updated_at, size, CRC-32 and BLAKE3 of the new
    payload in state.json, whatever form the payload is staged in."""
    path = tmp_path / "a.sync"
    make_archive(path)
    with open_archive(path) as before:
        assert before.generation == 0
        assert before.state.updated_at is None
    for generation, data in enumerate((b"first new payload", b"", b"x" * 100_000), start=1):
        low = parse_timestamp_ns(_now_text())
        result = commit_payload(path, generation - 1, stage(data, tmp_path))
        high = parse_timestamp_ns(_now_text())
        assert result.generation == generation
        state = result.state
        assert state.generation == generation
        assert state.updated_at is not None
        assert RFC3339_UTC.fullmatch(state.updated_at)
        assert low <= parse_timestamp_ns(state.updated_at) <= high
        assert state.payload_size == len(data)
        assert state.payload_crc32 == zlib.crc32(data)
        assert state.payload_blake3 == blake3.blake3(data).hexdigest()
        assert state.stale is False
        with open_archive(path) as after:
            assert after.state == state
            assert after.generation == generation
            assert after.payload_offset == result.payload_offset
            assert after.read_payload() == data
            assert after.digest_payload().blake3 == state.payload_blake3


def _now_text() -> str:
    return format_timestamp(now_ns())


def test_commit_keeps_entries_in_order_and_manifest_bytes(tmp_path: Path) -> None:
    """A commit copies every other entry unchanged in its order, then writes the payload, then state.json."""
    path = tmp_path / "full.sync"
    make_archive(path, b"old", context=b'{"k":1}', proof=b"proof bytes")
    with open_archive(path) as before:
        manifest_bytes = before.manifest_bytes
        others = {name: before.read_entry(name) for name in (WASM_ENTRY, CONTEXT_ENTRY, PROOF_ENTRY)}
    commit_payload(path, 0, b"new payload")
    expected = [MANIFEST_ENTRY, WASM_ENTRY, CONTEXT_ENTRY, PROOF_ENTRY, PAYLOAD_ENTRY, STATE_ENTRY]
    with open_archive(path) as after:
        assert list(after.entry_names) == expected
        assert after.manifest_bytes == manifest_bytes
        assert {name: after.read_entry(name) for name in others} == others
        assert after.read_payload() == b"new payload"
    assert _entries_in_file_order(path) == expected


def test_commit_of_a_reference_archive_moves_the_payload_last(tmp_path: Path) -> None:
    """TV-2: an archive in the reference layout (no state.json) gets manifest, wasm, payload, state.json."""
    path = tmp_path / "tv1.sync"
    make_archive(path, state=False)
    assert _entries_in_file_order(path) == [MANIFEST_ENTRY, PAYLOAD_ENTRY, WASM_ENTRY]
    with open_archive(path) as before:
        assert before.generation == 0
        manifest_bytes = before.manifest_bytes
    result = commit_payload(path, 0, b"updated payload bytes")
    assert result.generation == 1
    assert _entries_in_file_order(path) == [MANIFEST_ENTRY, WASM_ENTRY, PAYLOAD_ENTRY, STATE_ENTRY]
    with open_archive(path) as after:
        assert after.manifest_bytes == manifest_bytes
        assert after.payload_size == 21


# --- the generation guard ---------------------------------------------------------------------------


def test_stale_generation_raises_swap_conflict_and_leaves_the_archive(tmp_path: Path) -> None:
    """A commit based on an old generation raises SwapConflict, changes no byte and leaves no temp file."""
    path = tmp_path / "a.sync"
    make_archive(path)
    commit_payload(path, 0, b"generation one")
    before = path.read_bytes()
    inode = path.stat().st_ino
    for stale in (0, 2, 7):
        with pytest.raises(SwapConflict) as info:
            commit_payload(path, stale, b"must not land")
        assert info.value.expected_generation == stale
        assert info.value.actual_generation == 1
        assert info.value.path == path
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode
    assert _temp_names(tmp_path) == []


def test_generation_moving_during_the_write_raises_swap_conflict(tmp_path: Path) -> None:
    """A commit whose base generation moves while its temp file is being written loses under the lock,
    and its temp file is removed."""
    path = tmp_path / "a.sync"
    make_archive(path)
    intruded: list[int] = []

    def intrude(_done: int) -> None:
        if not intruded:
            intruded.append(commit_payload(path, 0, b"the intruder wins").generation)

    with pytest.raises(SwapConflict) as info:
        commit_payload(path, 0, b"y" * (3 * 1024 * 1024), progress=intrude)
    assert intruded == [1]
    assert (info.value.expected_generation, info.value.actual_generation) == (0, 1)
    with open_archive(path) as snapshot:
        assert snapshot.generation == 1
        assert snapshot.read_payload() == b"the intruder wins"
    assert _temp_names(tmp_path) == []


def test_a_commit_lock_held_by_someone_else_bounds_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever may read a folder can take its commit lock (an ``flock`` on the directory) and keep it: a
    commit waits ``COMMIT_LOCK_WAIT`` at most, then raises ``CommitLockBusy`` and changes nothing; once the
    lock is let go, the same commit goes through."""
    monkeypatch.setattr(swap, "COMMIT_LOCK_WAIT", 0.3)
    target = tmp_path / "a.sync"
    make_archive(target, b"old")
    holder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # another open file: another lock owner
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(CommitLockBusy, match="commit lock"):
            commit_payload(target, 0, b"new")
        assert time.monotonic() - started < 30
        with open_archive(target) as snap:
            assert (snap.generation, snap.read_payload()) == (0, b"old")
        assert _temp_names(tmp_path) == []
    finally:
        os.close(holder)
    assert commit_payload(target, 0, b"new").generation == 1


def test_oversized_payload_is_refused_without_touching_the_archive(tmp_path: Path) -> None:
    """A payload over max_payload_size is refused with ArchiveError before anything is written."""
    path = tmp_path / "a.sync"
    make_archive(path)
    before = path.read_bytes()
    with pytest.raises(ArchiveError, match="exceeds the limit"):
        commit_payload(path, 0, b"z" * 101, max_payload_size=100)
    assert path.read_bytes() == before
    assert _temp_names(tmp_path) == []


def test_temp_files_are_recognised_and_not_listed(tmp_path: Path) -> None:
    """Temp files made next to an archive are recognised by is_temp_name and skipped by iter_archives."""
    path = tmp_path / "a.sync"
    make_archive(path)
    temp, handle = create_temp(path)
    handle.close()
    assert is_temp_name(temp.name)
    assert temp.name.endswith(".sync-tmp")
    assert list(iter_archives(tmp_path)) == [path]
    assert not is_temp_name(path.name)


# --- readers of old snapshots ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["read", "readinto"])
def test_old_snapshot_reader_reads_old_bytes_to_the_end(tmp_path: Path, method: str) -> None:
    """A payload reader opened before several commits keeps reading the original bytes to the end."""
    path = tmp_path / "big.sync"
    original = blake3.blake3(b"big").digest(length=16 * 1024 * 1024)
    make_archive(path, original)
    block = 1024 * 1024
    snapshot = open_archive(path)
    reader = snapshot.open_payload()
    chunks: list[bytes] = []
    buffer = bytearray(block)
    generation = 0
    try:
        while True:
            chunk = reader.read(block) if method == "read" else bytes(buffer[: reader.readinto(buffer)])
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunks) <= 6:  # interleave commits with the first blocks
                generation = commit_payload(path, generation, f"new {generation}".encode()).generation
        assert b"".join(chunks) == original
        assert snapshot.read_payload() == original
        assert snapshot.generation == 0
    finally:
        reader.close()
        snapshot.close()
    with open_archive(path) as latest:
        assert latest.generation == generation == 6
        assert latest.read_payload() == b"new 5"


# --- concurrent committers ------------------------------------------------------------------------


def _racer(conn: Connection, barrier: Any) -> None:
    """Worker process: per job, wait at the barrier with the other racer, then try to commit."""
    while True:
        job = conn.recv()
        if job is None:
            return
        path, generation, payload = job
        barrier.wait()
        try:
            result = commit_payload(path, generation, payload)
        except SwapConflict as exc:
            conn.send(("conflict", exc.expected_generation, exc.actual_generation))
        except Exception as exc:  # noqa: BLE001  (reported to the parent, which fails the test)
            conn.send(("error", repr(exc), None))
        else:
            conn.send(("ok", result.generation, None))


def _receive(conn: Connection) -> tuple[str, Any, Any]:
    assert conn.poll(CHILD_TIMEOUT_S), "racer did not answer"
    reply: tuple[str, Any, Any] = conn.recv()
    return reply


def test_concurrent_committers_exactly_one_wins(tmp_path: Path) -> None:
    """Two processes committing on the same base generation, released together, yield exactly one
    success and one SwapConflict, round after round."""
    path = tmp_path / "race.sync"
    make_archive(path, b"base")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    pipes = [ctx.Pipe() for _ in range(2)]
    workers = [ctx.Process(target=_racer, args=(child, barrier), daemon=True) for _, child in pipes]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(20):
            payloads = [f"round {round_} racer {i} ".encode() * 4096 for i in range(2)]
            for (parent, _), payload in zip(pipes, payloads, strict=True):
                parent.send((str(path), round_, payload))
            replies = [_receive(parent) for parent, _ in pipes]
            outcomes = sorted(reply[0] for reply in replies)
            assert outcomes == ["conflict", "ok"], replies
            winner = next(i for i, reply in enumerate(replies) if reply[0] == "ok")
            loser = replies[1 - winner]
            assert replies[winner][1] == round_ + 1
            assert loser[1:] == (round_, round_ + 1)
            with open_archive(path) as snapshot:
                assert snapshot.generation == round_ + 1
                assert snapshot.read_payload() == payloads[winner]
        assert _temp_names(tmp_path) == []
    finally:
        barrier.abort()  # frees a racer left waiting when a round failed; idle racers ignore it
        for parent, _ in pipes:
            parent.send(None)
        for worker in workers:
            worker.join(CHILD_TIMEOUT_S)
    assert [worker.exitcode for worker in workers] == [0, 0]


# --- crash safety -----------------------------------------------------------------------------------

CRASH_ARCHIVES = ("alpha.csv.sync", "beta.sync", "gamma.json.sync")
CRASH_MAX_SIZE = 3 * 1024 * 1024
CRASH_ROUNDS = 60

#: The crash child: commits the next deterministic payload to each archive in turn, forever, printing a
#: line per payload block copied ("p") and per commit ("c"). ``payload_for`` is this module's, verbatim.
_CRASH_CHILD = (
    "import blake3\n\n"
    + inspect.getsource(payload_for)
    + textwrap.dedent(
        """
        import sys
        from pathlib import Path

        from sync_format.reader import open_archive
        from sync_format.swap import commit_payload

        def progress(_done):
            sys.stdout.write("p\\n")
            sys.stdout.flush()

        max_size = int(sys.argv[1])
        while True:
            for path in sys.argv[2:]:
                with open_archive(path) as snapshot:
                    generation = snapshot.generation
                payload = payload_for(Path(path).name, generation + 1, max_size)
                commit_payload(path, generation, payload, progress=progress)
                sys.stdout.write(f"c {Path(path).name} {generation + 1}\\n")
                sys.stdout.flush()
        """
    )
)


def _check_archives_after_crash(directory: Path, last_seen: dict[str, int], seed: int) -> None:
    for name in CRASH_ARCHIVES:
        with open_archive(directory / name) as snapshot:
            generation = snapshot.generation
            payload = snapshot.read_payload()  # verifies the CRC-32
            state = snapshot.state
            assert not state.stale, (seed, name)
            assert snapshot.digest_payload().blake3 == state.payload_blake3, (seed, name)
        assert generation >= last_seen[name], (seed, name)
        assert payload == payload_for(name, generation, CRASH_MAX_SIZE), (seed, name, generation)
        last_seen[name] = generation
    leftovers = [n for n in os.listdir(directory) if n not in CRASH_ARCHIVES]
    assert all(is_temp_name(n) for n in leftovers), (seed, leftovers)
    assert sorted(p.name for p in iter_archives(directory)) == sorted(CRASH_ARCHIVES)


@pytest.mark.slow
def test_sigkill_during_commits_never_tears_an_archive(tmp_path: Path) -> None:
    """Killing a committing process at random points always leaves every archive whole, with a state that
    describes its payload, holding a payload the child wrote; leftover temp files are ignored."""
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    for name in CRASH_ARCHIVES:
        make_archive(tmp_path / name, payload_for(name, 0, CRASH_MAX_SIZE))
    last_seen = dict.fromkeys(CRASH_ARCHIVES, 0)
    args = [str(CRASH_MAX_SIZE), *(str(tmp_path / name) for name in CRASH_ARCHIVES)]
    for _ in range(CRASH_ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-c", _CRASH_CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        assert child.stdout is not None
        try:
            for _ in range(rng.randint(1, 16)):
                if not child.stdout.readline():
                    break
            # A short random pause only randomises the kill point within the child's current step;
            # nothing waits on it.
            time.sleep(rng.random() * 0.002)
            child.send_signal(signal.SIGKILL)
            child.wait(CHILD_TIMEOUT_S)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            assert child.stderr is not None
            stderr = child.stderr.read().decode(errors="replace")
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL, (seed, stderr)
        _check_archives_after_crash(tmp_path, last_seen, seed)
    assert sum(last_seen.values()) > len(CRASH_ARCHIVES), (seed, last_seen)


def test_sweep_removes_only_abandoned_temp_files(tmp_path: Path) -> None:
    """A temp file untouched for longer than the limit is removed; a fresh one, archives and other hidden
    files stay, and a symlinked folder is not entered."""
    from sync_format.atomic import create_temp, sweep_temp_files

    store = tmp_path / "store"
    nested = store / "a" / "b"
    nested.mkdir(parents=True)
    hour_ago = time.time() - 7200
    old, handle = create_temp(nested / "x.sync")
    handle.close()
    os.utime(old, (hour_ago, hour_ago))
    fresh, handle = create_temp(store / "y.sync")
    handle.close()
    keep = [store / "y.sync", store / ".hidden-note"]
    for path in keep:
        path.write_bytes(b"kept")
    outside = tmp_path / "outside"
    outside.mkdir()
    elsewhere, handle = create_temp(outside / "z.sync")
    handle.close()
    os.utime(elsewhere, (hour_ago, hour_ago))
    (store / "link").symlink_to(outside, target_is_directory=True)

    assert sweep_temp_files(store, older_than=3600) == [old]
    assert not old.exists()
    assert fresh.exists()
    assert elsewhere.exists()
    assert all(path.exists() for path in keep)


def test_sweep_does_not_follow_a_folder_swapped_for_a_symlink_while_it_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder ``a`` is renamed away and a symlink to a folder outside the store put in its place after
    the sweep listed the root and before it entered ``a``: nothing outside is removed. (``os.walk`` checked
    for a symlink just before entering, by name, which left a window; ``os.fwalk`` enters through the
    folder's descriptor and leaves none.)"""
    from sync_format import atomic

    store, outside = tmp_path / "store", tmp_path / "outside"
    (store / "a").mkdir(parents=True)
    outside.mkdir()
    hour_ago = time.time() - 7200
    temps = []
    for folder in (store, outside):
        temp, handle = atomic.create_temp(folder / "x.sync")
        handle.close()
        os.utime(temp, (hour_ago, hour_ago))
        temps.append(temp)
    checked = atomic.is_temp_name

    def check_then_swap(name: str) -> bool:
        if (store / "a").is_dir() and not (store / "a").is_symlink():
            (store / "a").rename(store / "moved")
            (store / "a").symlink_to(outside, target_is_directory=True)
        return checked(name)

    monkeypatch.setattr(atomic, "is_temp_name", check_then_swap)
    assert atomic.sweep_temp_files(store, older_than=3600) == [temps[0]]
    assert temps[1].exists()


def test_a_commit_never_goes_through_a_symlink_as_the_archives_name(tmp_path: Path) -> None:
    """A symlink as the archive's name, to an archive only the committer may read: refused, and neither the
    link nor the archive it leads to changes (before, that archive's manifest, update logic and context were
    published under the name, its payload replaced, and the link replaced by the new file)."""
    private = tmp_path / "private.sync"
    make_archive(private, b"secret")
    before = private.read_bytes()
    link = tmp_path / "store" / "x.sync"
    link.parent.mkdir()
    link.symlink_to(private)
    with pytest.raises(ArchiveError):
        commit_payload(link, 0, b"new")
    assert link.is_symlink()
    assert private.read_bytes() == before
    assert [p.name for p in link.parent.iterdir()] == ["x.sync"]  # no temp file left either


def test_sweep_through_a_symlinked_root(tmp_path: Path) -> None:
    """The store's root may be a symlink (the operator's): its temp files are swept through it, and named
    under it."""
    from sync_format.atomic import create_temp, sweep_temp_files

    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    old, handle = create_temp(real / "a" / "x.sync")
    handle.close()
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    (tmp_path / "store").symlink_to(real, target_is_directory=True)
    assert sweep_temp_files(tmp_path / "store", older_than=3600) == [tmp_path / "store" / "a" / old.name]
    assert not old.exists()
    assert sweep_temp_files(tmp_path / "missing", older_than=3600) == []
