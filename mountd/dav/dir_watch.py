"""Directory watches: a warm listing learns that nothing in a folder changed without an ``lstat`` per entry.

Why: a warm PROPFIND of a folder of 10,000 archives spent most of its time re-``lstat``-ing every entry to
compare its stat key with the remembered listing (measured: ~60 ms of CPU of ~100 ms per request). The
kernel already knows when a directory's entries change: an inotify watch on the folder reports every write,
attribute change, creation, deletion and rename made through it.

How: one inotify instance per process (``inotify_init1`` through ctypes, non-blocking, close-on-exec), one
watch per listed directory. ``begin(directory)`` reads every queued event (it never blocks) and returns the
directory's watch with its count of changes so far. A listing that scans after ``begin`` remembers its
result under that pair; a later listing may answer from it only while ``begin`` returns the same watch
with the same count (``ArchiveIndex.list_directory``).

Invariants:
    * A count is taken after the watch was in place and its queue read, and before the scan it stands for:
      a change during or after that scan queues an event, which the next ``begin`` reads, moving the count.
      (The kernel queues the event inside the system call that made the change, before it returns.)
    * What moves the count: any event on a visible name of the directory (a write, truncate, attribute or
      time change, the close of a file written to, a creation, a deletion, a rename in or out). Names that
      start with ``.`` are never listed (our temp files among them) and do not move it. The directory itself
      deleted, renamed, unmounted, or its watch dropped by the kernel ends the watch; a full queue
      (``IN_Q_OVERFLOW``) moves every count.
    * The path still names the watched directory: each ``begin`` compares ``stat(directory)``'s device and
      inode with the watch's (a folder renamed away and replaced, also by renaming a parent, is a new watch
      with a new count), and reads the queue after that ``stat``.
    * What inotify cannot see is not left to it. It reports a change to a file only through the directory
      entry the change was made through: not a write through a hard link in another directory, not a write
      through a shared writable mapping (``mmap``), not changes made by another machine. So only local
      file systems are watched (``LOCAL_FILESYSTEMS``, by ``statfs``; never NFS, SMB, FUSE, overlay, ...),
      and the index relies on the watch only for files that ``trusted`` accepts, ``lstat``-ing the others
      at every listing (and scanning whole at least every ``REVERIFY_NS``).
    * Bounded: at most ``max_watches`` directories (the least recently begun go). When a directory cannot
      be watched (a limit of the kernel, permissions, another file system, no inotify) ``begin`` returns
      None and the listing scans as before; each reason is logged once.
    * Thread-safe (one lock around the queue and the tables); a forked child starts its own instance.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import struct
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

#: Directories watched at most (the same bound as the listings the index remembers).
DEFAULT_MAX_WATCHES = 256
#: Nanoseconds after which a folder is scanned whole again even without an event: a safety net for the one
#: change a watch cannot see on a ``trusted`` file (a process that opened it for writing while it still
#: could, before a ``chmod``/``chown`` of the same inode, writing later through a shared mapping).
REVERIFY_NS = 10 * 1_000_000_000
#: Seconds before inotify is tried again after the process could not get an instance.
RETRY_SECONDS = 60.0
#: Bytes read from the inotify descriptor per call.
READ_BYTES = 64 * 1024
#: ``statfs`` types whose changes all pass through this kernel: ext2/3/4, XFS, Btrfs, tmpfs, F2FS.
LOCAL_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010})

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
#: What a watch asks for: every change of an entry, and the end of the directory itself.
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
#: Events after which the watch no longer stands for the path.
ENDS_WATCH = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_DOT = ord(".")
_EUID = os.geteuid()


def trusted(st: os.stat_result) -> bool:
    """Tell whether a watch on the file's directory sees every change of this file that matters.

    A change made through the directory's entry is always reported; one made through another hard link or
    a shared writable mapping is not. A file with one link, owned by us or root, and writable by neither
    group nor others (POSIX ACL entries show in the group bits) can be opened for writing only by us and
    root, who do neither (a commit writes a new file and renames it; uploads write through the entry).
    Any other file is ``lstat``-ed at every listing. What only we or root could still do unseen: link such a
    file after the scan (under a dot name, which a watch ignores, or in another folder), write through that
    link, remove it; the full scan every ``REVERIFY_NS`` bounds how long a listing shows the old facts, and a
    GET never serves them (it looks facts up by the identity of the file it opened).

    Args:
        st: The file's ``lstat`` from the scan.

    Returns:
        True when no ``lstat`` is needed while the watch reports nothing.
    """
    return st.st_nlink == 1 and st.st_uid in (_EUID, 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class Watch:
    """One watched directory: its inotify descriptor, the directory's identity and its change count.

    Attributes:
        wd: The watch descriptor.
        device: ``st_dev`` of the watched directory.
        inode: ``st_ino`` of the watched directory.
        changes: Events seen so far.
        alive: False once the watch ended (it never answers again).
        paths: The paths it was begun for (one, unless a directory is reachable by several).
    """

    __slots__ = ("alive", "changes", "device", "inode", "paths", "wd")

    def __init__(self, wd: int, device: int, inode: int) -> None:
        self.wd = wd
        self.device = device
        self.inode = inode
        self.changes = 0
        self.alive = True
        self.paths: set[str] = set()


class _Inotify:
    """The libc calls, or None when this C library has no inotify."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int
        self.statfs = libc.statfs
        self.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        self.statfs.restype = ctypes.c_int

    def fs_type(self, path: bytes) -> int | None:
        # ``f_type`` is the first field of ``struct statfs`` (a C long on Linux).
        buf = ctypes.create_string_buffer(256)
        if self.statfs(path, buf) != 0:
            return None
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _load() -> _Inotify | None:
    try:
        return _Inotify()
    except (OSError, AttributeError):
        return None


