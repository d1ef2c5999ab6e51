"""A first listing's archive opens shared with a forked helper process, so that both cores parse archives.

A never-seen folder of 10,000 archives costs about 45 µs of Python per archive (``open_archive`` and
``ArchiveFacts.from_snapshot``), and Python threads share one interpreter lock: a second thread would not
make it faster. ``share_with_helper`` forks the calling process once: the caller takes the work from the
front, the helper from the back, and they stop where they meet. The helper sends what it computed through a
pipe in batches, as plain values (``marshal``), and the caller takes each batch in between its own items, so
that receiving them is done while the helper still works, not after it.

Invariants:
    * Nothing is lost and nothing depends on the helper: the caller learns which items the helper finished
      from its results, and every item the helper did not send (it failed on it, crashed, hung or could not
      be forked) is the caller's to do (``HelperShare.missing``).
    * A helper never outlives its call: when the caller has done every item itself (the helper was slow or
      stuck) the helper is killed at once, and so it is when every item it owes has arrived; otherwise the
      caller waits ``HELPER_WAIT`` seconds at most for the batch the helper was filling, then kills it and
      does the rest. It is always reaped (by a short-lived thread when its exit is not finished by then),
      so no zombie is left.
    * Both sides may do the same item once where they meet (each checks the other's progress before an
      item; neither waits for the other); an item is the same pure function of the file version whichever
      side does it.
    * One helper at a time per process (the machines this serves have few cores, and a second concurrent
      fork would inherit the first helper's pipe); a call that finds one running does all its work itself.
    * The helper runs the item function only: no logging, no database, no locks of the server, the
      collector off, every inherited descriptor but its pipe closed, the server's signals blocked over the
      fork and their handlers and wakeup descriptor reset before they are unblocked, killed with its parent
      (``PR_SET_PDEATHSIG``), and it leaves by ``os._exit``. An item that raises is simply not sent. A lock
      another thread held at the fork (a first import of a module) can stall it: the caller then does its
      share and kills it (``HELPER_WAIT`` at most).
    * A failure of the sharing itself (no descriptor, memory or process to be had, an unreadable pipe)
      never fails the call: what was not received is the caller's to do.
    * It runs only where ``os.fork`` exists and the process may use at least two CPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import marshal
import mmap
import os
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mountd.processes import PR_SET_PDEATHSIG

#: Seconds the caller waits for the helper's last results once its own share is done. A healthy helper sends
#: them within one item of seeing that; one that does not by then is killed and what it did not send (at
#: most the batch it was filling: ``_collect``) is done here, from the page cache its reads filled.
HELPER_WAIT = 0.5
#: Items the helper sends at once.
BATCH = 64
#: The shared board: the caller's progress (items before it are done there), then the bytes the helper has
#: written to the pipe so far, then one byte per item, set by the helper once it has finished that item.
_FRONT = struct.Struct("<q")
_SENT = struct.Struct("<q")
_SENT_AT = _FRONT.size
_FLAGS_AT = _SENT_AT + _SENT.size
#: Length prefix of each batch on the pipe.
_LENGTH = struct.Struct("<I")
#: Largest batch accepted (64 items of a few hundred bytes are far below it).
_MAX_FRAME = 16 << 20
#: Exit status of a helper (nobody reads it: results come through the pipe).
_HELPER_EXIT = 0

_ONE_AT_A_TIME = threading.Lock()
#: Signals whose dispositions the helper resets (blocked from the fork until then).
_HELPER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
#: Above every descriptor the helper may have inherited.
_MAX_FD = max(os.sysconf("SC_OPEN_MAX"), 1 << 20) if hasattr(os, "sysconf") else 1 << 20


def _load_prctl() -> Callable[..., int] | None:
    # Looked up here, not in the helper: a lookup there could wait on a loader lock another thread held
    # at the fork.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


@dataclass
class HelperShare:
    """What a shared run left to the caller.

    Attributes:
        done: Items ``0 .. done - 1`` were done by the caller's own function.
        received: The items whose helper values were given to ``receive`` (all at or after ``done``).
        forked: Whether a helper ran at all.
    """

    done: int
    received: set[int] = field(default_factory=set)
    forked: bool = False

    def missing(self, count: int) -> list[int]:
        """The items of ``count`` that neither side finished: the caller does these itself."""
        return [i for i in range(self.done, count) if i not in self.received]


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share_with_helper(
    count: int,
    own: Callable[[int], object],
    theirs: Callable[[int], tuple[Any, ...]],
    receive: Callable[[int, tuple[Any, ...]], object],
    *,
    wait: float = HELPER_WAIT,
    keep: tuple[int, ...] = (),
) -> HelperShare:
    """Run ``own(i)`` here from the front while a forked helper computes ``theirs(i)`` from the back.

    Args:
        count: Number of items.
        own: Does item ``i`` in this process (its result is the caller's business); what it raises ends the
            call (the helper is killed) and is raised to the caller.
        theirs: Computes item ``i`` in the helper: a tuple of values ``marshal`` writes (numbers, strings,
            None), of the same length for every item; or raises, and the item is not sent.
        receive: Takes the helper's values of item ``i``, here, in this thread: between two ``own`` calls as
            batches arrive, and at the end. Never called for an item ``own`` did, nor twice for one item.
        wait: Seconds to wait for the helper's last batches once this side stopped.
        keep: Descriptors the helper keeps (``theirs`` uses them); every other one is closed in it.

    Returns:
        What this side did and what it received; ``missing`` are the caller's to do.
    """
    if count == 0:
        return HelperShare(0)
    if not hasattr(os, "fork") or usable_cpus() < 2 or not _ONE_AT_A_TIME.acquire(blocking=False):
        return _alone(count, own)
    try:
        return _shared(count, own, theirs, receive, wait, keep)
    finally:
        _ONE_AT_A_TIME.release()


def _alone(count: int, own: Callable[[int], object]) -> HelperShare:
    for i in range(count):
        own(i)
    return HelperShare(count)


def _shared(
    count: int,
    own: Callable[[int], object],
    theirs: Callable[[int], tuple[Any, ...]],
    receive: Callable[[int, tuple[Any, ...]], object],
    wait: float,
    keep: tuple[int, ...],
) -> HelperShare:
    # Anything that fails in setting up (no descriptor left, no memory) means doing everything here.
    try:
        board = mmap.mmap(-1, _FLAGS_AT + count)
    except (OSError, ValueError):
        return _alone(count, own)
    try:
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return _alone(count, own)
        parent = os.getpid()
        # Blocked over the fork, so that no signal runs the server's handlers in the helper before it has
        # its own dispositions (``_detach``).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELPER_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:  # the helper: never returns
            _helper(board, write_fd, count, theirs, parent, keep)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        if pid < 0:
            os.close(read_fd)
            return _alone(count, own)
        share = HelperShare(0, forked=True)
        try:
            batches = _Batches(read_fd, count)
            i = 0
            try:
                while i < count and not board[_FLAGS_AT + i]:
                    own(i)
                    i += 1
                    _FRONT.pack_into(board, 0, i)
                    if _SENT.unpack_from(board, _SENT_AT)[0] > batches.read_bytes:
                        # The helper wrote more (or is writing): take what is there without waiting.
                        _deliver(batches.available(), i, share, receive)
            except BaseException:
                _kill(pid)  # the caller gave up: so does the helper
                raise
            share.done = i
            if i == count:  # all done here (a slow or stuck helper): nothing to wait for
                _kill(pid)
            else:
                try:
                    _collect(batches, pid, i, count, share, receive, time.monotonic() + wait)
                except BaseException:
                    _kill(pid)  # ``receive`` raised: nothing more is taken from the helper
                    raise
        finally:
            os.close(read_fd)
            _reap(pid)
    finally:
        board.close()
    return share


def _collect(
    batches: _Batches,
    pid: int,
    done: int,
    count: int,
    share: HelperShare,
    receive: Callable[[int, tuple[Any, ...]], object],
    deadline: float,
) -> None:
    # The caller stopped at ``done``, an item the helper had finished: it finished every item after it too
    # (it works from the back and marks an item once finished), so what it still owes is at most the batch it
    # was filling. Take its batches until it closes the pipe, or until every item from ``done`` on is here
    # (a helper stuck past its last useful batch is not waited for), or until ``deadline`` (then it is killed,
    # and what it did not send is done here: at most a batch of items it read into the page cache already).
    while True:
        _deliver(batches.take(), done, share, receive)
        if batches.ended:
            return
        if sum(1 for j in share.received if j >= done) == count - done or batches.broken:
            _kill(pid)  # nothing more is needed from it (or it sent something else than batches)
            return
        if not batches.wait(deadline):
            _kill(pid)  # stuck: what it did not send is done here
            return


def _deliver(
    batches: list[tuple[list[int], list[list[Any]]]],
    done: int,
    share: HelperShare,
    receive: Callable[[int, tuple[Any, ...]], object],
) -> None:
    # Hand the helper's items to ``receive``, except those done here already (where both sides met).
    received = share.received
    for indexes, columns in batches:
        for j, values in zip(indexes, zip(*columns, strict=True), strict=True):
            if j >= done and j not in received:
                received.add(j)
                receive(j, values)


class _Batches:
    """The helper's batches as they arrive on the pipe: a length, then ``marshal`` of (items, columns).

    Columns, not a tuple per item: a first listing's 5,000 tuples of tuples were enough new objects to set off
    a full collection of the heap. Anything that is not such a batch ends the reading (``broken``): what came
    before it stands, the rest is the caller's to do.
    """

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self.read_bytes = 0
        self.buffer = bytearray()
        os.set_blocking(fd, False)
        self.ready: list[tuple[list[int], list[list[Any]]]] = []
        self.ended = False
        self.broken = False

    def available(self) -> list[tuple[list[int], list[list[Any]]]]:
        """The complete batches that can be read without waiting."""
        self._read()
        return self.take()

    def take(self) -> list[tuple[list[int], list[list[Any]]]]:
        """The complete batches read so far and not taken yet."""
        ready, self.ready = self.ready, []
        return ready

    def wait(self, deadline: float) -> bool:
        """Wait until the pipe can be read, then read what is there; False if nothing came by ``deadline``."""
        # poll, not select(): a server with a thousand connections has descriptors above 1023.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return False
        self._read()
        return True

    def _read(self) -> None:
        while not self.ended and not self.broken:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                self.broken = True
                break
            self.read_bytes += len(chunk)
            if not chunk:
                self.ended = True
                break
            self.buffer += chunk
            self._split()

    def _split(self) -> None:
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, at)
            if size > _MAX_FRAME:
                self.broken = True
                return
            if len(buffer) - at - _LENGTH.size < size:
                break
            batch = self._batch(bytes(buffer[at + _LENGTH.size : at + _LENGTH.size + size]))
            if batch is None:
                self.broken = True
                return
            self.ready.append(batch)
            at += _LENGTH.size + size
        del buffer[:at]

    def _batch(self, data: bytes) -> tuple[list[int], list[list[Any]]] | None:
        try:
            sent = marshal.loads(data)  # noqa: S302 - written by our own fork, and checked here
        except (EOFError, ValueError, TypeError):
            return None
        if type(sent) is not tuple or len(sent) != 2:
            return None
        indexes, columns = sent
        if type(indexes) is not list or type(columns) is not list or not columns:
            return None
        if not all(type(j) is int and 0 <= j < self.count for j in indexes):
            return None
        if not all(type(column) is list and len(column) == len(indexes) for column in columns):
            return None
        return indexes, columns


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    # Reaped here when it has exited; otherwise (it is still being torn down, or was just killed) by a
    # short-lived thread, so that the listing does not wait for the kernel.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if done == 0:
        try:
            threading.Thread(target=_wait_for, args=(pid,), name="mountd-helper-reaper", daemon=True).start()
        except RuntimeError:  # no thread to be had: wait here (it was killed or is exiting)
            _wait_for(pid)


def _wait_for(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _helper(
    board: mmap.mmap,
    write_fd: int,
    count: int,
    theirs: Callable[[int], tuple[Any, ...]],
    parent: int,
    keep: tuple[int, ...],
) -> None:
    try:
        gc.disable()  # nothing of the server's is finalized here
        _detach(parent, (write_fd, *keep))
        indexes: list[int] = []
        rows: list[tuple[Any, ...]] = []
        sent = 0
        j = count - 1
        while j >= 0 and j >= _FRONT.unpack_from(board, 0)[0]:
            with contextlib.suppress(Exception):  # the caller does this item again, and logs why
                rows.append(theirs(j))
                indexes.append(j)
            board[_FLAGS_AT + j] = 1  # before its values are sent: the caller stops at it
            j -= 1
            if len(indexes) >= BATCH:
                sent = _send(write_fd, indexes, rows, board, sent)
                indexes, rows = [], []
        if indexes:
            _send(write_fd, indexes, rows, board, sent)
        os.close(write_fd)  # the caller's end of file now, not after this process's memory is torn down
    finally:
        os._exit(_HELPER_EXIT)


def _send(write_fd: int, indexes: list[int], rows: list[tuple[Any, ...]], board: mmap.mmap, sent: int) -> int:
    # One batch on the pipe; the bytes sent in all after it. The total is announced before the write: a
    # batch larger than the pipe's buffer (a state.json may hold a 60 KB timestamp) blocks this write until
    # the caller reads, and the caller reads while it has not read all that was announced.
    data = marshal.dumps((indexes, [list(column) for column in zip(*rows, strict=True)]))
    frame = memoryview(_LENGTH.pack(len(data)) + data)
    sent += len(frame)
    _SENT.pack_into(board, _SENT_AT, sent)
    while frame:
        frame = frame[os.write(write_fd, frame) :]
    return sent


def _detach(parent: int, kept: tuple[int, ...]) -> None:
    # The server's descriptors are not the helper's: all closed but the pipe and the caller's ``keep``
    # (sockets, the inotify descriptor, and files other threads hold ``flock`` locks on, which would stay
    # locked while it runs).
    # Nor its signal handling: default dispositions, then unblocked (a SIGTERM to the process group ends it),
    # no wakeup descriptor, and death with the thread that forked it.
    low = 3
    for fd in sorted(kept):
        os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, _MAX_FD)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in _HELPER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELPER_SIGNALS)
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(_HELPER_EXIT)
