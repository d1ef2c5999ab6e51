"""A first listing's archive opens shared with a forked helper process, so that both cores parse archives.

A never-seen folder of 10,000 archives costs about 45 µs of Python per archive (``open_archive`` and
``ArchiveFacts.from_snapshot``), and Python threads share one interpreter lock: a second thread would not
make it faster. ``share_with_helper`` forks the calling process once: the caller takes the work from the
front, the helper from the back, and they stop where they meet. The helper sends what it computed back
through a pipe, as plain values (``marshal``), and exits.

Invariants:
    * Nothing is lost and nothing depends on the helper: the caller learns which items the helper finished
      from its results, and every item the helper did not send (it failed on it, crashed, hung or could not
      be forked) is the caller's to do (``HelperShare.missing``).
    * A helper never outlives its call: when the caller has done every item itself (the helper was slow or
      stuck) the helper is killed at once; when the caller waits for its results, it waits ``HELPER_WAIT``
      seconds at most, then kills it and does the rest. It is always reaped (by a short-lived thread when
      its exit is not finished by then), so no zombie is left.
    * Both sides may do the same item once where they meet (each checks the other's progress before an
      item; neither waits for the other); an item is the same pure function of the file version whichever
      side does it.
    * One helper at a time per process (the machines this serves have few cores, and a second concurrent
      fork would inherit the first helper's pipe); a call that finds one running does all its work itself.
    * The helper runs the item function only: no logging, no database, no locks of the server, the
      collector off, the server's signal handlers and wakeup descriptor reset, killed with its parent
      (``PR_SET_PDEATHSIG``), and it leaves by ``os._exit``. An item that raises is simply not sent.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Seconds the caller waits for the helper's results once its own share is done (the helper stops within
#: one item of seeing that; a helper that does not answer by then is killed and its share done here).
HELPER_WAIT = 5.0
#: Bytes of the caller's progress counter at the start of the shared board.
_FRONT = struct.Struct("<q")
#: ``prctl`` option that sends a signal to a process when its parent thread exits.
_PR_SET_PDEATHSIG = 1
#: Exit status of a helper (nobody reads it: results come through the pipe).
_HELPER_EXIT = 0

_ONE_AT_A_TIME = threading.Lock()


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
        indexes: The items the helper sent (all at or after ``done``), in the order of ``columns``.
        columns: The helper's values by column: ``columns[k][m]`` is field ``k`` of item ``indexes[m]``.
        forked: Whether a helper ran at all.
    """

    done: int
    indexes: list[int] = field(default_factory=list)
    columns: list[list[Any]] = field(default_factory=list)
    forked: bool = False

    def rows(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """(item, its values) for each item the helper sent."""
        if not self.columns:
            return iter(())
        return zip(self.indexes, zip(*self.columns, strict=True), strict=True)

    def missing(self, count: int) -> list[int]:
        """The items of ``count`` that neither side finished: the caller does these itself."""
        sent = set(self.indexes)
        return [i for i in range(self.done, count) if i not in sent]


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share_with_helper(
    count: int,
    own: Callable[[int], object],
    theirs: Callable[[int], Any],
    *,
    wait: float = HELPER_WAIT,
) -> HelperShare:
    """Run ``own(i)`` here from the front while a forked helper computes ``theirs(i)`` from the back.

    Args:
        count: Number of items.
        own: Does item ``i`` in this process (its result is the caller's business); what it raises ends the
            call (the helper is killed) and is raised to the caller.
        theirs: Computes item ``i`` in the helper: a tuple of values ``marshal`` writes (numbers, strings,
            None), of the same length for every item; or raises, and the item is not sent.
        wait: Seconds to wait for the helper's results once this side stopped.

    Returns:
        What this side did and what the helper sent; ``missing`` are the caller's to do.
    """
    if count == 0:
        return HelperShare(0)
    if not hasattr(os, "fork") or usable_cpus() < 2 or not _ONE_AT_A_TIME.acquire(blocking=False):
        return _alone(count, own)
    try:
        return _shared(count, own, theirs, wait)
    finally:
        _ONE_AT_A_TIME.release()


def _alone(count: int, own: Callable[[int], object], start: int = 0) -> HelperShare:
    for i in range(start, count):
        own(i)
    return HelperShare(count)


def _shared(
    count: int, own: Callable[[int], object], theirs: Callable[[int], Any], wait: float
) -> HelperShare:
    # The board: the caller's progress (items before it are done here), then one byte per item that the
    # helper sets once it has finished that item.
    board = mmap.mmap(-1, _FRONT.size + count)
    try:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            return _alone(count, own)
        if pid == 0:  # the helper: never returns
            os.close(read_fd)
            _helper(board, write_fd, count, theirs, parent)
        os.close(write_fd)
        try:
            i = 0
            flags = _FRONT.size
            try:
                while i < count and not board[flags + i]:
                    own(i)
                    i += 1
                    _FRONT.pack_into(board, 0, i)
            except BaseException:
                _kill(pid)  # the caller gave up: so does the helper
                raise
            indexes: list[int] = []
            columns: list[list[Any]] = []
            if i == count:  # all done here (a slow or stuck helper): nothing to wait for
                _kill(pid)
            else:
                indexes, columns = _collect(read_fd, pid, wait)
        finally:
            os.close(read_fd)
            _reap(pid)
    finally:
        board.close()
    if indexes and min(indexes) < i:  # done here as well (where both met): the caller's own result stands
        keep = [m for m, j in enumerate(indexes) if j >= i]
        indexes = [indexes[m] for m in keep]
        columns = [[column[m] for m in keep] for column in columns]
    return HelperShare(i, indexes, columns, forked=True)


def _collect(read_fd: int, pid: int, wait: float) -> tuple[list[int], list[list[Any]]]:
    # The helper's items and columns, read to end of file; none when it sent nothing usable in time (then
    # killed). Columns, not a tuple per item: a first listing's 5,000 tuples of tuples were enough new
    # objects to set off a full collection of the heap.
    nothing: tuple[list[int], list[list[Any]]] = ([], [])
    deadline = time.monotonic() + wait
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            _kill(pid)
            return nothing
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        sent = marshal.loads(b"".join(chunks))  # noqa: S302 - written by our own fork, and checked below
    except (EOFError, ValueError, TypeError):
        return nothing  # the helper died while writing
    if type(sent) is not tuple or len(sent) != 2:
        return nothing
    indexes, columns = sent
    if type(indexes) is not list or type(columns) is not list or not all(type(j) is int for j in indexes):
        return nothing
    if not all(type(column) is list and len(column) == len(indexes) for column in columns):
        return nothing
    if len(set(indexes)) != len(indexes) or not columns:
        return nothing
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
        threading.Thread(target=_wait_for, args=(pid,), name="mountd-helper-reaper", daemon=True).start()


def _wait_for(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _helper(board: mmap.mmap, write_fd: int, count: int, theirs: Callable[[int], Any], parent: int) -> None:
    try:
        gc.disable()  # nothing of the server's is finalized here
        _detach(parent)
        flags = _FRONT.size
        indexes: list[int] = []
        rows: list[tuple[Any, ...]] = []
        j = count - 1
        while j >= 0 and j >= _FRONT.unpack_from(board, 0)[0]:
            with contextlib.suppress(Exception):  # the caller does this item again, and logs why
                rows.append(theirs(j))
                indexes.append(j)
            board[flags + j] = 1
            j -= 1
        data = memoryview(marshal.dumps((indexes, [list(column) for column in zip(*rows, strict=True)])))
        while data:
            data = data[os.write(write_fd, data) :]
        os.close(write_fd)  # the caller's end of file now, not after this process's memory is torn down
    finally:
        os._exit(_HELPER_EXIT)


def _detach(parent: int) -> None:
    # The server's signal handling is not the helper's: default dispositions (a SIGTERM to the process group
    # ends it), no wakeup descriptor, and death with the thread that forked it.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(_HELPER_EXIT)
