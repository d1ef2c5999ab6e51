"""The sandbox zygote (``workers.zygote``): a separate small process forks the children; the worker keeps the
clock, the exit status and the rusage. Real processes, real wasmtime."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import guests
import pytest

from broker.settings import Settings
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers import supervisor
from workers import zygote as zygote_module
from workers.channel import Channel, ProtocolViolation
from workers.child import ChildJob, _receive_job
from workers.confine import ALL_LAYERS
from workers.engine import GuestLimits, compile_module
from workers.refresh import COMMITTED, FAILED, RefreshOutcome, execute_guest, run_refresh
from workers.runtime import GuestRuntime
from workers.spare import send_job
from workers.zygote import Spawned, Zygote, policy_from_json, policy_to_json, zygote_pids

COUNTER = guests.run_counter()
LOOP = guests.endless_loop()


def _runtime(cache: Path, *, zygote: bool = True) -> GuestRuntime:
    values = {"cache_dir": cache, "sandbox": "strict", "sandbox_zygote": zygote}
    return GuestRuntime(Settings.from_env(values, env={}))


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[GuestRuntime]:
    """A strict runtime with a zygote, stopped after the case."""
    runtime = _runtime(tmp_path / "cache")
    yield runtime
    runtime.close()


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids the zygote answers ``spawn`` with, in order."""
    pids: list[int] = []
    original = Zygote.spawn

    def recording(self: Zygote, child_sock: socket.socket, module_key: str | None = None) -> Spawned:
        spawned = original(self, child_sock, module_key)
        pids.append(spawned.pid)
        return spawned

    monkeypatch.setattr(Zygote, "spawn", recording)
    return pids


def _refresh(runtime: GuestRuntime, path: Path, wasm: bytes = COUNTER, timeout: int = 10) -> RefreshOutcome:
    make_archive(path, b"hello", manifest=make_manifest(timeout=timeout), wasm=wasm)
    return run_refresh(path, runtime)


def _payload(path: Path) -> bytes:
    with open_archive(path) as snap:
        return snap.read_payload()


def _zygote(runtime: GuestRuntime) -> Zygote:
    assert runtime.zygote is not None
    return runtime.zygote


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def test_policy_round_trips_through_json(runtime: GuestRuntime) -> None:
    policy = runtime.policy_for(GuestLimits(timeout_seconds=3))
    assert policy_from_json(policy_to_json(policy)) == policy


def test_a_job_through_the_zygote_matches_a_fresh_fork(
    tmp_path: Path, runtime: GuestRuntime, spawned: list[int]
) -> None:
    """Same outcome, payload and complete report; the child was the zygote's, not this process's; the
    worker still got its exit status and rusage."""
    forked = _runtime(tmp_path / "cache-fork", zygote=False)
    via_zygote = _refresh(runtime, tmp_path / "a.sync")
    via_fork = _refresh(forked, tmp_path / "b.sync")
    for outcome, path in ((via_zygote, tmp_path / "a.sync"), (via_fork, tmp_path / "b.sync")):
        assert (outcome.status, outcome.error_code) == (COMMITTED, None)
        assert _payload(path) == b"\x01"
        assert outcome.sandbox is not None
        assert [layer["layer"] for layer in outcome.sandbox["layers"]] == [x.value for x in ALL_LAYERS]
        assert all(layer["active"] for layer in outcome.sandbox["layers"])
    assert len(spawned) == 1
    assert _zygote(runtime).pid not in (None, os.getpid())
    with open_archive(tmp_path / "a.sync") as snap:
        result = execute_guest(snap, COUNTER, runtime)
    assert result.error is None
    assert result.usage is not None
    assert result.usage.max_rss_kib > 0
    assert result.usage.exit_status in (0, -signal.SIGKILL)
    result.close()


def test_each_job_runs_in_a_fresh_child(tmp_path: Path, runtime: GuestRuntime, spawned: list[int]) -> None:
    """Three jobs, three children (each reaped), and no guest state carried over."""
    for n in range(3):
        assert _refresh(runtime, tmp_path / f"{n}.sync").status == COMMITTED
        assert _payload(tmp_path / f"{n}.sync") == b"\x01"
    assert len(set(spawned)) == 3
    assert all(_ppid(pid) is None for pid in spawned)  # reaped by the zygote


