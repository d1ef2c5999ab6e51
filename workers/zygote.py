"""The sandbox zygote: a small, fresh process that forks the confined children, so the worker does not.

Forking the worker costs in proportion to its size (Celery, kombu, redis-py, the Celery app, every
connection's buffers), and a child forked from it carries all of that memory, secrets included. With
``Settings.sandbox_zygote`` the runtime starts ``python -m workers.zygote_main`` once (a new interpreter, not
a fork: it holds only what a child needs, built from its setup; no secret, no inherited descriptor but its
control socket, an environment reduced to ``PATH``/``PYTHONPATH``/locale; its policy and seccomp filter arrive
as the first message on that socket, not on its command line, which every local user can read). The zygote
builds the engine, runs the warm-up guest, and keeps one spare child (``workers.child.spare_main`` with
``handed``) through its early layers; before forking any, it takes the warm-up guest through a child's whole
job path (``child.rehearse``), so its children inherit warm code. For each job the worker creates the
channel's socketpair and sends the child's end to the zygote (``SCM_RIGHTS``); the zygote hands it to its
spare, answers with the spare's pid and forks the next spare once the worker had it reaped (off the job's
path). The job itself (limits, RLIMIT_CPU, module bytes, payload, context) travels on the channel exactly as
for ``workers.spare``, and the child applies its late layers before touching the guest.

What a job pays for once it arrives is kept small (a trivial guest's child spent about half of its time on
its first touches of copy-on-write pages and on deserialising its module): the zygote keeps the compiled
modules of the last jobs (``MODULES_KEPT``, loaded from the serialized bytes the worker hands over with a
reap request, after the answer), so a child forked afterwards holds them and a job of one of them sends only
its key (the spawn answer says whether the child holds it); and each spare, after its early layers and before
it takes a channel, runs the warm-up guest through the job path once (``spare_main``'s ``rehearsal``: our
own constant module, never an archive's), so the pages a job touches are already its own.

Invariants:
- The worker keeps the clock: it kills the child's process group at the deadline itself (the zygote reaps a
  child only when the worker asks, so the pid cannot be reused before), then asks the zygote to reap it
  (``wait4``) and gets the exit status and rusage back.
- Each child runs one job. The zygote dies with the worker (PDEATHSIG, checked against the expected parent);
  its children die with it. A zygote that dies or stops answering fails the job in flight clearly (the child
  is gone with it) and is restarted for the next job; a spawn that finds it dead restarts it once. No guest
  ever runs outside a child that applied every layer: strict mode still refuses an incomplete report.
- Control messages are JSON datagrams on a ``SOCK_SEQPACKET`` socketpair; only the worker can reach it.
- A child keeps no module but its own job's: it drops every module it inherited as soon as its job arrived
  (their code is unmapped with them), before its late layers and the guest. The zygote keeps only modules the
  worker loaded from its own cache (native code: never bytes from anyone else), at most ``MODULES_KEPT``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, replace
from typing import Any, NamedTuple, NoReturn

import wasmtime

from sync_format.errors import SandboxUnavailable
from workers.confine import Layer, Rlimits, SandboxMode, SandboxPolicy

log = logging.getLogger(__name__)

#: Seconds the zygote may take to start (a fresh interpreter importing wasmtime, building its engine).
START_TIMEOUT = 30.0
#: Seconds the zygote may take to answer one request.
ANSWER_TIMEOUT = 10.0
#: Largest control message, in bytes.
MAX_MESSAGE = 64 * 1024
#: Environment variables passed on to the zygote (everything else, secrets included, stays behind).
PASSED_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE")
#: Compiled modules the zygote keeps loaded for its next children (the most recently used ones).
MODULES_KEPT = 4
#: The key the warm-up module is rehearsed under (a cache key is two hex digests: never this).
WARM_UP_KEY = "warm-up"
#: Largest serialized module the zygote keeps, in bytes (a bigger one is sent to each child, as before).
MAX_KEPT_MODULE = 64 * 1024 * 1024


class ZygoteGone(Exception):
    """The zygote died, closed its socket or stopped answering."""


class Spawned(NamedTuple):
    """A child the zygote handed a job's channel to.

    Attributes:
        pid: The child's pid (its process group too, once it ran ``setsid``).
        module_held: The child holds the module the spawn request named: the job need not send its bytes.
    """

    pid: int
    module_held: bool


def policy_to_json(policy: SandboxPolicy) -> dict[str, Any]:
    """Encode a policy for the zygote's setup message.

    Args:
        policy: The policy.

    Returns:
        A JSON-ready dict.
    """
    return {
        "mode": policy.mode.value,
        "layers": [layer.value for layer in policy.layers],
        "rlimits": asdict(policy.rlimits),
        "read_only_paths": list(policy.read_only_paths),
    }


def policy_from_json(doc: dict[str, Any]) -> SandboxPolicy:
    """Decode ``policy_to_json``'s output.

    Args:
        doc: The dict.

    Returns:
        The policy.
    """
    return SandboxPolicy(
        mode=SandboxMode(doc["mode"]),
        layers=tuple(Layer(name) for name in doc["layers"]),
        rlimits=Rlimits(**doc["rlimits"]),
        read_only_paths=tuple(doc["read_only_paths"]),
    )


#: Every ``Zygote`` of this process, for ``zygote_pids``.
_ZYGOTES: weakref.WeakSet[Zygote] = weakref.WeakSet()


def zygote_pids() -> set[int]:
    """The pids of the zygotes this process runs now (for tests and diagnostics).

    Returns:
        The pids.
    """
    return {z.pid for z in list(_ZYGOTES) if z.pid is not None and z._owner == os.getpid()}


class Zygote:
    """The worker's side: starts the zygote on first use, asks it for children and to reap them."""

    def __init__(self, policy: SandboxPolicy, seccomp_program: bytes | None) -> None:
        """Prepare (the process starts on the first ``spawn``).

        Args:
            policy: The runtime's policy (a job may only change its RLIMIT_CPU).
            seccomp_program: The runtime's BPF program, or None (the children then report seccomp missing).
        """
        self.policy = policy
        self.seccomp_program = seccomp_program
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = os.getpid()
        #: Stops the zygote when this object is collected or the interpreter exits.
        self._finalizer: weakref.finalize | None = None  # type: ignore[type-arg]
        _ZYGOTES.add(self)

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs (for tests)."""
        return None if self._process is None else self._process.pid

    def serves(self, policy: SandboxPolicy, seccomp_program: bytes | None) -> bool:
        """Whether children of this zygote fit a job with this policy and program.

        Args:
            policy: The job's policy.
            seccomp_program: The job's program.

        Returns:
            True when only RLIMIT_CPU differs from the zygote's policy.
        """
        return (
            os.getpid() == self._owner
            and seccomp_program == self.seccomp_program
            and policy.with_cpu_seconds(1) == self.policy.with_cpu_seconds(1)
        )

    def spawn(self, child_sock: socket.socket, module_key: str | None = None) -> Spawned:
        """Have the zygote hand ``child_sock`` to a fresh child; restart a dead zygote once.

        Args:
            child_sock: The child's end of the job's channel (the caller closes its copy afterwards).
            module_key: The job's module (``ChildJob.module_key``), to learn whether the child holds it.

        Returns:
            The child's pid and whether it holds the module.

        Raises:
            SandboxUnavailable: The zygote cannot be started or keeps failing.
        """
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._start()
                answer = self._ask({"type": "spawn", "module": module_key}, fds=[child_sock.fileno()])
                return Spawned(int(answer["pid"]), module_key is not None and answer.get("module") is True)
            except ZygoteGone as exc:
                log.warning("sandbox zygote failed, restarting attempt=%d error=%s", attempt, exc)
                self._drop()
        raise SandboxUnavailable("zygote", "the sandbox zygote failed twice in a row")

    def reap(
        self, pid: int, *, kill: bool, keep: tuple[str, bytes] | None = None
    ) -> tuple[int, float, float, int] | None:
        """Kill the child's process group if asked, then have the zygote reap it.

        Args:
            pid: The child.
            kill: SIGKILL its group and itself first (the worker does it: the pid is not reaped yet).
            keep: ``(module key, serialized module)`` for the zygote to load after answering, so that the
                children it forks next hold that module (sent in a memfd; skipped when it is too big).

        Returns:
            ``(exit status, user s, system s, max RSS KiB)``, or None when the zygote is gone (it is then
            dropped; its children died with it).
        """
        if kill:
            for kill_call in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill_call(pid, signal.SIGKILL)
        message: dict[str, Any] = {"type": "reap", "pid": pid}
        fds: list[int] = []
        if keep is not None and len(keep[1]) <= MAX_KEPT_MODULE:
            try:
                fds.append(_memfd_with(keep[1]))
                message["keep"] = keep[0]
            except OSError as exc:  # the module is then sent to each child, as without a zygote
                log.warning("sandbox zygote not given the module error=%s", exc)
        try:
            answer = self._ask(message, fds=fds)
        except ZygoteGone as exc:
            log.warning("sandbox zygote lost while a child ran pid=%d error=%s", pid, exc)
            self._drop()
            return None
        finally:
            for fd in fds:
                os.close(fd)
        return (
            int(answer["status"]),
            float(answer["user"]),
            float(answer["system"]),
            int(answer["max_rss_kib"]),
        )

    def close(self) -> None:
        """Stop the zygote (its children die with it)."""
        self._drop()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        program = "" if self.seccomp_program is None else self.seccomp_program.hex()
        # The policy and the filter go on the control socket, not the command line: ``/proc/PID/cmdline``
        # is readable by every local user.
        setup = {"type": "setup", "policy": policy_to_json(self.policy), "seccomp": program}
        argv = [sys.executable, "-m", "workers.zygote_main", str(theirs.fileno()), str(os.getpid())]
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        try:
            self._process = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
                argv,
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise ZygoteGone(f"cannot start: {exc}") from exc
        finally:
            theirs.close()
        self._sock = ours
        self._finalizer = weakref.finalize(self, _stop, ours, self._process, self._owner)
        try:
            ours.send(json.dumps(setup).encode())
        except OSError as exc:
            raise ZygoteGone(f"cannot send its setup: {exc}") from exc
        answer = self._receive(time.monotonic() + START_TIMEOUT)
        if answer.get("type") != "ready":
            raise ZygoteGone(f"unexpected first message {answer!r}")

    def _ask(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        if self._sock is None:
            raise ZygoteGone("not running")
        try:
            socket.send_fds(self._sock, [json.dumps(message).encode()], fds or [])
        except OSError as exc:
            raise ZygoteGone(f"send failed: {exc}") from exc
        answer = self._receive(time.monotonic() + ANSWER_TIMEOUT)
        if answer.get("type") == "error":
            raise ZygoteGone(f"refused: {answer.get('message')}")
        return answer

    def _receive(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        ready, _, _ = select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise ZygoteGone("no answer in time")
        try:
            data = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise ZygoteGone(f"receive failed: {exc}") from exc
        if not data:
            raise ZygoteGone("it closed its socket (died)")
        try:
            answer = json.loads(data)
        except ValueError as exc:
            raise ZygoteGone(f"bad answer: {exc}") from exc
        if not isinstance(answer, dict):
            raise ZygoteGone("bad answer")
        return answer

    def _drop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        elif self._sock is not None:
            self._sock.close()
        self._sock, self._process, self._finalizer = None, None, None


#: Seals of a module handed to the zygote (``_memfd_with``): nobody, the worker included, can change its bytes
#: once sent; the zygote deserialises (native code, unconfined) only a memfd that carries all of them.
MODULE_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _memfd_with(data: bytes) -> int:
    """A sealed anonymous file (memfd) holding ``data``, positioned at 0 (the caller closes it)."""
    fd = os.memfd_create("sync-module", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, MODULE_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load_kept(engine: wasmtime.Engine, kept: dict[str, wasmtime.Module], key: object, fd: int) -> None:
    """In the zygote: load the serialized module in ``fd`` under ``key``, keeping the ``MODULES_KEPT`` most
    recently used; a module that does not load is not kept (its children are sent its bytes)."""
    try:
        size = os.fstat(fd).st_size
        if not isinstance(key, str) or key in kept or size > MAX_KEPT_MODULE:
            return
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & MODULE_SEALS != MODULE_SEALS:
            log.warning("zygote: a module handed over without its seals was not kept")
            return
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return
            chunks.append(chunk)
            left -= len(chunk)
        kept[key] = wasmtime.Module.deserialize(engine, b"".join(chunks))
    except (OSError, wasmtime.WasmtimeError):
        return
    finally:
        os.close(fd)
    while len(kept) > MODULES_KEPT:
        del kept[next(iter(kept))]


def _stop(sock: socket.socket, process: subprocess.Popen[bytes], owner: int) -> None:
    """Close the control socket; kill and reap the zygote when this process started it."""
    sock.close()
    if os.getpid() == owner:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


# -- the zygote process ------------------------------------------------------------------------------------


def main(argv: list[str]) -> NoReturn:  # pragma: no cover  (a separate process; tests drive it for real)
    """Run the zygote: ``CONTROL_FD PARENT_PID``; its first control message is its setup (the policy and the
    seccomp filter).

    Args:
        argv: The arguments after the module name.
    """
    from workers.child import rehearse, spare_main  # noqa: PLC0415  (imports are the zygote's start-up)
    from workers.confine import set_pdeathsig  # noqa: PLC0415
    from workers.engine import make_engine  # noqa: PLC0415
    from workers.runtime import REHEARSALS, warm_up_paths  # noqa: PLC0415

    control_fd, parent = argv
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != int(parent):
        os._exit(1)  # the worker died before PDEATHSIG was set
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the worker, which stops us
    control = socket.socket(fileno=int(control_fd))
    setup = json.loads(control.recv(MAX_MESSAGE) or b"{}")
    if setup.get("type") != "setup":
        os._exit(1)  # the worker closed the socket, or spoke out of turn
    policy = policy_from_json(setup["policy"])
    program = bytes.fromhex(setup["seccomp"]) if setup["seccomp"] else None
    engine = make_engine()
    # The warm-up job once more by key, the way a child holding its job's module receives it: that path is
    # warm here too, and each spare takes the job through it before its own (``spare_main``'s ``rehearsal``).
    rehearsal = replace(warm_up_paths(engine, policy, program), module_key=WARM_UP_KEY)
    for _ in range(REHEARSALS):
        rehearse(engine, policy, program, rehearsal, by_key=True)

    #: Modules the worker asked us to keep, least recently used first; each spare inherits a copy.
    kept: dict[str, wasmtime.Module] = {}

    def fork_spare() -> tuple[int, socket.socket, frozenset[str]]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            control.close()
            spare_main(theirs.detach(), engine, policy, program, handed=True, held=kept, rehearsal=rehearsal)
        theirs.close()
        return pid, ours, frozenset(kept)

    def answer(message: dict[str, Any]) -> None:
        control.send(json.dumps(message).encode())

    children: set[int] = set()
    answer({"type": "ready", "pid": os.getpid()})
    spare: tuple[int, socket.socket, frozenset[str]] | None = fork_spare()
    while True:
        data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 1)
        if not data:
            os._exit(0)  # the worker closed the socket: our children die with us
        message = json.loads(data)
        if message.get("type") == "spawn" and len(fds) == 1:
            for _ in (1, 2):
                pid, spare_sock, held = spare or fork_spare()
                try:
                    socket.send_fds(spare_sock, [b"c"], fds)
                except OSError:
                    spare_sock.close()
                    os.waitpid(pid, 0)  # it died waiting: reap it, fork another
                    spare = None
                    continue
                spare_sock.close()
                spare = None
                children.add(pid)
                module = message.get("module")
                if module in kept:
                    kept[module] = kept.pop(module)  # most recently used
                answer({"type": "spawned", "pid": pid, "module": module in held})
                break
            else:
                answer({"type": "error", "message": "no child could be forked"})
            os.close(fds[0])
        elif message.get("type") == "reap" and message.get("pid") in children and len(fds) <= 1:
            pid = int(message["pid"])
            children.discard(pid)
            _, status, usage = os.wait4(pid, 0)
            answer(
                {
                    "type": "reaped",
                    "status": os.waitstatus_to_exitcode(status),
                    "user": usage.ru_utime,
                    "system": usage.ru_stime,
                    "max_rss_kib": usage.ru_maxrss,
                }
            )
            if fds:  # before the next spare is forked, so that it holds the module
                _load_kept(engine, kept, message.get("keep"), fds[0])
            if spare is None:
                spare = fork_spare()  # while the worker commits and reports: off the next job's path
        else:
            for fd in fds:
                os.close(fd)
            answer({"type": "error", "message": f"bad request {message.get('type')!r}"})
