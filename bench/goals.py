"""Goal verdicts that benchmarks hand to ``bench/report.py`` for the summary at the top of the report.

Why: each benchmark prints its own tables, and ``report.py`` copies them verbatim; the goals the project is
held to (issue 15's table) are spread over five of them. A benchmark calls ``record`` for each goal it
measures; when ``report.py`` runs it, ``SYNC_BENCH_GOALS`` names a file and each verdict is appended to it
as one JSON line, which ``report.py`` turns into one table ("Goals") in ``docs/benchmarks.md``. Run by hand,
a benchmark records nothing and prints exactly what it printed before.

Invariants:
    * Recording never changes what a benchmark prints or measures, and never fails it: an unwritable goals
      file is reported on stderr and ignored.
    * A verdict says what was compared with what, in the same run: ``figure`` is the measured value as
      shown (``"0.42x rclone (1,228 vs 4,041 req/s)"``), ``goal`` the target as shown (``">= 0.7x"``),
      ``met`` the comparison made by the benchmark itself (``None`` when it could not be measured).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

#: Environment variable naming the JSON-lines file verdicts are appended to (set by ``report.py``).
GOALS_ENV = "SYNC_BENCH_GOALS"


def record(key: str, what: str, figure: str, goal: str, met: bool | None, *, bench: str = "") -> None:
    """Append one verdict to the goals file, when ``report.py`` asked for it.

    Args:
        key: Stable identifier, ordering the summary (``"15.01-first-propfind"``).
        what: What is measured, as a reader would say it.
        figure: The measured value, with its same-run baseline where there is one.
        goal: The target, as text.
        met: Whether the goal was met; ``None`` when the figure could not be measured.
        bench: The benchmark's name (defaults to the running script's).
    """
    target = os.environ.get(GOALS_ENV)
    if not target:
        return
    row: dict[str, Any] = {
        "key": key,
        "what": what,
        "figure": figure,
        "goal": goal,
        "met": met,
        "bench": bench or Path(sys.argv[0]).stem,
    }
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    except OSError as exc:
        print(f"goals: could not record {key}: {exc}", file=sys.stderr)


def read(path: Path) -> list[dict[str, Any]]:
    """The verdicts recorded in ``path``, sorted by key (later duplicates of a key win)."""
    rows: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            rows[row["key"]] = row
    return [rows[key] for key in sorted(rows)]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The verdicts as a Markdown table."""
    lines = ["| goal | measured (same run) | target | met | from |", "|---|---|---|---|---|"]
    for row in rows:
        met = row.get("met")
        verdict = "not measured" if met is None else ("met" if met else "**NO**")
        cells = [row.get("what", ""), row.get("figure", ""), row.get("goal", ""), verdict]
        cells.append(row.get("bench", ""))
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return lines
