"""``outcome_beside_a_fifo``: run a call that must not wait on a FIFO, and say what it raised.

A call that opens a FIFO for reading without ``O_NONBLOCK`` blocks until a writer comes. The call runs in a
daemon thread; if it is still running after ``timeout`` seconds, a writer end is opened on the FIFO (which
lets the blocked ``open`` return) so that nothing stays stuck, and the test fails.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path


def outcome_beside_a_fifo(
    call: Callable[[], object], fifo: Path, timeout: float = 10.0
) -> BaseException | None:
    """Run ``call`` and return what it raised (None: it returned), after asserting it did not wait on
    ``fifo`` for ``timeout`` seconds."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    hung = thread.is_alive()
    if hung:  # blocked in open(): a writer end lets it return
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
    assert not hung, f"waited on the FIFO {fifo} for {timeout} s"
    assert len(outcome) == 1
    return outcome[0]
