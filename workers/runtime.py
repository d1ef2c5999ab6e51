"""``GuestRuntime``: the per-process state every guest job shares, built once from ``Settings``.

It holds the engine, the compiled-module cache, the seccomp program (built once in the parent; the child
only loads it), the sandbox policy, and derives each job's budgets from its manifest: the wall-clock
deadline is ``policy.timeout`` (our default when 0, capped by ``max_guest_timeout``), fuel is proportional
to it, and RLIMIT_CPU sits just above it as a backstop. No module-level engine or cache exists.

Before the first fork the runtime builds the host functions' types (``host_abi.build_func_types``; an
instance then builds functions only for what its module imports) and runs a built-in trivial guest in this
process (``warm_up``), then takes it through a child's whole job path a few times, unconfined, over a local
socketpair (``warm_up_paths``, ``workers.child.rehearse``): the first store, host functions (ctypes
callbacks), instance and call of a process, and the first runs of the channel and job code, pay one-time
costs (lazy initialisation in wasmtime and libffi, the interpreter's specialisation of the code). Paid once in
the parent, every forked child inherits the result instead of paying again on its own copy-on-write pages (a
profile of the child: instantiate-and-run 6.7 -> 2.2 ms). The warm-up guest is our own constant module with
no host access beyond its payload; no guest of an archive ever runs outside a confined child.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import wasmtime

from broker.settings import Settings
from sync_format.errors import SandboxUnavailable
from sync_format.manifest import Manifest
from workers.addresses import Resolver, system_resolver
from workers.child import ChildJob, rehearse
from workers.confine import SandboxMode, SandboxPolicy, build_program
from workers.egress import EgressPolicy
from workers.engine import GuestLimits, compile_module, make_engine
from workers.guest_runner import run_guest
from workers.host_abi import HttpReply, build_func_types
from workers.module_cache import ModuleCache
from workers.spare import SpareChild
from workers.zygote import Zygote

log = logging.getLogger(__name__)

#: Fuel granted per second of a guest's timeout (a busy loop burns roughly 0.5 to 1.2e9 units per second).
FUEL_PER_SECOND = 500_000_000
#: RLIMIT_CPU headroom above the guest's timeout, in seconds (instantiation and the channel need CPU too).
CPU_HEADROOM_SECONDS = 2
#: Times ``warm_up_paths`` takes the warm-up guest through a child's job path (the interpreter specialises
#: code after a few runs).
REHEARSALS = 3
#: The warm-up guest (binary form of ``(module (import "host" "payload_write" (func (param i32 i32 i32)
#: (result i32))) (memory (export "memory") 1) (func (export "run") (drop (call 0 (i32.const 0) (i32.const 1)
#: (i32.const 0)))))``): one host call, one page of memory.
WARM_UP_WASM = bytes.fromhex(
    "0061736d01000000010b0260037f7f7f017f60000002160104686f73740d7061796c6f61645f77726974650000030201010503"
    "010001071002066d656d6f727902000372756e00010a0d010b0041004101410010001a0b"
)


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
        self.resolver = resolver
        unbound = settings.unbound_secrets()
        if unbound:
            # Fail-closed, but say so once: otherwise an operator sees only -3 in some guest's status record.
            log.warning(
                "guest secrets unusable until bound names=%s (set SYNC_GUEST_SECRET_<NAME>_HOSTS)",
                ",".join(unbound),
            )
        self.policy = SandboxPolicy(mode=SandboxMode(settings.sandbox))
        self.seccomp_program: bytes | None
        try:
            self.seccomp_program = build_program()
        except SandboxUnavailable as exc:
            log.warning("seccomp filter unavailable reason=%s", exc.message)
            self.seccomp_program = None
        self.modules = ModuleCache(
            settings.cache_dir / "modules",
            self.engine,
            max_module_size=settings.max_module_size,
            compile_timeout=settings.compile_timeout,
            policy=self.policy,
            seccomp_program=self.seccomp_program,
        )
        warm_up_paths(self.engine, self.policy, self.seccomp_program)
        #: The child forked ahead for the next job (``Settings.sandbox_spare_child``), else None.
        self.spare: SpareChild | None = None
        if settings.sandbox_spare_child:
            self.spare = SpareChild(self.engine, self.policy, self.seccomp_program)
        #: The sandbox zygote (``Settings.sandbox_zygote``), started on the first job, else None.
        self.zygote: Zygote | None = None
        if settings.sandbox_zygote:
            self.zygote = Zygote(self.policy, self.seccomp_program)

    def close(self) -> None:
        """Discard the spare child and stop the zygote, if any (a runtime dropped without ``close`` leaves
        them to die with this process)."""
        if self.spare is not None:
            self.spare.close()
        if self.zygote is not None:
            self.zygote.close()

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


class _NoEgress:
    """``GuestIO`` of the warm-up guest: it makes no request; any attempt is refused."""

    def http_request(self, url: str, method: str) -> HttpReply:
        raise RuntimeError("the warm-up guest makes no request")

    def http_send(self, url: str, method: str, headers: bytes, body: bytes) -> HttpReply:
        raise RuntimeError("the warm-up guest makes no request")

    def log(self, line: str) -> None:
        """Drop the line (the warm-up guest logs nothing)."""


def warm_up_paths(engine: wasmtime.Engine, policy: SandboxPolicy, seccomp_program: bytes | None) -> ChildJob:
    """``warm_up``, then the warm-up guest through a child's whole job path ``REHEARSALS`` times, unconfined,
    in this process (``workers.child.rehearse``): what forked children run then starts warm.

    Args:
        engine: The engine.
        policy: The policy children get.
        seccomp_program: The program children load.

    Returns:
        The warm-up job (the zygote's spares rehearse it once more each: ``workers.zygote``).
    """
    warm_up(engine)
    module = compile_module(engine, WARM_UP_WASM)
    job = ChildJob(engine, module, b"\x00", warm_up_limits(), policy, seccomp_program)
    for _ in range(REHEARSALS):
        rehearse(engine, policy, seccomp_program, job)
    return job


def warm_up_limits() -> GuestLimits:
    """The warm-up guest's budgets.

    Returns:
        Small limits (it writes one byte).
    """
    return GuestLimits(fuel=1_000_000, memory_bytes=64 * 1024, timeout_seconds=1.0, max_payload_size=16)


def warm_up(engine: wasmtime.Engine) -> None:
    """Instantiate and run the built-in warm-up guest once in this process (see the module docstring).

    Args:
        engine: The engine later guests run in.

    Raises:
        RuntimeError: The warm-up guest did not write the one byte it writes (a broken engine or ABI).
    """
    build_func_types(engine)
    run = run_guest(engine, compile_module(engine, WARM_UP_WASM), b"\x00", warm_up_limits(), _NoEgress())
    if run.new_payload != b"\x00":
        raise RuntimeError(f"the warm-up guest wrote {run.new_payload!r}, not one zero byte")
