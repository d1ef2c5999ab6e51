"""Apply a ``SandboxPolicy`` to the calling (child) process and report what took effect.

``apply_policy`` applies the policy's layers in ``ALL_LAYERS`` order (no_new_privs, netns, rlimits, Landlock,
seccomp): no_new_privs first because Landlock and seccomp require it; the namespace before the rlimits and
Landlock because an unprivileged child must still write its own uid map; seccomp last because once it is
loaded none of the other layers' syscalls is allowed. It never raises for a layer that cannot be applied:
the layer's status records why (reason and errno) and the remaining layers are still applied. The caller
decides what a missing layer means with ``enforce``: strict refuses, permissive carries on and says so.

Everything the child calls here was bound at import time in the parent; the seccomp program is built by the
parent (``seccomp.build_program``) and only loaded here. Call it in a single-threaded child, never in a
process that must keep its network, files or privileges.
"""

from __future__ import annotations

from sync_format.errors import SandboxUnavailable
from workers.confine import landlock, netns, prctl, rlimits, seccomp
from workers.confine.policy import ALL_LAYERS, Layer, LayerStatus, SandboxMode, SandboxPolicy, SandboxReport


def apply_policy(
    policy: SandboxPolicy, seccomp_program: bytes | None, *, only: tuple[Layer, ...] = ALL_LAYERS
) -> SandboxReport:
    """Apply every layer the policy lists, in order, to the calling process.

    Args:
        policy: The layers and limits.
        seccomp_program: BPF from ``seccomp.build_program``, or None when the parent could not build one
            (the seccomp layer is then reported missing).
        only: Apply only these of the policy's layers (a spare child applies the layers in two steps,
            ``EARLY_LAYERS`` then the rest, which keeps the ``ALL_LAYERS`` order).

    Returns:
        One status per listed layer, and the kernel's Landlock ABI (None when Landlock is unavailable).
    """
    abi: int | None = None
    abi_error: SandboxUnavailable | None = None
    try:
        abi = landlock.abi_version()
    except SandboxUnavailable as exc:
        abi_error = exc
    statuses = []
    for layer in ALL_LAYERS:
        if layer not in policy.layers or layer not in only:
            continue
        try:
            detail = _apply_layer(layer, policy, seccomp_program, abi, abi_error)
        except SandboxUnavailable as exc:
            statuses.append(LayerStatus(layer=layer, active=False, reason=exc.message, errno=exc.errno))
        else:
            statuses.append(LayerStatus(layer=layer, active=True, detail=detail))
    return SandboxReport(statuses=tuple(statuses), landlock_abi=abi)


#: Layers that depend on nothing a job sets: a spare child applies them before it receives its job.
EARLY_LAYERS: tuple[Layer, ...] = (Layer.NO_NEW_PRIVS, Layer.NETNS)
#: The rest, applied once the job (and its rlimits) arrived, in ``ALL_LAYERS`` order.
LATE_LAYERS: tuple[Layer, ...] = tuple(layer for layer in ALL_LAYERS if layer not in EARLY_LAYERS)


def enforce(report: SandboxReport, mode: SandboxMode) -> tuple[LayerStatus, ...]:
    """Refuse an incomplete report in strict mode; in permissive mode return what is missing.

    Args:
        report: What ``apply_policy`` achieved.
        mode: The policy's mode.

    Returns:
        The statuses of missing layers (empty when complete), for a permissive caller to report loudly.

    Raises:
        SandboxUnavailable: Strict mode and a listed layer is missing (the first missing one is named).
    """
    missing = report.missing
    if missing and mode is SandboxMode.STRICT:
        first = missing[0]
        others = ", ".join(s.layer.value for s in missing[1:])
        suffix = f" (also missing: {others})" if others else ""
        # The reason came from a SandboxUnavailable and already starts with the layer's name.
        reason = (first.reason or "unavailable").removeprefix(f"{first.layer.value}: ")
        raise SandboxUnavailable(first.layer.value, f"{reason}{suffix}", errno=first.errno)
    return missing


def _apply_layer(
    layer: Layer,
    policy: SandboxPolicy,
    seccomp_program: bytes | None,
    abi: int | None,
    abi_error: SandboxUnavailable | None,
) -> str:
    if layer is Layer.NO_NEW_PRIVS:
        prctl.set_no_new_privs()
        return "set"
    if layer is Layer.NETNS:
        return netns.enter_empty_network_namespace()
    if layer is Layer.RLIMITS:
        return rlimits.apply(policy.rlimits)
    if layer is Layer.LANDLOCK:
        if abi is None:
            raise abi_error or SandboxUnavailable("landlock", "ABI version unknown")
        return landlock.restrict_self(policy.read_only_paths, abi)
    # Layer.SECCOMP, always last: after it none of the syscalls above is allowed.
    if seccomp_program is None:
        raise SandboxUnavailable("seccomp", "no filter program: the parent could not build one")
    return seccomp.load_program(seccomp_program)
