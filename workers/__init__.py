"""Everything that executes guests: the wasmtime engine and host ABI, the sandbox, and the refresh pipeline.

``run_refresh`` is the one refresh path (``syncctl run`` now, the Celery task next); ``GuestSession`` is the
reference's runtime API over the same engine and sandbox. Confinement lives in ``workers.confine``.
"""

from __future__ import annotations

from workers.egress import Egress, EgressPolicy, HttpResult
from workers.engine import GuestLimits, make_engine
from workers.module_cache import ModuleCache, UnsafeCacheDirectory
from workers.refresh import RefreshOutcome, execute_guest, run_refresh
from workers.runtime import GuestRuntime
from workers.session import (
    GuestAction,
    GuestMode,
    GuestPermissions,
    GuestResponse,
    GuestRole,
    GuestSession,
    NoChange,
    UpdatePayload,
    WidgetBounds,
)
from workers.supervisor import SandboxOutcome, run_in_sandbox

__all__ = [
    "Egress",
    "EgressPolicy",
    "GuestAction",
    "GuestLimits",
    "GuestMode",
    "GuestPermissions",
    "GuestResponse",
    "GuestRole",
    "GuestRuntime",
    "GuestSession",
    "HttpResult",
    "ModuleCache",
    "NoChange",
    "RefreshOutcome",
    "SandboxOutcome",
    "UnsafeCacheDirectory",
    "UpdatePayload",
    "WidgetBounds",
    "execute_guest",
    "make_engine",
    "run_in_sandbox",
    "run_refresh",
]
