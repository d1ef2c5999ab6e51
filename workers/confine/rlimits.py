"""Apply the policy's resource limits to the calling process.

RLIMIT_AS and RLIMIT_NOFILE are set relative to what the child already holds (it inherited its parent's
address space and descriptors): mapped plus the policy's headroom, and the highest open descriptor plus
the policy's count. An absolute limit would fail guests whenever the parent (a long-lived worker) holds
more. Each limit is set with soft = hard, so the child cannot raise it again, and never above the hard limit
the process already has: a limit is only ever tightened (raising a hard limit would need CAP_SYS_RESOURCE,
and a supervisor that already runs under a tighter limit keeps it). RLIMIT_NPROC is applied too but the
kernel ignores it for root, and for others it also counts threads; new processes are forbidden by seccomp.
Failures raise ``SandboxUnavailable`` with the errno.
"""

from __future__ import annotations

import os
import resource

from sync_format.errors import SandboxUnavailable
from workers.confine.policy import Rlimits


def apply(limits: Rlimits) -> str:
    """Set RLIMIT_AS, CPU, NOFILE, FSIZE, CORE and NPROC from ``limits``.

    Args:
        limits: The policy's limits.

    Returns:
        The limits now in effect, for the layer's detail string (``as=812MiB+1536MiB cpu=60s nofile=9+64
        ...``: what was held when applied plus the headroom).

    Raises:
        SandboxUnavailable: A limit could not be set.
    """
    mapped = mapped_bytes()
    first_free = highest_descriptor() + 1
    wanted = (
        ("as", resource.RLIMIT_AS, mapped + limits.address_space),
        ("cpu", resource.RLIMIT_CPU, limits.cpu_seconds),
        ("nofile", resource.RLIMIT_NOFILE, first_free + limits.open_files),
        ("fsize", resource.RLIMIT_FSIZE, limits.file_size),
        ("core", resource.RLIMIT_CORE, limits.core),
        ("nproc", resource.RLIMIT_NPROC, limits.processes),
    )
    parts = []
    for name, which, value in wanted:
        try:
            _, hard = resource.getrlimit(which)
            effective = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (effective, effective))
        except (OSError, ValueError) as exc:
            raise SandboxUnavailable(
                "rlimits", f"setrlimit({name}, {value}) failed: {exc}", errno=getattr(exc, "errno", None)
            ) from exc
        shown = _show(name, effective)
        if name == "as":
            shown = f"{mapped // 2**20}MiB+{_show(name, effective - mapped)}"
        elif name == "nofile":
            shown = f"{first_free}+{effective - first_free}"
        parts.append(f"{name}={shown}")
    return " ".join(parts)


def highest_descriptor() -> int:
    """The highest file descriptor the calling process has open.

    Returns:
        The descriptor number (at least 2: stdio).

    Raises:
        SandboxUnavailable: ``/proc/self/fd`` cannot be listed (it must be read before Landlock applies).
    """
    try:
        return max(2, *(int(name) for name in os.listdir("/proc/self/fd")))
    except (OSError, ValueError) as exc:
        raise SandboxUnavailable("rlimits", f"cannot list open descriptors: {exc}") from exc


def mapped_bytes() -> int:
    """The calling process's current virtual address space (``VmSize``), in bytes.

    Returns:
        Bytes mapped now.

    Raises:
        SandboxUnavailable: ``/proc/self/statm`` cannot be read (it must be read before Landlock applies).
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise SandboxUnavailable("rlimits", f"cannot read the address space size: {exc}") from exc
    return pages * resource.getpagesize()


def _show(name: str, value: int) -> str:
    if name == "as" and value % (1024 * 1024) == 0:
        return f"{value // (1024 * 1024)}MiB"
    if name == "cpu":
        return f"{value}s"
    return str(value)