_LIBC = _load()


class DirectoryWatcher:
    """Watches of listed directories, and their change counts.

    Args:
        max_watches: Most directories watched at once.
        filesystems: ``statfs`` types that may be watched.
    """

    def __init__(
        self, max_watches: int = DEFAULT_MAX_WATCHES, *, filesystems: frozenset[int] = LOCAL_FILESYSTEMS
    ) -> None:
        if max_watches < 1:
            raise ValueError(f"max_watches must be >= 1, not {max_watches}")
        self._max = max_watches
        self._filesystems = filesystems
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = os.getpid()
        self._failed_at: float | None = None
        self._by_path: OrderedDict[str, Watch] = OrderedDict()
        self._by_wd: dict[int, Watch] = {}
        self._logged: set[str] = set()
        self._closer: weakref.finalize[[int], DirectoryWatcher] | None = None
        self._closed = False

    @property
    def watched(self) -> int:
        """Directories watched now."""
        with self._lock:
            return len(self._by_path)

    def begin(self, directory: Path) -> tuple[Watch, int] | None:
        """Watch ``directory`` (from now on, if it was not) and read what happened so far.

        Args:
            directory: The directory about to be listed.

        Returns:
            Its watch and change count now, or None when it cannot be watched (scan it).
        """
        path = str(directory)
        with self._lock:
            if self._closed:
                return None
            if self._pid != os.getpid():
                self._after_fork()
            if self._fd < 0 and not self._open():
                return None
            try:
                st = os.stat(path)
            except OSError:
                return None
            watch = self._by_path.get(path)
            if watch is not None and (watch.device != st.st_dev or watch.inode != st.st_ino):
                self._drop(path)  # the path names another directory now
                watch = None
            if watch is None:
                watch = self._add(path)
                if watch is None:
                    return None
            else:
                self._by_path.move_to_end(path)
            self._drain()  # after the stat: a move of the directory since is read here and ends the watch
            if not watch.alive:
                return None
            return watch, watch.changes

    def close(self) -> None:
        """Drop every watch and the inotify instance (idempotent); ``begin`` answers None from then on."""
        with self._lock:
            self._closed = True
            self._forget_all()
            if self._closer is not None:
                self._closer()
                self._closer = None
            self._fd = -1

    # --- caller holds the lock ------------------------------------------------------------------------

    def _open(self) -> bool:
        if _LIBC is None:
            self._log_once("no inotify in the C library")
            return False
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
            return False
        fd = _LIBC.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            self._failed_at = time.monotonic()
            self._log_once(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
            return False
        self._failed_at = None
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        return True

    def _after_fork(self) -> None:
        # The descriptor is shared with the parent, which reads its events: this process gets its own.
        if self._closer is not None:
            self._closer()
            self._closer = None
        self._fd = -1
        self._by_path.clear()
        self._by_wd.clear()
        self._pid = os.getpid()

    def _add(self, path: str) -> Watch | None:
        assert _LIBC is not None
        encoded = os.fsencode(path)
        fs_type = _LIBC.fs_type(encoded)
        if fs_type is None or fs_type not in self._filesystems:
            self._log_once(f"file system type {fs_type if fs_type is None else hex(fs_type)} is not watched")
            return None
        wd = _LIBC.add_watch(self._fd, encoded, WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code != errno.ENOENT:
                self._log_once(f"inotify_add_watch failed: {os.strerror(code)}")
            return None
        try:
            st = os.stat(path)  # after the watch: a later move of what it watches is an event
        except OSError:
            st = None
        watch = self._by_wd.get(wd)
        if watch is None:
            if st is None:
                _LIBC.rm_watch(self._fd, wd)
                return None
            watch = Watch(wd, st.st_dev, st.st_ino)
            self._by_wd[wd] = watch
        elif st is None or (watch.device, watch.inode) != (st.st_dev, st.st_ino):
            return None  # the directory was replaced between the watch and the stat: scan this time
        watch.paths.add(path)
        self._by_path[path] = watch
        while len(self._by_path) > self._max:
            self._drop(next(iter(self._by_path)))
        return watch

    def _drop(self, path: str) -> None:
        watch = self._by_path.pop(path)
        watch.paths.discard(path)
        if not watch.paths and watch.alive:
            watch.alive = False
            self._by_wd.pop(watch.wd, None)
            assert _LIBC is not None
            _LIBC.rm_watch(self._fd, watch.wd)

    def _end(self, watch: Watch, *, by_kernel: bool) -> None:
        watch.alive = False
        if self._by_wd.get(watch.wd) is watch:
            del self._by_wd[watch.wd]
        for path in watch.paths:
            self._by_path.pop(path, None)
        watch.paths.clear()
        if not by_kernel and _LIBC is not None:
            _LIBC.rm_watch(self._fd, watch.wd)

    def _forget_all(self) -> None:
        for watch in self._by_wd.values():
            watch.alive = False
            watch.paths.clear()
        self._by_wd.clear()
        self._by_path.clear()

    def _drain(self) -> None:
        by_wd = self._by_wd
        while True:
            try:
                data = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # not expected from inotify: trust nothing watched so far
                self._log_once(f"reading inotify events failed: {exc.strerror}")
                self._forget_all()
                return
            offset, end = 0, len(data)
            while offset < end:
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                hidden = length > 0 and data[offset + _EVENT.size] == _DOT
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    for watch in by_wd.values():
                        watch.changes += 1
                    continue
                found = by_wd.get(wd)
                if found is None:
                    continue
                if mask & ENDS_WATCH:
                    self._end(found, by_kernel=bool(mask & IN_IGNORED))
                elif not hidden:
                    found.changes += 1

    def _log_once(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("directory not watched reason=%s; listings stat every entry", reason)
