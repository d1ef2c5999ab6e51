"""Docker seccomp profiles (the JSON ``security_opt: seccomp=FILE`` names) turned into libseccomp filters.

A profile is interpreted the way runc does for one container on the native architecture: the default action
(``SCMP_ACT_ERRNO`` is EPERM unless ``defaultErrnoRet`` says otherwise), then each rule whose conditions hold
for the container's capability set, architecture and kernel: ``includes.caps`` must all be held,
``excludes.caps`` none; ``includes.arches``/``excludes.arches`` are Docker's architecture names;
``includes.minKernel`` is compared with the running kernel. Names the architecture lacks are skipped (runc
does the same). Loading the result lets a test run real code "inside the container's filter" without a
Docker engine. Only the actions and operators Docker's default profile uses are supported; anything else
raises ``ValueError`` rather than being guessed. Imported by the tests as ``docker_seccomp``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyseccomp

#: Docker's architecture names of the machines the tests run on.
NATIVE_ARCHES = {"x86_64": frozenset({"amd64", "x86_64"}), "aarch64": frozenset({"arm64", "aarch64"})}

_OPERATORS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}


def read_profile(path: Path) -> dict[str, Any]:
    """The profile's JSON document."""
    profile: dict[str, Any] = json.loads(path.read_text())
    return profile


def _kernel_at_least(minimum: str) -> bool:
    def parts(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("-", maxsplit=1)[0].split(".")[:2])

    return parts(platform.release()) >= parts(minimum)


def _applies(rule: dict[str, Any], caps: Collection[str], arches: Collection[str]) -> bool:
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if not set(includes.get("caps") or ()) <= set(caps):
        return False
    if set(excludes.get("caps") or ()) & set(caps):
        return False
    if includes.get("arches") and not set(includes["arches"]) & set(arches):
        return False
    if set(excludes.get("arches") or ()) & set(arches):
        return False
    return not (includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]))


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return pyseccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return pyseccomp.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
    raise ValueError(f"action {name} is not supported here")


def build_filter(profile: dict[str, Any], caps: Collection[str] = ()) -> pyseccomp.SyscallFilter:
    """A filter doing what ``profile`` does for a container holding ``caps`` on this machine.

    Args:
        profile: The profile's JSON document.
        caps: Capability names the container keeps (``CAP_SYS_ADMIN``...); none for a non-root process.

    Returns:
        The filter, not loaded yet.

    Raises:
        ValueError: The profile uses an action or operator this interpreter does not know, or the machine's
            architecture is not one the tests know.
    """
    machine = platform.machine()
    if machine not in NATIVE_ARCHES:
        raise ValueError(f"no Docker architecture name known for {machine}")
    arches = NATIVE_ARCHES[machine]
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    seccomp_filter = pyseccomp.SyscallFilter(default)
    for rule in profile["syscalls"]:
        if not _applies(rule, caps, arches):
            continue
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue  # libseccomp refuses a rule whose action is the default; it changes nothing anyway
        args = [
            pyseccomp.Arg(arg["index"], _OPERATORS[arg["op"]], arg["value"], arg.get("valueTwo", 0))
            for arg in rule.get("args") or ()
        ]
        for name in rule["names"]:
            if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) < 0:
                continue
            seccomp_filter.add_rule(action, name, *args)
    return seccomp_filter


def without_comments_starting(profile: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A copy of ``profile`` without the rules whose ``comment`` starts with ``prefix`` (our delta)."""
    rules = [rule for rule in profile["syscalls"] if not str(rule.get("comment", "")).startswith(prefix)]
    return {**profile, "syscalls": rules}


def load_in_this_process(seccomp_filter: pyseccomp.SyscallFilter) -> None:
    """Set no_new_privs and load the filter into the calling process (a throwaway child, never pytest).

    Docker loads the profile before the container's first process runs; no_new_privs is what lets an
    unprivileged process load a filter itself, and it changes no syscall's outcome.
    """
    pr_set_no_new_privs = 38
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    seccomp_filter.load()
