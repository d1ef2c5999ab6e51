"""Several mountd server processes on one listening socket, under a small supervisor.

Why: one mountd process answers small GETs with one core at most: cheroot and our middleware are Python,
and the interpreter lock lets one thread run Python at a time. A 4 KiB GET costs a few hundred µs of
Python, so one process tops out near a third of what ``rclone serve webdav`` (Go, every core) reaches on
two cores. N processes serve N times that much Python at once (``bench/bench_mountd.py``, row ``mountd
x2``), sharing nothing but the store and the broker's Redis.

How: the supervisor (the process the operator started) binds the listening socket once (``bind_listener``),
then forks ``count`` children, each of which builds its own application and serves the inherited socket
(``mountd.server.listen`` with ``sock``): the kernel queues connections on the one socket and whichever
process is idle accepts the next one, so a busy or restarting process never has connections assigned to it
and the port never stops listening while a child is replaced. The supervisor itself runs no server thread:
it waits for signals and for its children.

Invariants:
    * No orphans: a child asks the kernel for SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``) and
      exits at once if the supervisor is already gone; the children stay in the supervisor's process
      group, so Ctrl-C or a signal to the group reaches them too.
    * SIGTERM or SIGINT to the supervisor stops every child gracefully (each finishes its running requests
      within ``mountd.server.SHUTDOWN_TIMEOUT``), then kills what is left after ``STOP_TIMEOUT`` and reaps
      every child before ``run`` returns. Only the supervisor's own children are reaped (by pid): other
      children of the process (local refresh workers, the embedded broker) are left to their owners.
    * Start-up is all or nothing: ``run`` returns control (``on_ready``) only when every child listens; a
      child that exits before it is ready stops them all and raises ``ProcessesFailed`` (a bad store or
      users file fails the command, not a restart loop).
    * A child that dies later is replaced in the same slot; one that keeps dying young is restarted after
      a doubling delay (at most ``MAX_RESTART_DELAY``), so a crash loop costs little.
    * Children are forked from the supervisor's main thread, which holds no lock of ours at that moment;
      a child runs only its serving function and leaves with ``os._exit`` (never the supervisor's
      ``finally`` blocks or ``atexit`` handlers, which own the broker and the workers).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from sync_format.errors import SyncError

log = logging.getLogger(__name__)

#: Seconds every child gets to listen after it was forked, at start-up.
START_TIMEOUT = 60.0
#: Seconds the children get to stop after SIGTERM before they are killed (the server's own shutdown
#: waits up to 5 s for running requests).
STOP_TIMEOUT = 15.0
#: A child that lived less than this many seconds counts as dying young (its restart is delayed).
YOUNG_EXIT = 10.0
#: First and largest delay before restarting a child that keeps dying young, in seconds.
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: Seconds between two looks at the children while waiting for them to stop.
STOP_POLL = 0.05
#: ``prctl`` option: the signal the kernel sends a process when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Exit status of a child whose serving function raised.
CHILD_FAILED = 1


class ProcessesFailed(SyncError):
    """The server processes could not be started (one exited before it listened)."""

    code = "mountd_processes_failed"


#: What a child runs: serve on the inherited socket, call ``ready()`` once it listens, return on SIGTERM.
ChildMain = Callable[[int, Callable[[], None]], None]


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 picks a free port), for the children to inherit.

    Bound as cheroot binds (the first address ``getaddrinfo`` gives, ``SO_REUSEADDR``, ``TCP_NODELAY``, IPv6
    sockets IPv6-only when the host is an IPv6 literal), and non-blocking: when several processes wait on
    it, the ones that lose the race for a connection get ``EAGAIN`` (which cheroot ignores) instead of
    blocking their connection loop.

    Args:
        host: The address to bind.
        port: The port; 0 picks a free one.
        backlog: Connections the kernel queues before one is accepted.

    Returns:
        The socket, listening.

    Raises:
        OSError: The address cannot be bound.
    """
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted connections inherit it: without it, a response written in two sends waits for the
            # client's delayed ACK (~40 ms per keep-alive request). cheroot sets it on sockets it binds.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setblocking(False)
        return sock
    raise error if error is not None else OSError(f"cannot bind {host}:{port}")


