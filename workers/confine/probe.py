"""Say what confinement this machine supports, without confining the calling process.

``probe`` builds the seccomp program, forks a throwaway child that applies the whole policy (permissively:
every layer is attempted) and sends its ``SandboxReport`` back over a pipe, then reaps it. That answers the
questions a static check cannot (is ``unshare(CLONE_NEWNET)`` allowed here, does a container's seccomp
profile refuse Landlock) with the same code path a job uses. The child touches nothing but the pipe and
leaves with ``os._exit``; the caller's process, threads and fds are unchanged. Meant for ``syncctl``
diagnostics, not the job path (it costs a fork and a filter build, a few milliseconds).
"""

from __future__ import annotations

import json
import os

from sync_format.errors import SandboxUnavailable
from workers.confine import seccomp
from workers.confine.apply import apply_policy
from workers.confine.policy import Layer, LayerStatus, SandboxMode, SandboxPolicy, SandboxReport

#: Exit status of a probe child whose report could not be sent.
_CHILD_FAILED = 70


def probe(policy: SandboxPolicy | None = None) -> SandboxReport:
    """Apply ``policy`` (default: every layer, default limits) in a throwaway child and return its report.

    Args:
        policy: The policy to try; its mode is ignored (every layer is attempted).

    Returns:
        The child's report. When the parent cannot build the seccomp program, the seccomp status carries
        the build error instead of the child's.

    Raises:
        SandboxUnavailable: The probe child could not be started or died without reporting.
    """
    policy = policy or SandboxPolicy(mode=SandboxMode.PERMISSIVE)
    build_error: SandboxUnavailable | None = None
    program: bytes | None = None
    try:
        program = seccomp.build_program()
    except SandboxUnavailable as exc:
        build_error = exc
    report = _report_from_child(policy, program)
    if build_error is None:
        return report
    statuses = tuple(
        LayerStatus(Layer.SECCOMP, False, reason=build_error.message, errno=build_error.errno)
        if s.layer is Layer.SECCOMP
        else s
        for s in report.statuses
    )
    return SandboxReport(statuses=statuses, landlock_abi=report.landlock_abi)


def _report_from_child(policy: SandboxPolicy, program: bytes | None) -> SandboxReport:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise SandboxUnavailable("probe", f"fork failed: {exc}", errno=exc.errno) from exc
    if pid == 0:  # pragma: no cover - runs in the throwaway child, which never returns
        status = _CHILD_FAILED
        try:
            os.close(read_fd)
            data = json.dumps(apply_policy(policy, program).to_json()).encode()
            while data:
                data = data[os.write(write_fd, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    if wait_status != 0 or not chunks:
        raise SandboxUnavailable("probe", f"probe child ended without a report (wait status {wait_status})")
    return SandboxReport.from_json(json.loads(b"".join(chunks)))
