"""Confinement as data: which layers a guest's child process gets, their limits, and what was applied.

A ``SandboxPolicy`` lists the layers and limits; ``confine.apply.apply_policy`` applies them in a fixed order
inside the child and returns a ``SandboxReport`` saying which layers are active, the Landlock ABI, and why a
layer is missing. ``strict`` mode refuses to run a guest when any listed layer is missing; ``permissive``
runs it and the report says loudly what is missing (CONTRIBUTING.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Layer(StrEnum):
    """Confinement layers, in the order they are applied."""

    NO_NEW_PRIVS = "no_new_privs"
    NETNS = "netns"
    RLIMITS = "rlimits"
    LANDLOCK = "landlock"
    SECCOMP = "seccomp"


#: Every layer, in application order.
ALL_LAYERS: tuple[Layer, ...] = tuple(Layer)


class SandboxMode(StrEnum):
    """What to do when a layer cannot be applied."""

    STRICT = "strict"
    PERMISSIVE = "permissive"


#: Address space the confined child may add to what it inherited from its parent, in bytes: linear memories
#: (256 MiB reserved each, two per store, plus guards), wasmtime's instance data, the new payload and the
#: channel's buffers. It is headroom, not a total: a forked child inherits its parent's whole address space
#: (a Celery worker or a test runner may map gigabytes), and an absolute limit would fail guests at random.
DEFAULT_ADDRESS_SPACE = 1536 * 1024 * 1024
#: CPU seconds before the kernel sends SIGXCPU; a backstop behind fuel and the parent's deadline.
DEFAULT_CPU_SECONDS = 60
#: File descriptors the child may open beyond the highest one it inherited (it opens none after confinement;
#: Landlock needs one while applying its ruleset).
DEFAULT_OPEN_FILES = 64
#: Largest file the child may write, in bytes: it writes none.
DEFAULT_FILE_SIZE = 0


@dataclass(frozen=True)
class Rlimits:
    """Resource limits for the child (each applied as soft = hard).

    Attributes:
        address_space: Address space in bytes the child may add beyond what it maps when the limit is
            applied (RLIMIT_AS = mapped + this).
        cpu_seconds: RLIMIT_CPU in seconds.
        open_files: RLIMIT_NOFILE.
        file_size: RLIMIT_FSIZE in bytes.
        core: RLIMIT_CORE in bytes (0: no core dumps).
        processes: RLIMIT_NPROC (ignored for root by the kernel; seccomp forbids new processes anyway).
    """

    address_space: int = DEFAULT_ADDRESS_SPACE
    cpu_seconds: int = DEFAULT_CPU_SECONDS
    open_files: int = DEFAULT_OPEN_FILES
    file_size: int = DEFAULT_FILE_SIZE
    core: int = 0
    processes: int = 0


@dataclass(frozen=True)
class SandboxPolicy:
    """The layers and limits one guest's child process gets.

    Attributes:
        mode: ``strict`` or ``permissive``.
        layers: Layers to apply (always in ``ALL_LAYERS`` order).
        rlimits: Resource limits.
        read_only_paths: Paths Landlock leaves readable (none by default: the child needs no files).
    """

    mode: SandboxMode = SandboxMode.STRICT
    layers: tuple[Layer, ...] = ALL_LAYERS
    rlimits: Rlimits = field(default_factory=Rlimits)
    read_only_paths: tuple[str, ...] = ()

    def with_cpu_seconds(self, seconds: int) -> SandboxPolicy:
        """Copy with another CPU limit (derived from the guest's timeout).

        Args:
            seconds: RLIMIT_CPU in seconds.

        Returns:
            The copy.
        """
        from dataclasses import replace  # noqa: PLC0415  (kept local: only used here)

        return replace(self, rlimits=replace(self.rlimits, cpu_seconds=max(1, seconds)))


@dataclass(frozen=True)
class LayerStatus:
    """Whether one layer is active in the child.

    Attributes:
        layer: The layer.
        active: True when applied.
        detail: What was applied (e.g. ``ABI 7, fs+net+scope``).
        reason: Why it is not active.
        errno: The OS error that made it unavailable, when there is one.
    """

    layer: Layer
    active: bool
    detail: str = ""
    reason: str | None = None
    errno: int | None = None


@dataclass(frozen=True)
class SandboxReport:
    """What confinement achieved in one child.

    Attributes:
        statuses: One status per layer the policy listed, in application order.
        landlock_abi: The kernel's Landlock ABI version, or None when unavailable.
    """

    statuses: tuple[LayerStatus, ...]
    landlock_abi: int | None = None

    @property
    def active_layers(self) -> tuple[Layer, ...]:
        """Layers that are active."""
        return tuple(s.layer for s in self.statuses if s.active)

    @property
    def missing(self) -> tuple[LayerStatus, ...]:
        """Statuses of layers that are not active."""
        return tuple(s for s in self.statuses if not s.active)

    @property
    def complete(self) -> bool:
        """True when every listed layer is active."""
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        """Encode for the channel and for job results.

        Returns:
            A JSON-ready dict.
        """
        return {
            "landlock_abi": self.landlock_abi,
            "layers": [
                {
                    "layer": s.layer.value,
                    "active": s.active,
                    "detail": s.detail,
                    "reason": s.reason,
                    "errno": s.errno,
                }
                for s in self.statuses
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SandboxReport:
        """Decode what ``to_json`` produced.

        Args:
            doc: The dict.

        Returns:
            The report.

        Raises:
            ValueError: The document is not a report.
        """
        try:
            statuses = tuple(
                LayerStatus(
                    layer=Layer(item["layer"]),
                    active=bool(item["active"]),
                    detail=str(item.get("detail", "")),
                    reason=item.get("reason"),
                    errno=item.get("errno"),
                )
                for item in doc["layers"]
            )
            abi = doc.get("landlock_abi")
            return cls(statuses=statuses, landlock_abi=None if abi is None else int(abi))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a sandbox report: {exc}") from exc
