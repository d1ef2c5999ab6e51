"""The trivial task of ``bench_embedded_broker.py``: append its token to an execution log, nothing else.

It is registered under an explicit name on an app the caller built (there is no module-level app), so the
same module serves the embedded Redis run and the filesystem transport run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Name the task is registered and sent under.
TASK_NAME = "bench.record_execution"


def register(app: Any, log_path: Path) -> None:
    """Register the task on ``app``; each execution appends ``<token>\\n`` to ``log_path``.

    One ``write`` of a short line to a file opened with ``O_APPEND`` is atomic on a local filesystem, so
    concurrent pool processes never interleave lines.
    """

    @app.task(name=TASK_NAME)
    def record_execution(token: str) -> None:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)
