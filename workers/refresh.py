"""``run_refresh``: one refresh of one archive, shared by the Celery task and ``syncctl run``.

Open one snapshot; skip when another refresh already moved the generation past the requested base; refuse
vaults (a guest would see ciphertext, spec §9 D6); report archives without update logic cleanly (§9 D12);
load the guest through the module cache; run it in a fresh confined child under its budgets; and when it
composed a new payload, commit it with ``commit_payload`` guarded by the generation the guest read. The
outcome is a value: failures are recorded in it (with a stable error code), never raised, so callers decide
on retries without parsing messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from broker.contract import RefreshStatus
from sync_format.beneath import pinned
from sync_format.builder import EMPTY_WASM
from sync_format.errors import PolicyDenied, SwapConflict, SyncError
from sync_format.escape import escape_text
from sync_format.reader import ArchiveSnapshot, open_archive
from sync_format.swap import commit_payload
from workers.child import ChildJob
from workers.runtime import GuestRuntime
from workers.supervisor import Grants, Requester, SandboxOutcome, run_in_sandbox

log = logging.getLogger(__name__)

# The statuses a refresh ends with (``broker.contract.RefreshStatus``), named here for this module's callers.
COMMITTED = RefreshStatus.COMMITTED
UNCHANGED = RefreshStatus.UNCHANGED
NO_UPDATE_LOGIC = RefreshStatus.NO_UPDATE_LOGIC
ALREADY_FRESH = RefreshStatus.ALREADY_FRESH
FAILED = RefreshStatus.FAILED


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh did.

    Attributes:
        archive: The archive.
        status: ``committed``, ``unchanged``, ``no_update_logic``, ``already_fresh`` or ``failed``.
        base_generation: The generation the guest read.
        generation: The generation after the refresh.
        error_code: Stable code of the failure (``SyncError.code``), None on success.
        error: Human-readable failure.
        duration_ms: Wall time of the whole refresh.
        entry: Guest entry point that ran.
        fuel_used: Fuel the guest consumed.
        requests: HTTP requests the guest made.
        egress_errors: Error codes of the guest's requests that got no response.
        egress: Each refused or failed request of the run (rule, host, code, url, reason), escaped.
        payload_size: Size of the committed payload.
        sandbox: The child's confinement report (``SandboxReport.to_json``).
        guest_log: The guest's ``log`` lines (ABI v2), escaped and bounded.
    """

    archive: Path
    status: RefreshStatus
    base_generation: int
    generation: int
    error_code: str | None = None
    error: str | None = None
    duration_ms: float = 0.0
    entry: str | None = None
    fuel_used: int = 0
    requests: int = 0
    egress_errors: tuple[str, ...] = ()
    egress: tuple[dict[str, Any], ...] = ()
    payload_size: int | None = None
    sandbox: dict[str, Any] | None = None
    guest_log: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True unless the refresh failed."""
        return self.status != FAILED

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field.

        Returns:
            The outcome as a dict.
        """
        return {
            "archive": str(self.archive),
            "status": self.status,
            "base_generation": self.base_generation,
            "generation": self.generation,
            "error_code": self.error_code,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
            "entry": self.entry,
            "fuel_used": self.fuel_used,
            "requests": self.requests,
            "egress_errors": list(self.egress_errors),
            "egress": [dict(e) for e in self.egress],
            "payload_size": self.payload_size,
            "sandbox": self.sandbox,
            "guest_log": list(self.guest_log),
        }


def run_refresh(
    path: str | os.PathLike[str],
    runtime: GuestRuntime,
    *,
    base_generation: int | None = None,
    heartbeat: Callable[[], None] | None = None,
    store: str | os.PathLike[str] | None = None,
) -> RefreshOutcome:
    """Refresh one archive now.

    Args:
        path: The archive.
        runtime: The process's guest runtime.
        base_generation: The generation the request was made for; a newer archive is left alone.
        heartbeat: Called about once a second while the guest runs.
        store: The store ``path`` is in (both with symlinks resolved, as ``broker.contract.archive_path``
            gives them): the archive's folder is then opened from there without following a symlink and the
            whole refresh, read to commit, goes through that folder (``sync_format.beneath``), so that a
            folder replaced by a symlink meanwhile cannot lead the commit out of the store.

    Returns:
        The outcome (failures included).
    """
    started = time.monotonic()
    archive = Path(path)
    try:
        with contextlib.nullcontext(archive) if store is None else pinned(store, archive) as reached:
            outcome = replace(_refresh(reached, runtime, base_generation, heartbeat), archive=archive)
    except SyncError as exc:
        generation = -1 if base_generation is None else base_generation
        outcome = RefreshOutcome(archive, FAILED, generation, generation, exc.code, exc.message)
    outcome = _with_duration(outcome, started)
    log.info(
        "refresh done archive=%s status=%s generation=%d error=%s duration_ms=%.1f",
        escape_text(str(archive), 1000),
        outcome.status,
        outcome.generation,
        outcome.error_code,
        outcome.duration_ms,
    )
    return outcome


