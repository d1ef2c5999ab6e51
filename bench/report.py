"""Run every benchmark and write ``docs/benchmarks.md``: each one's table, and the machine it ran on.

``make bench`` runs this. Each benchmark is run as its own process, as a person would run it, and what it
prints is copied into the report verbatim under its name, with the command that reproduces it and how long
it took; nothing is re-measured or rounded here. A benchmark that fails is reported as failed (its exit
status and the end of its output) and the others still run, so one broken tool does not hide the rest.

Usage: ``python bench/report.py [--out docs/benchmarks.md] [--quick] [--only NAME ...]``. ``--quick`` passes
each benchmark its smaller settings (for checking that the report works, not for figures to quote).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import goals

ROOT = Path(__file__).resolve().parent.parent
#: Lines of a failed benchmark's output kept in the report.
FAILED_TAIL = 40


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments for a full and a quick run."""

    name: str
    what: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


BENCHES = (
    Bench(
        "bench_format",
        "format library: payload reads, snapshot opens, packing 5 GiB, commits",
        quick=("--payload-mib", "64", "--pack-gib", "0.25", "--opens", "300", "--commit-mib", "32"),
    ),
    Bench(
        "bench_startup",
        "start-up of syncctl inspect and verify next to importing sync_format",
        quick=("--runs", "5"),
    ),
    Bench("bench_confine", "cost of each sandbox layer per job", quick=("--runs", "30")),
    Bench(
        "bench_embedded_broker",
        "embedded broker vs kombu's filesystem transport: lost and duplicated tasks",
        quick=("--tasks", "200", "--rounds", "1"),
    ),
    Bench(
        "bench_pipeline",
        "refresh pipeline: latency, jobs/s with 1 and 2 workers, Redis round trips",
        quick=("--jobs", "100"),
    ),
    Bench(
        "bench_mountd",
        "mountd vs wsgidav, rclone and nginx: big GETs, small GETs, PROPFIND, RSS",
        quick=("--quick",),
    ),
    Bench("bench_auth", "what a login costs: scrypt checks and GET rates with remembered Basic logins"),
    Bench(
        "bench_integrity", "what checking payloads against their CRC-32 costs a first GET", quick=("--quick",)
    ),
    Bench(
        "soak_mountd",
        "mountd soak: 100 clients, two committers, 32 slowloris connections, 24 slow readers, oversized "
        "bodies, 60 s",
        quick=("--quick",),
    ),
    Bench(
        "bench_freshness",
        "freshness with nobody reading: `syncctl serve --workers W`, archives x TTL, expiry read from disk "
        "every second (issue 16's method)",
        quick=("--quick",),
    ),
)


def machine() -> list[str]:
    """What the figures came from: CPU, cores, memory, kernel, Python, date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {memory}",
        f"- kernel: {platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"- load average before the run: {load}",
    ]


def run(bench: Bench, *, quick: bool, goals_file: Path) -> list[str]:
    """Run one benchmark and return its section of the report; its goal verdicts go to ``goals_file``."""
    script = ROOT / "bench" / f"{bench.name}.py"
    args = bench.quick if quick else bench.full
    command = [sys.executable, str(script.relative_to(ROOT)), *args]
    shown = " ".join(["python", *command[1:]])
    print(f"== {shown}", flush=True)
    started = time.monotonic()
    env = {**os.environ, goals.GOALS_ENV: str(goals_file)}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    elapsed = time.monotonic() - started
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr[-4000:])
    lines = [f"## {bench.name}", "", bench.what + ".", "", f"`{shown}` ({elapsed:.0f} s)", ""]
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).splitlines()[-FAILED_TAIL:]
        lines += [
            f"**Failed** with exit status {done.returncode}; the end of its output:",
            "",
            "```",
            *tail,
            "```",
        ]
    else:
        lines += ["```", *done.stdout.rstrip().splitlines(), "```"]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the report; exit 1 when any failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report path")
    parser.add_argument(
        "--quick", action="store_true", help="small settings (checks the report, not figures)"
    )
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python bench/report.py`); each section is what one benchmark printed,",
        "with the command that reproduces it. Ratios compare against baselines measured in the same run;",
        "goals and methods are in `bench/README.md`. Figures on shared machines vary 10-25 % between runs.",
        "",
        "Machine:",
        "",
        *machine(),
        *(
            ["- **quick settings**: smaller sizes, for checking the report; do not quote these figures"]
            if args.quick
            else []
        ),
        "",
    ]
    sections: list[str] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="sync-bench-goals-") as scratch:
        goals_file = Path(scratch) / "goals.jsonl"
        for bench in chosen:
            section = run(bench, quick=args.quick, goals_file=goals_file)
            failed += any(line.startswith("**Failed**") for line in section)
            sections += section
        verdicts = goals.read(goals_file)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    header += [f"Load average at the end of the run: {load}.", ""]
    if verdicts:
        missed = sum(1 for row in verdicts if row.get("met") is not True)
        header += [
            "## Goals",
            "",
            "Each benchmark's own verdict against the goal it is held to (issue 15's table), from this run;"
            f" {len(verdicts) - missed} of {len(verdicts)} met. The sections below show how each was"
            " measured.",
            "",
            *goals.table(verdicts),
            "",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([*header, *sections]).rstrip() + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
