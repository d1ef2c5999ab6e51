"""A spare sandbox child forked ahead of its job, so a job's latency need not include the fork.

Forking the worker (a big process: Celery, wasmtime, the interpreter) and the child's first steps (its own
session, closing inherited descriptors, the empty network namespace) are most of what a trivial guest costs.
With ``Settings.sandbox_spare_child`` the runtime keeps one child forked ahead (``workers.child.spare_main``):
the supervisor sends the next job to it and forks the following spare once that job's child is reaped, so
the spare's own start (fork, session, descriptors, namespace) overlaps the caller's commit and whatever comes
before the next job instead of preceding the guest. The fork call itself still costs this process its time
(forking it while the guest ran was measured slower on two busy cores); ``workers.zygote`` moves it to
another process.

Invariants:
- Each child runs exactly one job and exits; a spare is never reused, and one that was sent a job is the
  supervisor's to reap like any forked child (``wait4``, rusage, SIGKILL of its group at the deadline).
- A spare applies every layer a fresh child applies, in the same order; the job-specific ones (rlimits with
  the job's RLIMIT_CPU, then Landlock and seccomp) only after its job arrived, before the guest is touched.
  Strict mode still refuses an incomplete report.
- A spare serves only jobs it was made for: the same engine, seccomp program and policy (apart from
  RLIMIT_CPU, which the job sends), from the process that forked it. Anything else, a payload too big to
  send cheaply, or a spare that died waiting, falls back to a fresh fork; a dead spare is reaped and logged.
- The module travels as the parent's own serialized bytes (native code: only ever from this process).
- Forking follows the supervisor's rule: no other non-daemon thread may run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import weakref
from dataclasses import asdict, dataclass, replace

import wasmtime

from workers.channel import Channel, ChannelClosed
from workers.child import ChildJob, spare_main
from workers.confine import SandboxPolicy

log = logging.getLogger(__name__)

#: Largest payload plus context sent to a spare, in bytes; bigger jobs fork (copy-on-write costs nothing).
MAX_SENT_BYTES = 8 * 1024 * 1024


#: Every ``SpareChild`` of this process, for ``spare_pids``.
_HOLDERS: weakref.WeakSet[SpareChild] = weakref.WeakSet()


def spare_pids() -> set[int]:
    """The pids of the spare children this process holds now (for tests and diagnostics).

    Returns:
        The pids; a spare already sent its job is the supervisor's child, no longer listed.
    """
    me = os.getpid()
    return {h._spare.pid for h in list(_HOLDERS) if h._spare is not None and h._spare.owner == me}


@dataclass
class _Spare:
    pid: int
    sock: socket.socket
    owner: int
    #: Discards the spare when its ``SpareChild`` is collected or the interpreter exits; detached on use.
    finalizer: weakref.finalize | None = None  # type: ignore[type-arg]


class SpareChild:
    """Holds at most one spare child for one runtime (engine, policy, seccomp program)."""

    def __init__(self, engine: wasmtime.Engine, policy: SandboxPolicy, seccomp_program: bytes | None) -> None:
        """Prepare (nothing is forked until ``refill``).

        Args:
            engine: The runtime's engine.
            policy: The runtime's policy (its RLIMIT_CPU is replaced per job).
            seccomp_program: The runtime's BPF program, or None.
        """
        self.engine = engine
        self.policy = policy
        self.seccomp_program = seccomp_program
        self._spare: _Spare | None = None
        _HOLDERS.add(self)

    def take(self, job: ChildJob, deadline: float | None = None) -> tuple[int, socket.socket] | None:
        """Send ``job`` to the spare and hand it over, or None when the caller must fork a child itself.

        Args:
            job: The prepared job.
            deadline: The job's deadline (``time.monotonic()``), for sending it (``send_job``).

        Returns:
            The child's pid and the parent's end of its channel; the caller now owns both (reaps, closes).
        """
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.owner != os.getpid() or not self._made_for(job):
            _discard(spare)
            return None
        if len(job.payload) + len(job.context) > MAX_SENT_BYTES:
            self._spare = spare  # kept for the next job; this one forks (its pages are shared, not sent)
            return None
        try:
            send_job(Channel(spare.sock), job, deadline)
        except ChannelClosed as exc:
            log.warning("sandbox spare child died before its job status=%s error=%s", _discard(spare), exc)
            return None
        if spare.finalizer is not None:
            spare.finalizer.detach()
        return spare.pid, spare.sock

    def refill(self) -> None:
        """Fork a spare if none is held (call it while a job runs, or after one).

        Raises:
            RuntimeError: Other non-daemon threads run (forking would be unsafe).
        """
        if self._spare is not None and self._spare.owner == os.getpid():
            return
        others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
        if others:
            raise RuntimeError(f"a spare child forks: stop these threads first: {[t.name for t in others]}")
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (the child's coverage is the parent's assertions)
            parent_sock.close()
            spare_main(child_sock.detach(), self.engine, self.policy, self.seccomp_program)
        child_sock.close()
        spare = _Spare(pid, parent_sock, os.getpid())
        spare.finalizer = weakref.finalize(self, _discard, spare)
        self._spare = spare

    def close(self) -> None:
        """Discard the spare, if any (killed and reaped)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            _discard(spare)

    @property
    def pid(self) -> int | None:
        """The spare's pid, or None when none is held (for tests)."""
        return None if self._spare is None else self._spare.pid

    def _made_for(self, job: ChildJob) -> bool:
        base = replace(self.policy, rlimits=replace(self.policy.rlimits, cpu_seconds=0))
        wanted = replace(job.policy, rlimits=replace(job.policy.rlimits, cpu_seconds=0))
        return job.engine is self.engine and job.seccomp_program == self.seccomp_program and wanted == base


def send_job(
    channel: Channel, job: ChildJob, deadline: float | None = None, *, module_held: bool = False
) -> None:
    """Send a job to a spare: limits and RLIMIT_CPU, then the serialized module, the payload, the context.

    Args:
        channel: The parent's end of the spare's channel.
        job: The job.
        deadline: ``time.monotonic()`` value by which the child must have taken it all (the job's deadline):
            a child that stops reading cannot hold the parent past it.
        module_held: The child already holds the module named ``job.module_key`` (a zygote's child, as the
            zygote answered): only the key is sent.

    Raises:
        ChannelClosed: The spare is gone, or did not read the job in time.
    """
    if deadline is None:
        _send_job(channel, job, module_held)
        return
    channel.sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        _send_job(channel, job, module_held)
    finally:
        channel.sock.settimeout(None)


def _send_job(channel: Channel, job: ChildJob, module_held: bool) -> None:
    held = module_held and job.module_key is not None
    module = b"" if held else job.module.serialize()
    channel.send_json(
        {
            "type": "job",
            "limits": asdict(job.limits),
            "cpu_seconds": job.policy.rlimits.cpu_seconds,
            "module_key": job.module_key if held else None,
            "module_size": len(module),
            "payload_size": len(job.payload),
            "context_size": len(job.context),
        }
    )
    channel.send_data(module)
    channel.send_data(job.payload)
    channel.send_data(job.context)


def _discard(spare: _Spare) -> int | None:
    """Close the channel; when the spare is this process's child, kill and reap it. Its exit status."""
    if spare.finalizer is not None:
        spare.finalizer.detach()
    spare.sock.close()
    if spare.owner != os.getpid():
        return None  # inherited through a fork of the process that made it: not our child
    for kill_call in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill_call(spare.pid, signal.SIGKILL)
    try:
        _, status = os.waitpid(spare.pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
