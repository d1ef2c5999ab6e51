"""Thin bindings of the process-attribute ``prctl`` calls the confinement uses.

``set_no_new_privs`` is the first layer: once set it cannot be cleared, is inherited by every descendant, and
lets an unprivileged process install a seccomp filter or a Landlock domain. ``set_pdeathsig`` and
``set_dumpable`` belong to the spawner (CONTRIBUTING.md; the child dies with its parent; no core dumps, no
ptrace attach by same-uid processes). Each call raises ``SandboxUnavailable`` carrying the errno on failure.
"""

from __future__ import annotations

import ctypes

from workers.confine.libc import bind

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_ARGS = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

_prctl_nnp = bind(
    "prctl", _ARGS, layer="no_new_privs", action="prctl(PR_SET_NO_NEW_PRIVS)", restype=ctypes.c_int
)
_prctl_get_nnp = bind(
    "prctl", _ARGS, layer="no_new_privs", action="prctl(PR_GET_NO_NEW_PRIVS)", restype=ctypes.c_int
)
_prctl_pdeathsig = bind(
    "prctl", _ARGS, layer="pdeathsig", action="prctl(PR_SET_PDEATHSIG)", restype=ctypes.c_int
)
_prctl_dumpable = bind(
    "prctl", _ARGS, layer="dumpable", action="prctl(PR_SET_DUMPABLE)", restype=ctypes.c_int
)


def set_no_new_privs() -> None:
    """Forbid this process and its descendants from gaining privileges through execve (irreversible)."""
    _prctl_nnp(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def get_no_new_privs() -> bool:
    """Whether no_new_privs is set for this process.

    Returns:
        True when set.
    """
    return bool(_prctl_get_nnp(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when the thread that forked it exits.

    The caller must check ``os.getppid()`` afterwards: a parent that died before this call is not covered.

    Args:
        sig: The signal number (``signal.SIGKILL`` for a child that must not outlive its supervisor).
    """
    _prctl_pdeathsig(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_dumpable(dumpable: bool) -> None:
    """Set whether this process may dump core and be ptrace-attached by processes of the same uid.

    Call it after ``enter_empty_network_namespace``: a non-dumpable process's ``/proc/self`` files belong to
    root, so an unprivileged child could no longer write its own uid map.

    Args:
        dumpable: False for a confined child.
    """
    _prctl_dumpable(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0)
