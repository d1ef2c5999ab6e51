"""Confinement of the child process that runs a guest: policy as data, thin kernel bindings, one applier.

``policy`` holds the data (``SandboxPolicy``, ``SandboxReport``); ``apply`` applies a policy in the child
and ``enforce`` decides per mode; ``probe`` tells what this machine supports. The bindings (``prctl``,
``netns``, ``rlimits``, ``landlock``, ``seccomp``) each do one kernel job and raise ``SandboxUnavailable``
with the errno.
"""

from __future__ import annotations

from workers.confine.apply import apply_policy, enforce
from workers.confine.landlock import abi_version as landlock_abi_version
from workers.confine.netns import enter_empty_network_namespace
from workers.confine.policy import (
    ALL_LAYERS,
    Layer,
    LayerStatus,
    Rlimits,
    SandboxMode,
    SandboxPolicy,
    SandboxReport,
)
from workers.confine.prctl import get_no_new_privs, set_dumpable, set_no_new_privs, set_pdeathsig
from workers.confine.probe import probe
from workers.confine.seccomp import allowed_syscalls, build_program, load_program

__all__ = [
    "ALL_LAYERS",
    "Layer",
    "LayerStatus",
    "Rlimits",
    "SandboxMode",
    "SandboxPolicy",
    "SandboxReport",
    "allowed_syscalls",
    "apply_policy",
    "build_program",
    "enforce",
    "enter_empty_network_namespace",
    "get_no_new_privs",
    "landlock_abi_version",
    "load_program",
    "probe",
    "set_dumpable",
    "set_no_new_privs",
    "set_pdeathsig",
]
