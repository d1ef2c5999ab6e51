"""A/B of mountd's big-GET cost: server CPU seconds per GB for two versions of the code, interleaved.

What it measures: bench_mountd's (a) row, made steadier for comparing two versions on a busy machine. A
store with one big payload (``--big-mib``, default 512 MiB) and a few small archives is built with
``bench_mountd.build_data``; ``mountd`` of this checkout (``new``) and of a git revision (``old``,
``--old REF``, default ``main``, exported with ``git archive`` and put first on ``PYTHONPATH``) are started
with ``bench_mountd.start_mountd``, and optionally the same bytes served by nginx (``bench_mountd``'s
configuration: ``sendfile on``), by rclone, and by ``minimal`` (``bench_mountd.serve_floor``, its sendfile
floor): a one-connection-at-a-time Python server whose whole body is one blocking ``os.sendfile`` loop.
Each round GETs the payload once from every server with ``curl -o /dev/null``, in alternating order, and
records per GET:

* ``tick``: utime + stime of the server's process tree from ``/proc/PID/stat`` (what bench_mountd reports;
  clock ticks, so one GET's figure is coarse);
* ``sched``: the run time of every thread of the process tree from ``/proc/PID/task/TID/schedstat``
  (nanoseconds; it includes softirq work done in the threads' context, as ``tick`` does);
* ``user``: the ``tick`` figure's user part; ``curl``: the client's own CPU per GB (on loopback the TCP
  work is shared between sender and receiver, so the two move together);
* MB/s.

On loopback the TCP work of a transfer is split between the sender's and the receiver's contexts
depending on where each runs; on a busy machine the split, and so the server's figure, moves by ±50 %
from run to run. ``--pin`` binds every server thread to CPU 0 and curl to CPU 1 (the quiet machine's
case, where the two run side by side), which makes the figures steady enough to compare versions.

Medians (and the ``tick`` mean) over ``--runs`` rounds are printed with the load average before and after.
Run ``.venv/bin/python bench/ab_sendfile.py [--old REF] [--runs 9] [--pin] [--with nginx,minimal,rclone]``.
Not run by ``make bench``; no goal (bench_mountd judges the goal).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, suppress
from pathlib import Path

import bench_mountd as bm

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
#: ``--pin``: the CPU every server thread is bound to, and curl's.
SERVER_CPU = 0
CLIENT_CPU = 1
#: What curl prints after a GET.
CURL_FORMAT = "%{size_download} %{time_total} %{http_code}"
#: Small archives in the store besides the big payload (``bench_mountd.Sizes.listed``).
LISTED = 10


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live children."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def sched_seconds(pid: int) -> float:
    """Run time of every live thread of ``pid``'s process tree, from schedstat (ns resolution)."""
    total = 0
    for process in tree_pids(pid):
        try:
            for task in Path(f"/proc/{process}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
    return total / 1e9


def user_seconds(pid: int) -> float:
    """User CPU seconds of ``pid``'s process tree (``/proc/PID/stat`` utime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in tree_pids(pid):
        try:
            stat = Path(f"/proc/{process}/stat").read_text()
        except OSError:
            continue
        total += int(stat[stat.rindex(")") + 2 :].split()[11])
    return total / tick


def pin(pid: int, cpu: int) -> None:
    """Bind every thread of ``pid``'s process tree to ``cpu`` (threads started later inherit it)."""
    for process in tree_pids(pid):
        with suppress(OSError):
            for task in Path(f"/proc/{process}/task").iterdir():
                with suppress(OSError):
                    os.sched_setaffinity(int(task.name), {cpu})


def curl(url: str, cpu: int | None = None) -> tuple[int, float, float]:
    """GET into /dev/null (on ``cpu`` when given): (bytes, seconds, curl's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    taskset = [] if cpu is None else ["taskset", "-c", str(cpu)]
    out = subprocess.run(
        [*taskset, "curl", "-sS", "-o", "/dev/null", "-w", CURL_FORMAT, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=bm.CLIENT_TIMEOUT,
    ).stdout.split()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out[2] != "200":
        raise RuntimeError(f"GET {url} answered {out[2]}")
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return int(out[0]), float(out[1]), used


def export(ref: str, into: Path) -> Path:
    """The tree of git revision ``ref`` under ``into``."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_old(store: Path, tmp: Path, tree: Path) -> bm.Server:
    """mountd of the exported tree: it comes first on ``PYTHONPATH``, before the editable install."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        return bm.start_mountd("old", store, tmp)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def measure(
    servers: dict[str, bm.Server], runs: int, size: int, pinned: bool
) -> dict[str, dict[str, list[float]]]:
    """Interleaved GETs; per server the per-GET figures (per GB sent)."""
    keys = ("tick", "sched", "user", "curl", "mb_s")
    figures: dict[str, dict[str, list[float]]] = {name: {key: [] for key in keys} for name in servers}
    client_cpu = CLIENT_CPU if pinned else None
    for server in servers.values():  # untimed: page cache, payload check, connections warm
        if pinned:
            pin(server.process.pid, SERVER_CPU)
        curl(f"{server.url}/big.bin", client_cpu)
    for round_ in range(runs):
        order = list(servers.items())
        for name, server in order if round_ % 2 == 0 else reversed(order):
            pid = server.process.pid
            tick, sched, user = bm.tree_cpu_seconds(pid), sched_seconds(pid), user_seconds(pid)
            got, seconds, client = curl(f"{server.url}/big.bin", client_cpu)
            if got != size:
                raise RuntimeError(f"{name} sent {got} bytes of {size}")
            gb = got / 1e9
            row = figures[name]
            row["tick"].append((bm.tree_cpu_seconds(pid) - tick) / gb)
            row["sched"].append((sched_seconds(pid) - sched) / gb)
            row["user"].append((user_seconds(pid) - user) / gb)
            row["curl"].append(client / gb)
            row["mb_s"].append(got / seconds / 1e6)
    return figures


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(figures: dict[str, dict[str, list[float]]]) -> None:
    med = statistics.median
    print(f"{'server':10s} {'tick s/GB':>9s} {'(mean)':>7s} {'sched s/GB':>10s} {'user':>6s}", end="")
    print(f" {'curl s/GB':>9s} {'MB/s':>6s}")
    for name, row in figures.items():
        tick_mean = statistics.mean(row["tick"])
        print(f"{name:10s} {med(row['tick']):9.3f} {tick_mean:7.3f} {med(row['sched']):10.3f}", end="")
        print(f" {med(row['user']):6.3f} {med(row['curl']):9.3f} {med(row['mb_s']):6.0f}")


def main(argv: list[str] | None = None) -> int:
    """Run the A/B."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="git revision of the 'old' mountd (default: main)")
    parser.add_argument("--runs", type=int, default=9, help="rounds of GETs (default: 9)")
    parser.add_argument("--big-mib", type=int, default=512, help="payload size in MiB (default: 512)")
    parser.add_argument("--with", dest="others", default="", help="also: nginx,minimal,rclone")
    parser.add_argument("--dir", type=Path, help="parent of the temp directory")
    parser.add_argument(
        "--pin", action="store_true", help=f"servers on CPU {SERVER_CPU}, curl on CPU {CLIENT_CPU} (steadier)"
    )
    args = parser.parse_args(argv)
    sizes = bm.Sizes(
        big=args.big_mib * MIB,
        listed=LISTED,
        rss_payload=0,
        get_runs=args.runs,
        propfind_runs=0,
        wrk_seconds=0,
        first_rounds=0,
    )
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sync-ab-sendfile-", dir=args.dir))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        store, plain = bm.build_data(tmp, sizes)
        tree = export(args.old, tmp / "old-tree")
        starters = {
            "old": lambda: start_old(store, tmp, tree),
            "new": lambda: bm.start_mountd("new", store, tmp),
            "nginx": lambda: bm.start_nginx(plain, tmp),
            "minimal": lambda: bm.start_floor(plain, tmp, "minimal"),
            "rclone": lambda: bm.start_rclone(plain, tmp),
        }
        chosen = ["old", "new", *(name for name in args.others.split(",") if name)]
        results = bm.Results()
        servers = stack.enter_context(bm.running({name: starters[name] for name in chosen}, results))
        pinned = f"; servers on CPU {SERVER_CPU}, curl on CPU {CLIENT_CPU}" if args.pin else ""
        print(f"old = {args.old}, new = {ROOT}; {args.runs} rounds of {args.big_mib} MiB GETs{pinned}")
        print(f"load {load()}")
        figures = measure(servers, args.runs, sizes.big, args.pin)
        report(figures)
        print(f"load {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
