"""``GuestSession``: the reference's runtime API (spec §6) over our engine and sandbox.

A session opens an archive and holds a role (``Consumer`` or ``Owner``), a mode (``Widget`` with bounds, or
``Headless``) and permission flags, and checks every action in the reference's order (role first, then the
flag). Where the reference falls short we are stricter (§9 D15, D16): writes also require the manifest's
``ownership.write_allowed``; the effective host grants are the session's grants that the manifest also
lists, and that list goes to the same egress policy the refresh pipeline uses, so there is one policy
engine. ``execute_wasm`` runs the guest in a fresh confined child (never an external host app) and returns
``UpdatePayload(bytes)`` or ``NoChange``; ``apply`` commits an update atomically, guarded by the generation
the guest read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from sync_format.builder import EMPTY_WASM
from sync_format.errors import GuestTrap, PolicyDenied
from sync_format.reader import open_archive
from sync_format.swap import CommitResult, commit_payload
from workers.confine import SandboxReport
from workers.refresh import execute_guest
from workers.runtime import GuestRuntime


class GuestAction(StrEnum):
    """Actions a session can be asked to perform (the reference's unit enum)."""

    READ_PAYLOAD = "ReadPayload"
    READ_CONTEXT = "ReadContext"
    WRITE_PAYLOAD = "WritePayload"
    WRITE_CONTEXT = "WriteContext"
    EXECUTE_WASM = "ExecuteWasm"
    UPDATE_PAYLOAD = "UpdatePayload"


class GuestRole(StrEnum):
    """Who the session acts for: only the owner may write or execute."""

    CONSUMER = "Consumer"
    OWNER = "Owner"


class GuestMode(StrEnum):
    """Where the guest's output goes: a widget (needs bounds) or nowhere visible."""

    WIDGET = "Widget"
    HEADLESS = "Headless"


@dataclass(frozen=True)
class WidgetBounds:
    """Widget placement; width and height must be positive."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise PolicyDenied("widget bounds must have positive width and height", rule="widget_bounds")


@dataclass
class GuestPermissions:
    """The session's flags and grants (reference defaults)."""

    can_read_payload: bool = True
    can_read_context: bool = True
    can_write_payload: bool = False
    can_write_context: bool = False
    can_execute_wasm: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_env: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UpdatePayload:
    """The guest composed a new payload."""

    data: bytes


@dataclass(frozen=True)
class NoChange:
    """The guest ran and wrote nothing."""


@dataclass(frozen=True)
class GuestResponse:
    """What ``execute_wasm`` returns.

    Attributes:
        action: ``UpdatePayload(bytes)`` or ``NoChange()``.
        base_generation: The generation whose payload the guest read.
        fuel_used: Fuel consumed.
        requests: HTTP requests made.
        sandbox: The child's confinement report.
    """

    action: UpdatePayload | NoChange
    base_generation: int
    fuel_used: int
    requests: int
    sandbox: SandboxReport | None


def _intersect(grants: list[str], manifest: tuple[str, ...]) -> list[str]:
    """Grants in the session's order that the manifest also lists (reference ``intersect_allowlist``)."""
    if not grants or not manifest:
        return []
    return [g for g in grants if g in manifest]


class GuestSession:
    """A permission-checked handle on one archive for one host application."""

    def __init__(self, path: str | os.PathLike[str], runtime: GuestRuntime) -> None:
        """Open the archive (strictly) and start as a consumer in widget mode.

        Args:
            path: The archive.
            runtime: The guest runtime that executes guests.

        Raises:
            ArchiveError: The archive does not open.
        """
        self.path = Path(path)
        self.runtime = runtime
        with open_archive(self.path) as snap:
            self._manifest = snap.manifest
        self.role = GuestRole.CONSUMER
        self.mode = GuestMode.WIDGET
        self.bounds: WidgetBounds | None = None
        self.permissions = GuestPermissions()

    def as_owner(self) -> GuestSession:
        """Act as the owner. Returns the session."""
        self.role = GuestRole.OWNER
        return self

    def as_consumer(self) -> GuestSession:
        """Act as a consumer (read-only). Returns the session."""
        self.role = GuestRole.CONSUMER
        return self

    def as_widget(self, bounds: WidgetBounds) -> GuestSession:
        """Widget mode with these bounds. Returns the session."""
        self.mode, self.bounds = GuestMode.WIDGET, bounds
        return self

    def as_headless(self) -> GuestSession:
        """Headless mode (clears widget bounds, unlike the reference). Returns the session."""
        self.mode, self.bounds = GuestMode.HEADLESS, None
        return self

    def grant_write_payload(self) -> GuestSession:
        """Allow payload writes (owner only). Returns the session."""
        self.permissions.can_write_payload = True
        return self

    def grant_wasm_execution(self) -> GuestSession:
        """Allow running the guest (owner only). Returns the session."""
        self.permissions.can_execute_wasm = True
        return self

    def revoke_wasm_execution(self) -> GuestSession:
        """Forbid running the guest. Returns the session."""
        self.permissions.can_execute_wasm = False
        return self

    def allow_host(self, host: str) -> GuestSession:
        """Grant a host (effective only if the manifest lists it too). Returns the session."""
        if host not in self.permissions.allowed_hosts:
            self.permissions.allowed_hosts.append(host)
        return self

    def allow_env_var(self, name: str) -> GuestSession:
        """Grant an environment variable (effective only if the manifest lists it). Returns the session."""
        if name not in self.permissions.allowed_env:
            self.permissions.allowed_env.append(name)
        return self

    def effective_permissions(self) -> GuestPermissions:
        """The session's flags with host and env grants intersected with the manifest's lists.

        Returns:
            A new permissions object.
        """
        p = self.permissions
        manifest = self._manifest.permissions
        return GuestPermissions(
            can_read_payload=p.can_read_payload,
            can_read_context=p.can_read_context,
            can_write_payload=p.can_write_payload,
            can_write_context=p.can_write_context,
            can_execute_wasm=p.can_execute_wasm,
            allowed_hosts=_intersect(p.allowed_hosts, manifest.allow_hosts),
            allowed_env=_intersect(p.allowed_env, manifest.allow_env),
        )

    def verify_permissions(self, action: GuestAction) -> None:
        """Check an action: role first, then the flag, then (for writes) the manifest's ``write_allowed``.

        Args:
            action: The action.

        Raises:
            PolicyDenied: The action is not allowed; ``rule`` names what refused it.
        """
        p = self.permissions
        owner_only = {
            GuestAction.WRITE_PAYLOAD: (p.can_write_payload, "write payload not allowed"),
            GuestAction.UPDATE_PAYLOAD: (p.can_write_payload, "write payload not allowed"),
            GuestAction.WRITE_CONTEXT: (p.can_write_context, "write context not allowed"),
            GuestAction.EXECUTE_WASM: (p.can_execute_wasm, "execute wasm not allowed"),
        }
        if action is GuestAction.READ_PAYLOAD:
            if not p.can_read_payload:
                raise PolicyDenied("read payload not allowed", rule="permission", archive=self.path)
            return
        if action is GuestAction.READ_CONTEXT:
            if not p.can_read_context:
                raise PolicyDenied("read context not allowed", rule="permission", archive=self.path)
            return
        if self.role is not GuestRole.OWNER:
            raise PolicyDenied("Owner context required", rule="role", archive=self.path)
        granted, denial = owner_only[action]
        if not granted:
            raise PolicyDenied(denial, rule="permission", archive=self.path)
        writes = (GuestAction.WRITE_PAYLOAD, GuestAction.UPDATE_PAYLOAD, GuestAction.WRITE_CONTEXT)
        if action in writes and not self._manifest.write_allowed:
            raise PolicyDenied(
                "the manifest does not allow writes (ownership.write_allowed = false)",
                rule="write_allowed",
                archive=self.path,
            )

    def _check_mode(self) -> None:
        if self.mode is GuestMode.WIDGET and self.bounds is None:
            raise PolicyDenied("widget bounds are required for widget mode", rule="widget_bounds")

    def execute_wasm(self) -> GuestResponse:
        """Run the archive's guest once in the sandbox; nothing is committed.

        Returns:
            ``UpdatePayload(bytes)`` when the guest composed a payload, else ``NoChange()``.

        Raises:
            PolicyDenied: Not allowed by role, flags or mode.
            GuestTrap: The archive has no update logic, or the guest failed (``GuestError`` subclasses).
        """
        self.verify_permissions(GuestAction.EXECUTE_WASM)
        self._check_mode()
        hosts = tuple(self.effective_permissions().allowed_hosts)
        with open_archive(self.path) as snap:
            wasm = snap.read_wasm()
            if wasm is None or wasm == EMPTY_WASM:
                raise GuestTrap("No entry point found: the archive has no update logic", archive=self.path)
            generation = snap.generation
            result = execute_guest(snap, wasm, self.runtime, allow_hosts=hosts)
        try:
            if result.error is not None:
                raise result.error
            if result.new_payload is None:
                action: UpdatePayload | NoChange = NoChange()
            else:
                action = UpdatePayload(result.new_payload.read())
        finally:
            result.close()
        return GuestResponse(action, generation, result.fuel_used, result.requests, result.report)

    def apply(self, response: GuestResponse) -> CommitResult | None:
        """Commit an ``UpdatePayload`` atomically if the archive is still at the generation the guest read.

        Args:
            response: What ``execute_wasm`` returned.

        Returns:
            The commit, or None for ``NoChange``.

        Raises:
            PolicyDenied: Writes are not allowed.
            SwapConflict: The archive changed since the guest read it.
        """
        if not isinstance(response.action, UpdatePayload):
            return None
        self.verify_permissions(GuestAction.UPDATE_PAYLOAD)
        return commit_payload(self.path, response.base_generation, response.action.data)
