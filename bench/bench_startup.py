"""Start-up of the archive commands, next to importing the format library, measured in the same run.

Each case runs as a fresh interpreter, as a person runs it; cases are interleaved so that drift on a busy
machine affects them alike, and the median wall time of ``--runs`` runs is reported:

- ``python -c pass`` (the interpreter alone, the floor);
- ``python -c "import sync_format"`` (the library every archive command needs);
- ``python -m syncctl inspect ARCHIVE`` and ``python -m syncctl verify ARCHIVE``, on a small archive;
- ``python -c "import celery, redis"`` (what the commands used to load, for scale).

The last rows say which service libraries the archive commands load (none is the goal; read from
``sys.modules`` of a child that runs the command) and how much ``inspect`` adds to importing
``sync_format``. Run ``python bench/bench_startup.py [--runs N]``; figures go to stdout, the exit status is 0
whenever the benchmark itself ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sync_format.testing import make_archive

SERVICE_LIBRARIES = ("celery", "kombu", "redis", "wsgidav", "cheroot", "wasmtime")

_LOADED = """
import json, sys
from syncctl.main import main
main(sys.argv[1:])
print(json.dumps([m for m in {libs!r} if m in sys.modules]), file=sys.stderr)
"""


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _loaded(command: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED.format(libs=SERVICE_LIBRARIES), *command],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return loaded


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per case [15]")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sync-bench-startup-"))
    try:
        archive = work / "report.sync"
        make_archive(archive)
        py = sys.executable
        cases = {
            "python -c pass": [py, "-c", "pass"],
            'python -c "import sync_format"': [py, "-c", "import sync_format"],
            "syncctl inspect ARCHIVE": [py, "-m", "syncctl", "inspect", str(archive)],
            "syncctl verify ARCHIVE": [py, "-m", "syncctl", "verify", str(archive)],
            'python -c "import celery, redis"': [py, "-c", "import celery, redis"],
        }
        for command in cases.values():  # warm the page cache and .pyc files
            _wall(command)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, command in cases.items():
                times[name].append(_wall(command))
        loaded = {
            "inspect": _loaded(["inspect", str(archive)]),
            "verify": _loaded(["verify", str(archive)]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    base = med['python -c "import sync_format"']
    rows = []
    for name, values in times.items():
        spread = f"min {min(values) * 1000:,.0f}, max {max(values) * 1000:,.0f}"
        rows.append((name, f"median {med[name]:,.0f} ms ({spread})", "", ""))
    inspect = med["syncctl inspect ARCHIVE"]
    rows.append(
        (
            "syncctl inspect / import sync_format",
            f"{inspect / base:.2f}x ({inspect - base:+,.0f} ms)",
            "",
            "",
        )
    )
    for which, libs in loaded.items():
        rows.append(
            (
                f"service libraries loaded by syncctl {which}",
                ", ".join(libs) or "none",
                "none",
                "yes" if not libs else "NO",
            )
        )
    headers = ("benchmark", "result", "goal", "met")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"syncctl start-up  python {sys.version.split()[0]}  {args.runs} runs per case, interleaved")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
