"""Do archives stay fresh with nobody reading? The method of issue 16, as a new user would try it.

For each row of the grid (archives x TTL x workers): a store of N archives whose guest
(``bench/counter_guest.wat``) rewrites its payload at once, with expiries spread evenly over one TTL; then
``syncctl serve STORE --port 0 --workers W`` (embedded broker, local workers, the refresh scheduler) and
nobody reading. After a warm-up (the workers boot), the expiry of every archive is read from disk once a
second for the row's duration (``lstat`` each second; an archive whose file changed is opened again).

Reported per row:
    * demand: N / TTL refreshes per second needed to keep every archive fresh;
    * refreshes/s: generations committed per second during the measurement;
    * expired: the share of (archive, second) samples in which the archive was expired;
    * longest: the longest run of consecutive expired samples of one archive, in seconds (a run of one
      sample counts as 1 s; 0: never seen expired);
    * gap max: the longest time between two refreshes of one archive, as a multiple of the TTL (k), over
      archives refreshed at least twice; "never" counts archives not refreshed at all during the
      measurement (an open-ended gap, which matters for the overload rows);
    * oldest first: of the R archives refreshed during the measurement, the share that were among the R
      whose first expiry came earliest (100 %: strictly oldest due first, nobody overtaken; starvation
      would show as refreshes going to archives that were due later) — the no-starvation evidence of a
      row too big for a whole cycle;
    * lag: mean and max seconds past expiry at commit, from mountd's refresh-lag histogram;
    * walk CPU: CPU per walk of the store by the scheduler (``/metrics``): the first walk (every archive
      opened once) / the later ones (answered from the index).

Run ``python bench/bench_freshness.py [--quick] [--rows N:TTL:W:SECONDS ...]``. The default grid is the
issue's four rows, one of them with one worker, 10,000 archives at TTL 600 s and at TTL 60 s (overload with
two workers), and 500 archives at TTL 10 s (overload whose cycle N / capacity fits in the measurement, so
the longest gap between two refreshes of one archive shows k of "refreshed at least every k x TTL"). The big
rows measure for fewer seconds than several TTLs (the "measured" column): the 10,000-archive overload row
shows throughput and walk cost, not a full cycle. Stores live in a temp directory that
is removed at the end; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from sync_format import open_archive
from sync_format.freshness import format_timestamp, now_ns
from sync_format.testing import make_archive, make_manifest

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "bench" / "counter_guest.wat"
NS = 1_000_000_000
#: Distinct expiry phases per store (archives are copies of this many templates).
PHASES = 60
#: Seconds between the server's start and the measurement (workers boot, first walk).
WARMUP = 12.0
METRICS_PATH = "/.well-known/sync/metrics"


@dataclass(frozen=True)
class Row:
    """One configuration: archives, TTL (s), local workers, measured seconds."""

    archives: int
    ttl: int
    workers: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Row:
        """``N:TTL:W:SECONDS``."""
        n, ttl, workers, seconds = (int(part) for part in text.split(":"))
        return cls(n, ttl, workers, seconds)


FULL = (
    Row(20, 10, 2, 40),
    Row(150, 10, 2, 40),
    Row(150, 10, 1, 40),
    Row(50, 30, 2, 45),
    Row(150, 30, 2, 45),
    Row(10_000, 600, 2, 30),
    Row(10_000, 60, 2, 90),
    Row(500, 10, 2, 90),
)
QUICK = (Row(20, 10, 2, 20), Row(150, 10, 2, 20), Row(1000, 60, 2, 30))


def build_store(store: Path, row: Row, wasm: bytes, start_ns: int) -> list[Path]:
    """N archives whose expiries fall evenly over one TTL from ``start_ns`` on (copies of the templates)."""
    store.mkdir(parents=True)
    templates = []
    for phase in range(min(PHASES, row.archives)):
        offset = row.ttl * NS * phase // min(PHASES, row.archives)
        created = format_timestamp((start_ns + offset - row.ttl * NS) // NS * NS)
        path = store.parent / f"template-{phase}.sync"
        manifest = make_manifest(
            content_type="text/plain", display_ext="txt", ttl=row.ttl, created_at=created
        )
        make_archive(path, b"00000000\n", manifest=manifest, wasm=wasm)
        templates.append(path)
    paths = []
    for i in range(row.archives):
        path = store / f"c{i:05d}.txt.sync"
        shutil.copyfile(templates[i % len(templates)], path)
        paths.append(path)
    return paths


class Watcher:
    """Reads every archive's expiry and generation from disk, reopening only files that changed."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.known: dict[Path, tuple[tuple[int, int], int | None, int]] = {}

    def sample(self) -> list[tuple[int | None, int]]:
        """(expiry ns, generation) of each archive now."""
        found = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                found.append((None, -1))
                continue
            identity = (st.st_ino, st.st_mtime_ns)
            known = self.known.get(path)
            if known is None or known[0] != identity:
                with open_archive(path) as snapshot:
                    known = (identity, snapshot.expiry().at_ns, snapshot.generation)
                self.known[path] = known
            found.append((known[1], known[2]))
        return found


