"""The child's seccomp filter: built once in the parent with libseccomp, loaded in the child as raw BPF.

``build_program`` starts from a default action of ERRNO(EPERM) (deny by default, never from allow) and adds
an allow rule only for what a confined child needs after confinement: run the Python bytecode of its child
loop (no imports, no file access), instantiate an already-compiled wasmtime ``Module`` and call into it
(traps arrive as signals), allocate memory, and talk to its parent over an fd it already holds. Every other
syscall, including opening files, creating sockets, connecting, exec, fork, ptrace, mount, unshare and setns,
fails with EPERM. A syscall made through another architecture's entry point (i386 ``int 0x80`` on x86_64)
kills the process; x32 syscall numbers match no rule and are denied.

``load_program`` installs the exported program with ``prctl(PR_SET_SECCOMP)``; it makes no libseccomp call,
so the child needs neither libseccomp nor the 2-4 ms it takes to compile a filter. It requires no_new_privs
(or CAP_SYS_ADMIN). Names are resolved for the native architecture, so the same lists serve x86_64 and
aarch64; a listed name the architecture lacks (``poll`` on aarch64) is left out, which only denies more.
"""

from __future__ import annotations

import ctypes
import errno
import os
from types import MappingProxyType

from sync_format.errors import SandboxUnavailable
from workers.confine.libc import bind
from workers.confine.prctl import PR_SET_SECCOMP

# <linux/seccomp.h>
SECCOMP_MODE_FILTER = 2
#: BPF_MAXINSNS: the kernel's limit on one classic BPF program.
BPF_MAX_INSTRUCTIONS = 4096
#: Size of one ``struct sock_filter`` instruction.
BPF_INSTRUCTION_SIZE = 8

#: Syscalls every confined child may make, grouped by the reason they are needed.
ALLOWED_SYSCALLS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        # Python's allocator (obmalloc arenas, malloc), wasmtime's stores, instances and linear memories.
        "memory": ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise"),
        # wasm traps (out-of-bounds, unreachable, stack overflow) are SIGSEGV/SIGILL handled on an alternate
        # stack that wasmtime sets up per thread; handlers return through rt_sigreturn.
        "signals": ("rt_sigreturn", "sigaltstack", "rt_sigaction", "rt_sigprocmask"),
        # The channel to the parent: an fd opened before confinement (pipe or socketpair).
        "channel": (
            "read",
            "write",
            "readv",
            "writev",
            "recvfrom",
            "sendto",
            "recvmsg",
            "sendmsg",
            "poll",
            "ppoll",
            "close",
        ),
        # Locks (Python's GIL, wasmtime's mutexes), identity, time, randomness.
        "runtime": (
            "futex",
            "getpid",
            "gettid",
            "clock_gettime",
            "clock_nanosleep",
            "nanosleep",
            "getrandom",
        ),
        "exit": ("exit", "exit_group"),
    }
)

_prctl_seccomp = bind(
    "prctl",
    (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong),
    layer="seccomp",
    action="prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)",
    restype=ctypes.c_int,
)


class SockFprog(ctypes.Structure):
    """``struct sock_fprog``: the program's length in instructions and a pointer to them."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def allowed_syscalls() -> tuple[str, ...]:
    """Every syscall name the filter allows (no ``clone``: the child starts neither threads nor processes).

    Returns:
        The names, in group order.
    """
    return tuple(name for group in ALLOWED_SYSCALLS.values() for name in group)


def build_program() -> bytes:
    """Compile the child's filter to classic BPF for the native architecture (call once, in the parent).

    Returns:
        The BPF program (``struct sock_filter`` array) for ``load_program``.

    Raises:
        SandboxUnavailable: libseccomp is missing or refused a rule.
    """
    try:
        import pyseccomp  # type: ignore[import-untyped]  # noqa: PLC0415  (libseccomp: parent only, optional)
    except (ImportError, OSError) as exc:
        raise SandboxUnavailable("seccomp", f"libseccomp is not available: {exc}") from exc
    try:
        flt = pyseccomp.SyscallFilter(pyseccomp.ERRNO(errno.EPERM))
        flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
        for name in allowed_syscalls():
            if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0:
                flt.add_rule(pyseccomp.ALLOW, name)
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        with os.fdopen(fd, "w+b") as out:
            flt.export_bpf(out)
            out.seek(0)
            program = out.read()
    except OSError as exc:
        raise SandboxUnavailable("seccomp", f"building the filter failed: {exc}", errno=exc.errno) from exc
    _check_program(program)
    return program


def load_program(program: bytes) -> str:
    """Install ``program`` as this thread's seccomp filter (irreversible; inherited by children).

    Args:
        program: BPF from ``build_program``.

    Returns:
        The layer's detail string.

    Raises:
        SandboxUnavailable: The program is malformed (EINVAL), or the kernel refused it (EACCES without
            no_new_privs, EINVAL without seccomp filter support).
    """
    _check_program(program)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len=len(program) // BPF_INSTRUCTION_SIZE, filter=ctypes.addressof(buffer))
    _prctl_seccomp(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
    return f"filter of {len(program) // BPF_INSTRUCTION_SIZE} BPF instructions, default EPERM"


def _check_program(program: bytes) -> None:
    count, rest = divmod(len(program), BPF_INSTRUCTION_SIZE)
    if rest or not 0 < count <= BPF_MAX_INSTRUCTIONS:
        raise SandboxUnavailable("seccomp", f"not a BPF program ({len(program)} bytes)", errno=errno.EINVAL)
