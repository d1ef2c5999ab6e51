"""Leave a forked child only the descriptors it was meant to have.

A child forked from a worker inherits everything the worker holds: its Redis and broker sockets, Celery's
pipes, the job's pinned folder (``sync_format.beneath``), log files open for writing. Before it confines
itself and touches anything a guest or an archive author wrote, ``isolate_descriptors`` points stdio at
``/dev/null`` and closes every inherited socket, pipe, character device, folder and writable file but one.
"""

from __future__ import annotations

import fcntl
import os
import stat

#: Where the kernel lists a process's own descriptors.
_OWN_FDS = "/proc/self/fd"


def isolate_descriptors(keep: int) -> None:
    """Stdio to /dev/null; close inherited sockets, pipes, folders and writable files other than ``keep``.

    Read-only regular files stay open: wasmtime may still map a module's file. Folders go: a child forked
    from the worker (no zygote) would otherwise hold the job's own folder (``sync_format.beneath``).

    Args:
        keep: The one descriptor the child talks to its parent through.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for name in os.listdir(_OWN_FDS):
        fd = int(name)
        if fd in (0, 1, 2, keep):
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        writable = False
        if stat.S_ISREG(st.st_mode):
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        kind = st.st_mode
        if stat.S_ISSOCK(kind) or stat.S_ISFIFO(kind) or stat.S_ISCHR(kind) or stat.S_ISDIR(kind) or writable:
            os.close(fd)
