"""``workers.metrics.exposition`` merges the pool processes' files even while one is being created.

A pool process creates its multiprocess file empty and sizes it a moment later; prometheus_client's own
collector failed on such a file, and ``/metrics`` dropped the connection without an answer (seen as a flaky
``test_worker_metrics`` under load).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workers.metrics import exposition

_WRITER = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter, values
values.ValueClass = values.MultiProcessValue()
Counter("sync_test_things", "Things counted by a pool process.", registry=None).inc(3)
"""


def _written_by_a_process(directory: Path) -> None:
    subprocess.run([sys.executable, "-c", _WRITER, str(directory)], check=True, timeout=60)


def test_an_empty_file_of_a_starting_process_is_skipped(tmp_path: Path) -> None:
    _written_by_a_process(tmp_path)
    (tmp_path / "counter_999999.db").touch()  # a pool process that has just created its file

    page = exposition(tmp_path).decode()

    assert "sync_test_things_total 3.0" in page
