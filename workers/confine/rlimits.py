"""Apply the policy's resource limits to the calling process.

Each limit is set with soft = hard, so the child cannot raise it again, and never above the hard limit the
process already has: a limit is only ever tightened (raising a hard limit would need CAP_SYS_RESOURCE, and a
supervisor that already runs under a tighter limit keeps it). RLIMIT_NPROC is applied too but the kernel
ignores it for root, and for others it also counts threads; new processes are forbidden by seccomp.
Failures raise ``SandboxUnavailable`` with the errno.
"""

from __future__ import annotations

import resource

from sync_format.errors import SandboxUnavailable
from workers.confine.policy import Rlimits


def apply(limits: Rlimits) -> str:
    """Set RLIMIT_AS, CPU, NOFILE, FSIZE, CORE and NPROC from ``limits``.

    Args:
        limits: The policy's limits.

    Returns:
        The limits now in effect, for the layer's detail string (``as=1536MiB cpu=60s ...``).

    Raises:
        SandboxUnavailable: A limit could not be set.
    """
    wanted = (
        ("as", resource.RLIMIT_AS, limits.address_space),
        ("cpu", resource.RLIMIT_CPU, limits.cpu_seconds),
        ("nofile", resource.RLIMIT_NOFILE, limits.open_files),
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
        parts.append(f"{name}={_show(name, effective)}")
    return " ".join(parts)


def _show(name: str, value: int) -> str:
    if name == "as" and value % (1024 * 1024) == 0:
        return f"{value // (1024 * 1024)}MiB"
    if name == "cpu":
        return f"{value}s"
    return str(value)
