"""A freshness hook for tests that records every call (``mountd.FreshnessHook``)."""

from __future__ import annotations

import threading


class RecordingHook:
    """Records ``(archive, generation, timeout)`` of every ``on_stale`` call, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Record the call."""
        with self._lock:
            self.calls.append((archive, generation, timeout))