def test_the_deadline_kills_a_child_of_the_zygote(
    tmp_path: Path, runtime: GuestRuntime, monkeypatch: pytest.MonkeyPatch, spawned: list[int]
) -> None:
    """A looping guest with fuel for hours is killed by the worker at its 1 s deadline."""
    monkeypatch.setattr(runtime, "limits_for", lambda _m: GuestLimits(fuel=10**15, timeout_seconds=1.0))
    make_archive(tmp_path / "loop.sync", b"hello", manifest=make_manifest(timeout=1), wasm=LOOP)
    with open_archive(tmp_path / "loop.sync") as snap:
        result = execute_guest(snap, LOOP, runtime)
    assert result.error is not None
    assert result.error.code == "guest_timeout"
    assert result.usage is not None
    assert result.usage.exit_status == -signal.SIGKILL
    assert _ppid(spawned[0]) is None


def test_a_zygote_killed_between_jobs_is_restarted(
    tmp_path: Path, runtime: GuestRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """The next job notices the dead zygote, starts another and runs."""
    assert _refresh(runtime, tmp_path / "a.sync").status == COMMITTED
    first = _zygote(runtime).pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="workers.zygote"):
        outcome = _refresh(runtime, tmp_path / "b.sync")
    assert outcome.status == COMMITTED
    assert "sandbox zygote failed, restarting" in caplog.text
    assert _zygote(runtime).pid not in (None, first)
    assert _ppid(first) is None  # reaped


