"""Raw bindings of the Landlock syscalls: deny the calling process every filesystem, TCP and scope right.

``restrict_self`` builds a ruleset that handles every access right the kernel's ABI knows (filesystem: the 13
rights of ABI 1, REFER from ABI 2, TRUNCATE from ABI 3, IOCTL_DEV from ABI 5; network from ABI 4: TCP bind
and connect; scopes from ABI 6: abstract unix sockets and signals), allows only reading beneath the given
paths (none by default), and enforces it on the calling thread and its future children. A handled right
with no rule is denied: no file can be opened (EACCES), no TCP port bound or connected (EACCES), no process
outside the domain signalled (EPERM). The Landlock domain cannot be removed, only stacked.

A right the kernel's ABI does not know is never skipped silently: the returned detail string says what was
enforced and what this ABI could not enforce. The syscall numbers (444, 445, 446) are the same on every
architecture (the unified syscall table). Failures raise ``SandboxUnavailable`` with the errno. The caller
must set no_new_privs first (or hold CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import os
import stat

from sync_format.errors import SandboxUnavailable
from workers.confine.libc import bind

# Syscall numbers from the unified table (include/uapi/asm-generic/unistd.h), shared by x86_64 and aarch64.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

# <linux/landlock.h>
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

#: The 13 filesystem rights of ABI 1.
ACCESS_FS_ABI1 = (1 << 13) - 1
#: The newest ABI whose rights this module knows (ABI 7 added audit logging, no new right).
KNOWN_ABI = 7

#: Rights granted beneath a read-only path: reading files and listing directories; no execute.
READ_ONLY_DIR = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
READ_ONLY_FILE = ACCESS_FS_READ_FILE


class RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr`` (fields after ``handled_access_fs`` must be zero before ABI 4/6)."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr`` (packed: 12 bytes)."""

    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_L = ctypes.c_long
_create_version = bind(
    "syscall", (_L, _L, _L, _L), layer="landlock", action="landlock_create_ruleset(VERSION)"
)
_create_ruleset = bind(
    "syscall", (_L, ctypes.c_void_p, _L, _L), layer="landlock", action="landlock_create_ruleset"
)
_add_rule = bind("syscall", (_L, _L, _L, ctypes.c_void_p, _L), layer="landlock", action="landlock_add_rule")
_restrict_self = bind("syscall", (_L, _L, _L), layer="landlock", action="landlock_restrict_self")


def abi_version() -> int:
    """The kernel's Landlock ABI version.

    Returns:
        The version (1 or more).

    Raises:
        SandboxUnavailable: Landlock is not built in (ENOSYS) or not enabled at boot (EOPNOTSUPP).
    """
    return _create_version(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)


def handled_rights(abi: int) -> tuple[int, int, int]:
    """Every right ``abi`` can enforce, as the ruleset's (filesystem, network, scope) masks.

    Args:
        abi: The kernel's ABI version.

    Returns:
        The three masks; a mask is 0 when the ABI predates that kind of right.
    """
    fs = ACCESS_FS_ABI1
    if abi >= 2:
        fs |= ACCESS_FS_REFER
    if abi >= 3:
        fs |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        fs |= ACCESS_FS_IOCTL_DEV
    net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped


def describe(abi: int, read_only_paths: tuple[str, ...] = ()) -> str:
    """Say what a ruleset for ``abi`` enforces and what this ABI cannot.

    Args:
        abi: The kernel's ABI version.
        read_only_paths: The paths left readable.

    Returns:
        E.g. ``ABI 7: fs(16 rights, read-only: none), net(tcp bind+connect), scope(abstract-unix, signal)``.
    """
    fs, net, scoped = handled_rights(abi)
    readable = ", ".join(read_only_paths) or "none"
    enforced = [f"fs({bin(fs).count('1')} rights, read-only: {readable})"]
    missing = []
    if net:
        enforced.append("net(tcp bind+connect)")
    else:
        missing.append("net tcp bind+connect (needs ABI 4)")
    if scoped:
        enforced.append("scope(abstract-unix, signal)")
    else:
        missing.append("scope abstract-unix+signal (needs ABI 6)")
    if abi < 2:
        missing.append("fs refer (needs ABI 2)")
    if abi < 3:
        missing.append("fs truncate (needs ABI 3)")
    if abi < 5:
        missing.append("fs ioctl_dev (needs ABI 5)")
    text = f"ABI {abi}: " + ", ".join(enforced)
    if missing:
        text += "; NOT enforced at this ABI: " + ", ".join(missing)
    if abi > KNOWN_ABI:
        text += f"; rights added after ABI {KNOWN_ABI} are unknown to this code and not handled"
    return text


def restrict_self(read_only_paths: tuple[str, ...], abi: int) -> str:
    """Enforce a ruleset handling every right of ``abi``, allowing only reads beneath ``read_only_paths``.

    Args:
        read_only_paths: Directories or files left readable (not executable, not writable).
        abi: The kernel's ABI version, from ``abi_version``.

    Returns:
        The detail string from ``describe``.

    Raises:
        SandboxUnavailable: A syscall failed, or a read-only path cannot be opened.
    """
    fs, net, scoped = handled_rights(abi)
    attr = RulesetAttr(handled_access_fs=fs, handled_access_net=net, scoped=scoped)
    ruleset_fd = _create_ruleset(SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    try:
        for path in read_only_paths:
            _allow_read(ruleset_fd, path)
        _restrict_self(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0)
    finally:
        os.close(ruleset_fd)
    return describe(abi, read_only_paths)


def _allow_read(ruleset_fd: int, path: str) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxUnavailable("landlock", f"read-only path {path!r}: {exc}", errno=exc.errno) from exc
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        rule = PathBeneathAttr(allowed_access=READ_ONLY_DIR if is_dir else READ_ONLY_FILE, parent_fd=fd)
        _add_rule(SYS_LANDLOCK_ADD_RULE, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.addressof(rule), 0)
    finally:
        os.close(fd)
