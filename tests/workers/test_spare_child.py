"""The spare child (``workers.spare``): a child forked ahead of its job runs it exactly like a fresh fork.

Real processes and real wasmtime: each case refreshes archives through a runtime with
``sandbox_spare_child`` on and checks the outcome, the confinement report and which processes exist.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import guests
import pytest

import workers.spare as spare_module
from broker.settings import Settings
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers.confine import ALL_LAYERS, SandboxPolicy
from workers.engine import GuestLimits
from workers.refresh import COMMITTED, FAILED, RefreshOutcome, run_refresh
from workers.runtime import GuestRuntime
from workers.spare import SpareChild, spare_pids

COUNTER = guests.run_counter()
LOOP = guests.endless_loop()


def _runtime(cache: Path, *, spare: bool = True) -> GuestRuntime:
    values = {"cache_dir": cache, "sandbox": "strict", "sandbox_spare_child": spare}
    return GuestRuntime(Settings.from_env(values, env={}))


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[GuestRuntime]:
    """A strict runtime with a spare child, closed (its spare reaped) after the case."""
    runtime = _runtime(tmp_path / "cache")
    yield runtime
    runtime.close()


def _refresh(runtime: GuestRuntime, path: Path, wasm: bytes = COUNTER, timeout: int = 10) -> RefreshOutcome:
    make_archive(path, b"hello", manifest=make_manifest(timeout=timeout), wasm=wasm)
    return run_refresh(path, runtime)


def _payload(path: Path) -> bytes:
    with open_archive(path) as snap:
        return snap.read_payload()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_exited(pid: int) -> None:
    """Wait until ``pid`` is a zombie (it is not reaped here: its holder must notice)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, f"{pid} did not exit"
        time.sleep(0.01)


def _without_sizes(outcome: RefreshOutcome) -> list[tuple[str, bool, str]]:
    """The report's layers; the rlimits detail without what depends on the process (mapped size, fds)."""
    out = []
    for layer in (outcome.sandbox or {})["layers"]:
        detail = layer["detail"]
        if layer["layer"] == "rlimits":
            detail = " ".join(p for p in detail.split() if not p.startswith(("as=", "nofile=")))
        out.append((layer["layer"], layer["active"], detail))
    return out


def test_a_job_through_the_spare_matches_a_fresh_fork(tmp_path: Path, runtime: GuestRuntime) -> None:
    """The same guest gives the same outcome, payload and (complete) confinement report either way."""
    forked = _runtime(tmp_path / "cache-fork", spare=False)
    runtime.spare.refill()  # type: ignore[union-attr]
    spare_pid = runtime.spare.pid  # type: ignore[union-attr]
    via_spare = _refresh(runtime, tmp_path / "a.sync")
    via_fork = _refresh(forked, tmp_path / "b.sync")
    assert _gone(spare_pid), "the spare ran the job and was reaped"
    for outcome, path in ((via_spare, tmp_path / "a.sync"), (via_fork, tmp_path / "b.sync")):
        assert (outcome.status, outcome.error_code) == (COMMITTED, None)
        assert _payload(path) == b"\x01"
        assert outcome.sandbox is not None
        assert [layer["layer"] for layer in outcome.sandbox["layers"]] == [
            layer.value for layer in ALL_LAYERS
        ]
        assert all(layer["active"] for layer in outcome.sandbox["layers"])
    assert _without_sizes(via_spare) == _without_sizes(via_fork)
    assert (via_spare.entry, via_spare.payload_size) == (via_fork.entry, via_fork.payload_size)


def test_each_job_runs_in_a_fresh_child(tmp_path: Path, runtime: GuestRuntime) -> None:
    """Every job gets its own child (pids differ, each reaped) and no guest state carries over."""
    seen = []
    for n in range(3):
        before = runtime.spare.pid  # type: ignore[union-attr]
        outcome = _refresh(runtime, tmp_path / f"{n}.sync")
        assert outcome.status == COMMITTED
        assert _payload(tmp_path / f"{n}.sync") == b"\x01"  # the counter starts from 0 every time
        after = runtime.spare.pid  # type: ignore[union-attr]
        assert after is not None
        assert after != before
        assert before is None or _gone(before)
        seen.append(after)
    assert len(set(seen)) == 3
    assert set(spare_pids()) >= {seen[-1]}