def test_a_zygote_killed_during_a_job_fails_it_clearly(
    tmp_path: Path, runtime: GuestRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child dies with its zygote; the job fails naming the zygote; the next job gets a new one."""
    assert _refresh(runtime, tmp_path / "warm.sync").status == COMMITTED
    first = _zygote(runtime).pid
    assert first is not None
    monkeypatch.setattr(runtime, "limits_for", lambda _m: GuestLimits(fuel=10**15, timeout_seconds=20.0))
    killer = threading.Timer(0.5, os.kill, (first, signal.SIGKILL))
    killer.daemon = True
    killer.start()
    outcome = _refresh(runtime, tmp_path / "loop.sync", LOOP, timeout=20)
    killer.join()
    assert (outcome.status, outcome.error_code) == (FAILED, "guest_error")
    assert "zygote died" in (outcome.error or "")
    assert outcome.duration_ms < 15_000  # not left to the deadline
    monkeypatch.undo()
    assert _refresh(runtime, tmp_path / "next.sync").status == COMMITTED
    assert _zygote(runtime).pid not in (None, first)


def test_the_zygote_inherits_no_secret_and_no_socket(
    tmp_path: Path, runtime: GuestRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh interpreter: no ``SYNC_*`` variable (secrets) in its environment, no descriptor of ours."""
    monkeypatch.setenv("SYNC_GUEST_SECRET_TOKEN", "do-not-leak")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        ours = os.readlink(f"/proc/self/fd/{mine.fileno()}")
        assert _refresh(runtime, tmp_path / "a.sync").status == COMMITTED
        pid = _zygote(runtime).pid
        assert pid in zygote_pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"SYNC_" not in environ
        assert b"do-not-leak" not in environ
        theirs = {
            os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.name not in ("0", "1", "2")
        }
        assert ours not in theirs
        assert sum(link.startswith("socket:") for link in theirs) == 2  # its control socket, its spare's
        # Its policy and seccomp filter came on its control socket: its command line, which any local user
        # reads, holds only the socket's number and our pid.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"workers.zygote_main"]
        assert cmdline[3].isdigit()
        assert cmdline[4:] == [str(os.getpid()).encode(), b""]


def test_strict_mode_refuses_a_missing_layer_in_a_zygote_child(tmp_path: Path) -> None:
    """Without a seccomp program the zygote's children report the layer missing and strict refuses."""
    runtime = _runtime(tmp_path / "cache")
    runtime.seccomp_program = None
    runtime.zygote = Zygote(runtime.policy, None)
    try:
        outcome = _refresh(runtime, tmp_path / "a.sync")
    finally:
        runtime.close()
    assert (outcome.status, outcome.error_code) == (FAILED, "sandbox_unavailable")
    assert (outcome.error or "").startswith("seccomp: ")
    assert outcome.entry is None
    assert _payload(tmp_path / "a.sync") == b"hello"


def test_closing_the_runtime_stops_the_zygote(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path / "cache")
    assert _refresh(runtime, tmp_path / "a.sync").status == COMMITTED
    pid = _zygote(runtime).pid
    runtime.close()
    assert pid is not None
    assert _ppid(pid) is None
    assert pid not in zygote_pids()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each job sent to a zygote's child, whether it went by key (the child held its module)."""
    held: list[bool] = []
    original = supervisor.send_job

    def recording(
        channel: Channel, job: ChildJob, deadline: float | None = None, *, module_held: bool = False
    ) -> None:
        held.append(module_held)
        original(channel, job, deadline, module_held=module_held)

    monkeypatch.setattr(supervisor, "send_job", recording)
    return held


def test_the_zygote_keeps_a_module_and_its_next_children_hold_it(
    tmp_path: Path, runtime: GuestRuntime, sent: list[bool], spawned: list[int]
) -> None:
    """The first job of a module sends its bytes; the zygote then keeps it, the later jobs send only its key,
    and each still runs in a fresh child with every layer active and no state of the job before."""
    for n in range(3):
        outcome = _refresh(runtime, tmp_path / f"{n}.sync")
        assert (outcome.status, outcome.error_code) == (COMMITTED, None)
        assert _payload(tmp_path / f"{n}.sync") == b"\x01"
        assert outcome.sandbox is not None
        assert [layer["layer"] for layer in outcome.sandbox["layers"]] == [x.value for x in ALL_LAYERS]
        assert all(layer["active"] for layer in outcome.sandbox["layers"])
    assert sent == [False, True, True]
    assert len(set(spawned)) == 3


def test_a_job_of_another_module_is_sent_its_bytes(
    tmp_path: Path, runtime: GuestRuntime, sent: list[bool]
) -> None:
    """A child holding only another guest's module gets this job's module in full and runs this guest."""
    assert _refresh(runtime, tmp_path / "a.sync").status == COMMITTED
    assert _refresh(runtime, tmp_path / "b.sync").status == COMMITTED
    other = guests.record(guests.call("payload_size"))
    outcome = _refresh(runtime, tmp_path / "c.sync", other)
    assert (outcome.status, outcome.error_code) == (COMMITTED, None)
    assert guests.results(_payload(tmp_path / "c.sync"), 1)[0] == [len(b"hello")]
    assert sent == [False, True, False]


def _job_channel(job: ChildJob, *, module_held: bool) -> tuple[Channel, Channel]:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent, child = Channel(parent_end), Channel(child_end)
    send_job(parent, job, module_held=module_held)
    return parent, child


def test_a_child_keeps_only_its_own_jobs_module(runtime: GuestRuntime) -> None:
    """The modules a zygote's child inherited are dropped once its job arrived, the job's own included in
    the child's table (the job keeps its reference), before any late layer or guest code."""
    ours = compile_module(runtime.engine, COUNTER)
    theirs = compile_module(runtime.engine, LOOP)
    job = ChildJob(runtime.engine, ours, b"x", GuestLimits(), runtime.policy, None, module_key="ours")
    held = {"ours": ours, "theirs": theirs}
    parent, child = _job_channel(job, module_held=True)
    with parent.sock, child.sock:
        received = _receive_job(child, runtime.engine, runtime.policy, None, held)
    assert received.module is ours
    assert held == {}


def test_a_job_naming_a_module_the_child_lacks_is_refused(runtime: GuestRuntime) -> None:
    """A key the child does not hold is a protocol violation (never some other module), and the child's
    inherited modules are dropped all the same."""
    ours = compile_module(runtime.engine, COUNTER)
    job = ChildJob(runtime.engine, ours, b"x", GuestLimits(), runtime.policy, None, module_key="ours")
    held = {"theirs": compile_module(runtime.engine, LOOP)}
    parent, child = _job_channel(job, module_held=True)
    with parent.sock, child.sock, pytest.raises(ProtocolViolation):
        _receive_job(child, runtime.engine, runtime.policy, None, held)
    assert held == {}


def test_a_module_handed_over_unsealed_is_not_kept(
    tmp_path: Path, runtime: GuestRuntime, sent: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zygote deserialises (native code, outside any sandbox) only a sealed memfd: handed an unsealed one,
    whose bytes someone could still change, it keeps nothing, and every job is sent its module in full."""

    def unsealed(data: bytes) -> int:
        fd = os.memfd_create("sync-module", os.MFD_CLOEXEC)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    monkeypatch.setattr(zygote_module, "_memfd_with", unsealed)
    for n in range(3):
        outcome = _refresh(runtime, tmp_path / f"{n}.sync")
        assert (outcome.status, outcome.error_code) == (COMMITTED, None)
    assert sent == [False, False, False]