def metrics(url: str) -> dict[str, float]:
    """The unlabelled samples of mountd's /metrics page."""
    with urllib.request.urlopen(url + METRICS_PATH, timeout=10) as response:  # noqa: S310  (loopback)
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def measure(row: Row, workdir: Path, wasm: bytes) -> dict[str, str]:
    """Run one row; its figures as table cells."""
    store = workdir / "store"
    start = now_ns() + int(WARMUP * NS)
    paths = build_store(store, row, wasm, start)
    env = {**os.environ, "SYNC_CACHE_DIR": str(workdir / "cache")}
    env.pop("SYNC_BROKER_URL", None)
    command = [
        sys.executable,
        "-m",
        "syncctl",
        "serve",
        str(store),
        "--port",
        "0",
        "--workers",
        str(row.workers),
    ]
    with (workdir / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("serving "):
                raise SystemExit(f"serve failed: {line}{(workdir / 'serve.log').read_text()[-2000:]}")
            url = line.split(" at ")[1].split(" ", maxsplit=1)[0]
            watcher = Watcher(paths)
            time.sleep(max(0.0, (start - now_ns()) / NS))
            warm = metrics(url)
            first = watcher.sample()
            first_expiry = [at if at is not None else 0 for at, _ in first]
            generations = [g for _, g in first]
            last_change = [time.monotonic()] * len(paths)
            first_change: list[float | None] = [None] * len(paths)
            gaps = [0.0] * len(paths)
            runs = [0] * len(paths)
            longest = expired = samples = refreshes = 0
            began = time.monotonic()
            tick = began
            while time.monotonic() - began < row.seconds:
                tick += 1.0
                time.sleep(max(0.0, tick - time.monotonic()))
                now = now_ns()
                moment = time.monotonic()
                for i, (at, generation) in enumerate(watcher.sample()):
                    if generation > generations[i]:
                        refreshes += generation - generations[i]
                        if first_change[i] is not None:
                            gaps[i] = max(gaps[i], moment - last_change[i])
                        else:
                            first_change[i] = moment
                        last_change[i] = moment
                        generations[i] = generation
                    samples += 1
                    if at is None or now > at:
                        expired += 1
                        runs[i] += 1
                        longest = max(longest, runs[i])
                    else:
                        runs[i] = 0
            elapsed = time.monotonic() - began
            scraped = metrics(url)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
            if server.stdout is not None:
                server.stdout.close()
    walks0 = warm.get("sync_mountd_scheduler_walks_total", 0.0)
    cpu0 = warm.get("sync_mountd_scheduler_walk_cpu_seconds_total", 0.0)
    walks = scraped.get("sync_mountd_scheduler_walks_total", 0.0) - walks0
    cpu = scraped.get("sync_mountd_scheduler_walk_cpu_seconds_total", 0.0) - cpu0
    refreshed = [i for i, f in enumerate(first_change) if f is not None]
    cutoff = sorted(first_expiry)[len(refreshed) - 1] if refreshed else 0
    oldest = sum(1 for i in refreshed if first_expiry[i] <= cutoff)
    lag_count = scraped.get("sync_mountd_refresh_lag_seconds_count", 0.0)
    lag_sum = scraped.get("sync_mountd_refresh_lag_seconds_sum", 0.0)
    never = sum(1 for f in first_change if f is None)
    twice = [gap for gap in gaps if gap > 0]
    return {
        "archives": f"{row.archives:,}",
        "TTL": f"{row.ttl} s",
        "workers": str(row.workers),
        "measured": f"{elapsed:.0f} s",
        "demand": f"{row.archives / row.ttl:.1f}/s",
        "refreshes": f"{refreshes / elapsed:.1f}/s",
        "expired": f"{100 * expired / max(samples, 1):.2f} %",
        "longest": f"{longest} s",
        "gap max": f"{max(twice) / row.ttl:.2f} TTL" if twice else "-",
        "never": f"{never:,}",
        "oldest first": f"{100 * oldest / len(refreshed):.0f} %" if refreshed else "-",
        "lag mean/max": f"{lag_sum / lag_count:.2f} / {lag_max(scraped):g} s" if lag_count else "-",
        "walk CPU first/later": (f"{1000 * cpu0 / walks0:.0f} / " if walks0 else "- / ")
        + (f"{1000 * cpu / walks:.0f} ms" if walks else "- ms"),
    }


def lag_max(scraped: dict[str, float]) -> float:
    """The smallest histogram bound holding every observed lag (an upper bound of the max)."""
    total = scraped.get("sync_mountd_refresh_lag_seconds_count", 0.0)
    bounds = []
    for key, value in scraped.items():
        match = re.match(r'^sync_mountd_refresh_lag_seconds_bucket\{le="([^"]+)"\}$', key)
        if match and match.group(1) != "+Inf" and value >= total:
            bounds.append(float(match.group(1)))
    return min(bounds) if bounds else float("inf")


def main(argv: list[str] | None = None) -> int:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid (checks the tool, not figures)")
    parser.add_argument("--rows", nargs="+", type=Row.parse, metavar="N:TTL:W:SECONDS", help="rows to run")
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK if args.quick else FULL)
    wasm = bytes(wasmtime.wat2wasm(GUEST.read_text()))
    results = []
    for row in rows:
        with tempfile.TemporaryDirectory(prefix="bench-freshness-") as workdir:
            results.append(measure(row, Path(workdir), wasm))
        print(f"# done {row}", file=sys.stderr, flush=True)
    header = list(results[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results:
        print("| " + " | ".join(result[h] for h in header) + " |")
    print()
    print(
        "expired: share of (archive, second) samples expired; longest: most consecutive expired samples of"
        " one archive; gap max: longest time between two refreshes of one archive (archives refreshed at"
        " least twice); never: archives not refreshed during the measurement; oldest first: share of the"
        " refreshed archives that were among the earliest due; lag: seconds past expiry at commit (max:"
        " histogram bound); walk CPU: scheduler CPU per walk of the store, first walk / later walks."
    )
    print(
        f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} ({os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
