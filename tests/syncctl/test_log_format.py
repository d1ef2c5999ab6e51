"""``syncctl --log-format json``: each stderr line is one JSON object with ts, level, logger, event, pairs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from syncctl.log_format import JsonFormatter, parse_pairs

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m syncctl`` with the repository importable and extra environment."""
    full = dict(os.environ)
    full.pop("SYNC_LOG_FORMAT", None)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full.get("PYTHONPATH", "")) if p)
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        check=False,
        timeout=120,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line decoded as a JSON object (fails on the first line that is not one)."""
    docs = []
    for line in stderr.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


@pytest.mark.parametrize("how", ["flag", "env"])
def test_run_logs_one_json_object_per_line(archive: Path, how: str) -> None:
    """``syncctl -v run`` with JSON logs (flag or SYNC_LOG_FORMAT) writes only JSON lines on stderr, the
    refresh event among them with its pairs as typed fields."""
    if how == "flag":
        result = run_cli("--log-format", "json", "-v", "run", archive)
    else:
        result = run_cli("-v", "run", archive, SYNC_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    docs = json_lines(result.stderr)
    [done] = [d for d in docs if d["event"].startswith("refresh done")]
    assert (done["level"], done["logger"]) == ("INFO", "workers.refresh")
    assert (done["archive"], done["status"], done["generation"]) == (str(archive), "no_update_logic", 0)
    assert isinstance(done["duration_ms"], float)
    stamp = datetime.fromisoformat(done["ts"])
    assert done["ts"].endswith("Z")
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_text_stays_the_default(archive: Path) -> None:
    """Without the flag or the variable the lines are the text format."""
    result = run_cli("-v", "run", archive)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("INFO workers.refresh: refresh done") for line in result.stderr.splitlines())


def test_an_unknown_log_format_is_one_error(archive: Path) -> None:
    """An unknown SYNC_LOG_FORMAT exits 1 with one error line naming the variable."""
    result = run_cli("inspect", archive, SYNC_LOG_FORMAT="xml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: SYNC_LOG_FORMAT must be one of text, json, not 'xml'"]


def test_pairs_are_parsed_into_typed_fields() -> None:
    """Bare, quoted, integer and decimal values become fields; fixed field names are never overwritten."""
    fields = parse_pairs(
        "request refused reason=host host='evil.example' n=3 t=0.5 level=x url=http://a/b?c=d"
    )
    assert fields == {"reason": "host", "host": "evil.example", "n": 3, "t": 0.5, "url": "http://a/b?c=d"}


def test_a_traceback_stays_on_one_line() -> None:
    """A record with exc_info becomes one line whose exc_info field holds the traceback."""
    try:
        int("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "job failed job=%s\nsecond line", ("j1",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["job"] == "j1"
    assert doc["event"] == "job failed job=j1\nsecond line"
    assert "ValueError: invalid literal" in doc["exc_info"]