def _with_duration(outcome: RefreshOutcome, started: float) -> RefreshOutcome:
    return replace(outcome, duration_ms=(time.monotonic() - started) * 1000)


def _refresh(
    archive: Path,
    runtime: GuestRuntime,
    base_generation: int | None,
    heartbeat: Callable[[], None] | None,
) -> RefreshOutcome:
    # Never through a symlink as the name: the store's key was resolved to a real file (archive_path), and
    # the commit refuses one too (a link put there meanwhile could lead to an archive only we may read).
    with open_archive(archive, follow_symlinks=False) as snap:
        generation = snap.generation
        if base_generation is not None and generation > base_generation:
            return RefreshOutcome(archive, ALREADY_FRESH, base_generation, generation)
        if snap.manifest.is_vault:
            denied = PolicyDenied(
                "vault archives are not refreshed: the guest would see ciphertext", rule="vault"
            )
            return RefreshOutcome(archive, FAILED, generation, generation, denied.code, denied.message)
        try:
            wasm = snap.read_wasm()
            if wasm is None or wasm == EMPTY_WASM:
                return RefreshOutcome(archive, NO_UPDATE_LOGIC, generation, generation)
            result = execute_guest(snap, wasm, runtime, heartbeat=heartbeat)
        except SyncError as exc:  # the generation is known from here on: report it
            return RefreshOutcome(archive, FAILED, generation, generation, exc.code, exc.message)
    try:
        return _finish(archive, generation, result)
    finally:
        result.close()


def execute_guest(
    snap: ArchiveSnapshot,
    wasm: bytes,
    runtime: GuestRuntime,
    *,
    allow_hosts: tuple[str, ...] | None = None,
    heartbeat: Callable[[], None] | None = None,
    requester: Requester | None = None,
) -> SandboxOutcome:
    """Run an archive's guest in a fresh confined child without committing anything.

    Args:
        snap: The open archive (its manifest and payload are used).
        wasm: Its ``sync.wasm`` bytes.
        runtime: The process's guest runtime.
        allow_hosts: Hosts the guest may reach; the manifest's ``allow_hosts`` when None.
        heartbeat: Called about once a second while the guest runs.
        requester: Answers the guest's requests instead of real egress (``syncctl guest test``).

    Returns:
        The sandbox outcome (the staged payload, if any, must be closed by the caller).

    Raises:
        PolicyDenied: The payload is over the guest payload limit.
        GuestTrap: The module does not compile.
    """
    limits = runtime.limits_for(snap.manifest)
    if snap.payload_size > limits.max_payload_size:
        raise PolicyDenied(
            f"payload of {snap.payload_size} bytes is over the guest limit of {limits.max_payload_size}",
            rule="max_payload_size",
        )
    module, module_key = runtime.modules.load_keyed(wasm)
    job = ChildJob(
        engine=runtime.engine,
        module=module,
        payload=snap.read_payload(),
        limits=limits,
        policy=runtime.policy_for(limits),
        seccomp_program=runtime.seccomp_program,
        context=snap.read_context() or b"",
        module_key=module_key,
    )
    egress = runtime.egress_for(snap.manifest, limits)
    if allow_hosts is not None:
        egress = replace(egress, allow_hosts=allow_hosts)
    grants = Grants(
        tuple(snap.manifest.permissions.allow_env),
        runtime.settings.guest_secrets,
        runtime.settings.guest_secret_hosts,
    )
    return run_in_sandbox(
        job,
        egress,
        heartbeat=heartbeat,
        resolver=runtime.resolver,
        grants=grants,
        requester=requester,
        spare=runtime.spare,
        zygote=runtime.zygote,
    )


def _finish(archive: Path, generation: int, result: SandboxOutcome) -> RefreshOutcome:
    common: dict[str, Any] = {
        "entry": result.entry,
        "fuel_used": result.fuel_used,
        "requests": result.requests,
        "egress_errors": tuple(result.egress_errors),
        "egress": tuple(result.egress),
        "sandbox": None if result.report is None else result.report.to_json(),
        "guest_log": tuple(result.log),
    }
    if result.error is not None:
        return RefreshOutcome(
            archive, FAILED, generation, generation, result.error.code, result.error.message, **common
        )
    if result.new_payload is None:
        return RefreshOutcome(archive, UNCHANGED, generation, generation, **common)
    try:
        committed = commit_payload(archive, generation, (result.new_payload, result.new_payload_size))
    except SwapConflict as exc:
        return RefreshOutcome(
            archive, FAILED, generation, exc.actual_generation, exc.code, exc.message, **common
        )
    return RefreshOutcome(
        archive,
        COMMITTED,
        generation,
        committed.generation,
        payload_size=result.new_payload_size,
        **common,
    )
