"""The contract shared by producers (mountd) and consumers (workers): settings now; the queue contract next.

The refresh-pipeline issue adds task names and queues, the refresh request codec, the Celery app factory,
the one-refresh-per-archive claim, ``request_refresh`` and refresh status records. ``Settings`` lives here
because both sides of the queue are configured by it.
"""

from __future__ import annotations

from broker.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError"]
