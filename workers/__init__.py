"""Everything that executes guests: the wasmtime engine and host ABI, the sandbox, and the refresh pipeline.

``run_refresh`` is the one refresh path (``syncctl run`` and the Celery task in ``workers.tasks`` both call
it); ``GuestSession`` is the reference's runtime API over the same engine and sandbox. Confinement lives in
``workers.confine``. ``__all__`` lists what other packages and users use; the rest is reached through its
module (``workers.engine``, ``workers.supervisor``, ``workers.module_cache``...).
"""

from __future__ import annotations

from workers.egress import Egress, HttpResult
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

__all__ = [
    "Egress",
    "GuestAction",
    "GuestMode",
    "GuestPermissions",
    "GuestResponse",
    "GuestRole",
    "GuestRuntime",
    "GuestSession",
    "HttpResult",
    "NoChange",
    "RefreshOutcome",
    "UpdatePayload",
    "WidgetBounds",
    "execute_guest",
    "run_refresh",
]