@dataclass(frozen=True)
class ProcessGroupHandle:
    """The running processes, as ``on_ready`` sees them.

    Attributes:
        host: The address bound.
        port: The port bound.
        pids: The children's process ids by slot, at the time ``on_ready`` is called.
    """

    host: str
    port: int
    pids: tuple[int, ...]

    @property
    def mount_url(self) -> str:
        """``http://host:port`` (IPv6 literals in brackets), as ``mountd.server.ServerHandle.mount_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    ready_fd: int = -1
    young_exits: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Start ``count`` children running ``child_main`` on ``sock``; keep them running until a signal.

    Args:
        count: Children to run (slots ``0 .. count-1``).
        sock: The listening socket they serve (``bind_listener``); closed by ``run`` on the way out.
        child_main: What a child runs (``ChildMain``).
    """

    count: int
    sock: socket.socket
    child_main: ChildMain
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: bool = False
    _wake: tuple[int, int] = (-1, -1)

    def run(self, on_ready: Callable[[ProcessGroupHandle], object] | None = None) -> None:
        """Serve until SIGTERM or SIGINT; then stop every child. Call from the main thread.

        Args:
            on_ready: Called once every child listens.

        Raises:
            ProcessesFailed: A child exited (or none listened in time) during start-up; all were stopped.
        """
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_wakeup = signal.set_wakeup_fd(self._wake[1], warn_on_full_buffer=False)
        try:
            self._slots = [_Slot(index) for index in range(self.count)]
            for slot in self._slots:
                self._fork(slot)
            self._await_ready()
            if on_ready is not None and not self._stopping:
                host, port = self.sock.getsockname()[:2]
                on_ready(ProcessGroupHandle(str(host), int(port), tuple(s.pid for s in self._slots)))
            while not self._stopping:
                self._wait(self._next_timeout())
                self._reap_and_restart()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
            self.sock.close()

    def pids(self) -> tuple[int, ...]:
        """The live children's process ids, by slot (0 for a slot waiting to be restarted)."""
        return tuple(slot.pid for slot in self._slots)

    # --- the supervisor's side ------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
            log.info("mountd processes stopping signal=%s", signal.Signals(signum).name)
            self._stopping = True

    def _wait(self, timeout: float | None, extra: tuple[int, ...] = ()) -> list[int]:
        try:
            readable, _, _ = select.select([self._wake[0], *extra], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select; kept for clarity
            return []
        if self._wake[0] in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake[0], 512):
                    pass
        return [fd for fd in readable if fd != self._wake[0]]

    def _await_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = {slot.ready_fd: slot for slot in self._slots}
        while waiting and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProcessesFailed(f"mountd processes did not listen within {START_TIMEOUT:.0f} s")
            for fd in self._wait(remaining, tuple(waiting)):
                slot = waiting.pop(fd)
                got = os.read(fd, 1)
                os.close(fd)
                slot.ready_fd = -1
                if not got:  # closed without a byte: the child exited
                    status = self._reap(slot, block=True)
                    raise ProcessesFailed(
                        f"mountd process {slot.index} exited during start-up (status {status})"
                    )
            for slot in self._slots:
                if slot.ready_fd in waiting and self._reap(slot, block=False) is not None:
                    raise ProcessesFailed(f"mountd process {slot.index} exited during start-up")
        log.info("mountd processes listening count=%d pids=%s", self.count, list(self.pids()))

    def _next_timeout(self) -> float | None:
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _reap(self, slot: _Slot, *, block: bool) -> int | None:
        """The slot's exit status once its child has exited (then the slot has no pid); else None."""
        if slot.pid <= 0:
            return None
        try:
            pid, status = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = slot.pid, 0
        if pid == 0:
            return None
        slot.pid = 0
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1
        return os.waitstatus_to_exitcode(status)

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.ready_fd >= 0:  # a restarted child's readiness: only its pipe needs closing
                with contextlib.suppress(BlockingIOError):
                    if os.read(slot.ready_fd, 1):
                        os.close(slot.ready_fd)
                        slot.ready_fd = -1
            status = self._reap(slot, block=False)
            if status is not None and not self._stopping:
                young = now - slot.started < YOUNG_EXIT
                slot.young_exits = slot.young_exits + 1 if young else 0
                delay = (
                    min(FIRST_RESTART_DELAY * 2 ** (slot.young_exits - 1), MAX_RESTART_DELAY)
                    if young
                    else 0.0
                )
                log.warning(
                    "mountd process exited slot=%d status=%s; restarting in %.1f s", slot.index, status, delay
                )
                slot.restart_at = now + delay
            due = slot.restart_at is not None and slot.restart_at <= now
            if slot.pid == 0 and due and not self._stopping:
                slot.restart_at = None
                self._fork(slot)
                log.info("mountd process restarted slot=%d pid=%d", slot.index, slot.pid)

    def _stop_all(self) -> None:
        live = [slot for slot in self._slots if slot.pid > 0]
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(self._reap(slot, block=False) is None for slot in live if slot.pid > 0):
            if time.monotonic() > deadline:
                for slot in live:
                    if slot.pid > 0:
                        log.warning("mountd process did not stop; killing it slot=%d", slot.index)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                        self._reap(slot, block=True)
                break
            time.sleep(STOP_POLL)
        for slot in self._slots:
            if slot.ready_fd >= 0:
                os.close(slot.ready_fd)
                slot.ready_fd = -1

    def _fork(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        supervisor = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            self._child(slot.index, write_fd, supervisor)
        os.close(write_fd)
        slot.pid, slot.started, slot.ready_fd = pid, time.monotonic(), read_fd

    # --- the child's side ------------------------------------------------------------------------------

    def _child(self, index: int, ready_fd: int, supervisor: int) -> None:
        status = CHILD_FAILED
        try:
            # The supervisor's handlers and wakeup pipe are not ours: default dispositions until the server
            # installs its own graceful ones.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for fd in (*self._wake, *(s.ready_fd for s in self._slots if s.ready_fd >= 0)):
                with contextlib.suppress(OSError):
                    os.close(fd)
            _die_with_parent(supervisor)

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_fd, b"r")
                    os.close(ready_fd)

            self.child_main(index, ready)
            status = 0
        except BaseException:
            log.exception("mountd process failed slot=%d", index)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)


def _die_with_parent(supervisor: int) -> None:
    """Ask for SIGTERM when the supervisor dies; exit now if it already has (the race before ``prctl``)."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl, no library search
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("PR_SET_PDEATHSIG failed errno=%d", ctypes.get_errno())
    if os.getppid() != supervisor:
        os._exit(0)
