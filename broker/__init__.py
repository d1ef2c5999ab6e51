"""The queue contract shared by producers (mountd) and consumers (workers).

Its contents arrive with the refresh-pipeline issue: task names and queues, the refresh request codec, the
Celery app factory, the one-refresh-per-archive claim, ``request_refresh`` and refresh status records. The
package exists now so that the dependency direction ``syncctl → {mountd, workers} → broker → sync_format`` is
fixed from the start.
"""

from __future__ import annotations

__all__: list[str] = []
