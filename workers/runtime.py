"""``GuestRuntime``: the per-process state every guest job shares, built once from ``Settings``.

It holds the engine, the compiled-module cache, the seccomp program (built once in the parent; the child
only loads it), the sandbox policy, and derives each job's budgets from its manifest: the wall-clock
deadline is ``policy.timeout`` (our default when 0, capped by ``max_guest_timeout``), fuel is proportional
to it, and RLIMIT_CPU sits just above it as a backstop. No module-level engine or cache exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from broker.settings import Settings
from sync_format.errors import SandboxUnavailable
from sync_format.manifest import Manifest
from workers.addresses import Resolver, system_resolver
from workers.confine import SandboxMode, SandboxPolicy, build_program
from workers.egress import EgressPolicy
from workers.engine import GuestLimits, make_engine
from workers.module_cache import ModuleCache

log = logging.getLogger(__name__)

#: Fuel granted per second of a guest's timeout (a busy loop burns roughly 0.5 to 1.2e9 units per second).
FUEL_PER_SECOND = 500_000_000
#: RLIMIT_CPU headroom above the guest's timeout, in seconds (instantiation and the channel need CPU too).
CPU_HEADROOM_SECONDS = 2


class GuestRuntime:
    """Engine, module cache, seccomp program and policies for running guests in this process."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        """Prepare everything a job needs before its child is forked.

        Args:
            settings: The process's settings (cache directory, sandbox mode, limits).
            resolver: Name resolution for guest HTTP (tests point names at their own hosts).
        """
        self.settings = settings
        self.engine = make_engine()
        self.modules = ModuleCache(
            settings.cache_dir / "modules",
            self.engine,
            max_module_size=settings.max_module_size,
            compile_timeout=settings.compile_timeout,
        )
        self.policy = SandboxPolicy(mode=SandboxMode(settings.sandbox))
        self.resolver = resolver
        unbound = settings.unbound_secrets()
        if unbound:
            # Fail-closed, but say so once: otherwise an operator sees only -3 in some guest's status record.
            log.warning(
                "guest secrets unusable until bound names=%s (set SYNC_GUEST_SECRET_<NAME>_HOSTS)",
                ",".join(unbound),
            )
        self.seccomp_program: bytes | None
        try:
            self.seccomp_program = build_program()
        except SandboxUnavailable as exc:
            log.warning("seccomp filter unavailable reason=%s", exc.message)
            self.seccomp_program = None

    def limits_for(self, manifest: Manifest) -> GuestLimits:
        """The budgets of a guest run for this manifest.

        Args:
            manifest: The archive's manifest.

        Returns:
            The limits.
        """
        timeout = float(manifest.policy.timeout) or self.settings.guest_timeout
        timeout = min(timeout, self.settings.max_guest_timeout)
        return GuestLimits(
            fuel=int(timeout * FUEL_PER_SECOND),
            timeout_seconds=timeout,
            max_payload_size=self.settings.max_payload_size,
        )

    def policy_for(self, limits: GuestLimits) -> SandboxPolicy:
        """The sandbox policy with RLIMIT_CPU derived from the limits.

        Args:
            limits: The run's limits.

        Returns:
            The policy.
        """
        return self.policy.with_cpu_seconds(math.ceil(limits.timeout_seconds) + CPU_HEADROOM_SECONDS)

    def egress_for(self, manifest: Manifest, limits: GuestLimits) -> EgressPolicy:
        """What the guest may fetch.

        Args:
            manifest: The archive's manifest (its ``allow_hosts``).
            limits: The run's limits (response size and request count caps).

        Returns:
            The egress policy, with the operator's ``egress_allow_private`` (the only way to a non-public
            address) and the run's total byte cap from the settings.
        """
        return replace(
            EgressPolicy.from_manifest(manifest),
            max_response_size=limits.max_response_size,
            max_requests=limits.max_requests,
            allow_private=self.settings.egress_allow_private,
            max_total_bytes=self.settings.egress_max_total_bytes,
        )
