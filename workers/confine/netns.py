"""Move the calling process into a new, empty network namespace.

After ``enter_empty_network_namespace`` the process sees one interface, a loopback that is down: no address,
no route, so every connect fails with ENETUNREACH, including to the parent's 127.0.0.1. Sockets opened before
the call keep working in the namespace they were created in, which is how the child keeps its channel to
the parent. As root the call is a bare ``unshare(CLONE_NEWNET)``; otherwise it enters a new user and
network namespace together (needs unprivileged user namespaces) and maps only the caller's own uid and gid.
The process must be single-threaded (the kernel refuses a user namespace to a threaded process). A failed
unshare raises ``SandboxUnavailable`` with the errno; it is never hidden. Failing to write the maps (a
non-dumpable process's ``/proc/self`` files belong to root) does not undo the isolation, so it is reported
in the detail string instead: the process then appears as the overflow uid inside.
"""

from __future__ import annotations

import ctypes
import os

from workers.confine.libc import bind

# <linux/sched.h>
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

_unshare = bind("unshare", (ctypes.c_int,), layer="netns", action="unshare", restype=ctypes.c_int)


def enter_empty_network_namespace() -> str:
    """Unshare the network namespace (when not root, together with the user namespace).

    Returns:
        What was done, for the layer's detail string.

    Raises:
        SandboxUnavailable: The kernel refused (EPERM without privilege or user namespaces, EINVAL when
            threaded, ENOSPC at the namespace limit).
    """
    if os.geteuid() == 0:
        _unshare(CLONE_NEWNET)
        return "new network namespace (lo down)"
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    try:
        # setgroups must be denied before an unprivileged process may write its gid map.
        _write_proc("/proc/self/setgroups", "deny")
        _write_proc("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_proc("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        return (
            f"new user+network namespace (lo down); uid/gid maps NOT written ({exc.strerror}, errno "
            f"{exc.errno}): the process is the overflow uid inside"
        )
    return f"new user+network namespace (uid {uid}, gid {gid} mapped; lo down)"


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