def test_the_deadline_kills_a_child_from_the_spare(
    tmp_path: Path, runtime: GuestRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A looping guest in a spare (fuel for hours) is killed at its 1 s deadline and reported as a timeout."""
    _refresh(runtime, tmp_path / "warm.sync")  # the next job goes to a spare
    assert runtime.spare is not None
    assert runtime.spare.pid is not None
    spare_pid = runtime.spare.pid
    monkeypatch.setattr(
        runtime, "limits_for", lambda _manifest: GuestLimits(fuel=10**15, timeout_seconds=1.0)
    )
    outcome = _refresh(runtime, tmp_path / "loop.sync", LOOP, timeout=1)
    assert (outcome.status, outcome.error_code) == (FAILED, "guest_timeout")
    assert _gone(spare_pid)
    assert _payload(tmp_path / "loop.sync") == b"hello"


def test_a_spare_that_died_is_replaced_and_the_job_still_runs(
    tmp_path: Path, runtime: GuestRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """A spare killed while it waits is noticed, reaped and logged; the job forks a fresh child."""
    runtime.spare.refill()  # type: ignore[union-attr]
    dead = runtime.spare.pid  # type: ignore[union-attr]
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    _wait_exited(dead)
    with caplog.at_level(logging.WARNING, logger="workers.spare"):
        outcome = _refresh(runtime, tmp_path / "a.sync")
    assert outcome.status == COMMITTED
    assert _payload(tmp_path / "a.sync") == b"\x01"
    assert "sandbox spare child died before its job" in caplog.text
    assert _gone(dead)
    assert runtime.spare.pid not in (None, dead)  # type: ignore[union-attr]


def test_strict_mode_still_refuses_a_missing_layer_in_a_spare(tmp_path: Path) -> None:
    """A spare made without a seccomp program reports the layer missing and strict mode refuses the job."""
    runtime = _runtime(tmp_path / "cache")
    runtime.seccomp_program = None
    runtime.spare = SpareChild(runtime.engine, runtime.policy, None)
    runtime.spare.refill()
    spare_pid = runtime.spare.pid
    try:
        outcome = _refresh(runtime, tmp_path / "a.sync")
    finally:
        runtime.close()
    assert (outcome.status, outcome.error_code) == (FAILED, "sandbox_unavailable")
    assert (outcome.error or "").startswith("seccomp: ")
    assert outcome.entry is None
    assert spare_pid is not None
    assert _gone(spare_pid)
    assert _payload(tmp_path / "a.sync") == b"hello"


def test_a_job_too_big_to_send_forks_and_keeps_the_spare(
    tmp_path: Path, runtime: GuestRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload over ``MAX_SENT_BYTES`` runs in a fresh fork; the spare waits for the next job."""
    monkeypatch.setattr(spare_module, "MAX_SENT_BYTES", 1)
    runtime.spare.refill()  # type: ignore[union-attr]
    kept = runtime.spare.pid  # type: ignore[union-attr]
    outcome = _refresh(runtime, tmp_path / "a.sync")
    assert outcome.status == COMMITTED
    assert runtime.spare.pid == kept  # type: ignore[union-attr]
    assert kept is not None
    assert not _gone(kept)


def test_closing_the_runtime_reaps_its_spare(tmp_path: Path) -> None:
    """``GuestRuntime.close`` kills and reaps the spare; nothing is left behind."""
    runtime = _runtime(tmp_path / "cache")
    runtime.spare.refill()  # type: ignore[union-attr]
    pid = runtime.spare.pid  # type: ignore[union-attr]
    assert pid in spare_pids()
    runtime.close()
    assert pid is not None
    assert _gone(pid)
    assert pid not in spare_pids()


def test_a_runtime_policy_change_discards_the_spare(tmp_path: Path, runtime: GuestRuntime) -> None:
    """A spare made for another policy is not used: it is discarded and the job forks."""
    runtime.spare.refill()  # type: ignore[union-attr]
    stale = runtime.spare.pid  # type: ignore[union-attr]
    runtime.policy = SandboxPolicy(read_only_paths=("/",))
    outcome = _refresh(runtime, tmp_path / "a.sync")
    assert outcome.status == COMMITTED
    assert stale is not None
    assert _gone(stale)
    landlock = next(layer for layer in (outcome.sandbox or {})["layers"] if layer["layer"] == "landlock")
    assert "read-only: /" in landlock["detail"]
