"""Cost of confining a forked child, per layer and for all layers, against a plain fork from the same run.

Each sample forks a child that applies one layer set with ``apply_policy`` (a no-op for the baseline), writes
the time its ``apply_policy`` took to a pipe and leaves with ``os._exit``; the parent times fork to reap.
Variants run interleaved (round-robin) so that drift on a shared machine spreads evenly over them. The
seccomp program is built once in the parent, as the workers do; its build cost is shown separately.

The first table forks this small process (only ``workers.confine`` imported). Then the process grows twice and
the same four rows are measured at each size: first to the sandbox zygote's size (``workers.zygote``: the
child's modules and an engine that ran the warm-up guest), then to a worker's size (Celery, kombu, redis-py
and billiard imported, a Celery app and a ``GuestRuntime`` built). The rows: a plain fork, fork-per-job with
all layers, and a spare child (``workers.spare``, and the zygote's own spare), forked and through its early
layers (no_new_privs, network namespace) before the clock starts; its row times what a job waits for: the go
message, the late layers (rlimits, Landlock, seccomp), the answer and the reap. The spare's fork..ready time
is a row too: it is still spent, but off the job's path (in the zygote: in another process). Every row is
given against its own process's plain fork, the worker-sized plain fork (what a job costs without a zygote)
and the small one of the first table. The zygote path's IPC (the spawn and reap messages) is not in these
rows; ``bench_pipeline.py``'s stage table has ``execute_guest`` end to end in each mode.

Run: ``.venv/bin/python bench/bench_confine.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import goals

from workers.confine import ALL_LAYERS, Layer, SandboxPolicy, apply_policy, build_program
from workers.confine.apply import EARLY_LAYERS, LATE_LAYERS

VARIANTS: dict[str, tuple[Layer, ...]] = {
    "plain fork (baseline)": (),
    "no_new_privs": (Layer.NO_NEW_PRIVS,),
    "netns": (Layer.NETNS,),
    "rlimits": (Layer.RLIMITS,),
    "landlock (+nnp)": (Layer.NO_NEW_PRIVS, Layer.LANDLOCK),
    "seccomp (+nnp)": (Layer.NO_NEW_PRIVS, Layer.SECCOMP),
    "all layers": ALL_LAYERS,
}


#: Rows of the zygote-sized and worker-sized tables, in order.
SIZED_ROWS = (
    "plain fork",
    "fork per job, all layers",
    "spare child, all layers (go..reap)",
    "  spare prepared ahead (fork..ready)",
)
#: Confinement's goal: at most this times a plain fork of the same process.
CONFINE_GOAL = 1.25


def sample(layers: tuple[Layer, ...], program: bytes) -> tuple[float, float]:
    """Fork one child that applies ``layers``; return (fork-to-reap seconds, in-child apply seconds)."""
    policy = SandboxPolicy(layers=layers)
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(read_fd)
            begin = time.perf_counter()
            report = apply_policy(policy, program) if layers else None
            elapsed = time.perf_counter() - begin
            code = 0 if report is None or report.complete else 71
            os.write(write_fd, struct.pack("d", elapsed))
        finally:
            os._exit(code)
    os.close(write_fd)
    data = os.read(read_fd, 8)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    total = time.perf_counter() - start
    if status != 0 or len(data) != 8:
        raise SystemExit(f"child for {layers} failed (wait status {status})")
    return total, struct.unpack("d", data)[0]


def spare_sample(program: bytes) -> tuple[float, float, float]:
    """Fork a spare that applies the early layers and waits; then time go..reap as a job sees it.

    Returns:
        (go-to-reap seconds, in-child late-layer seconds, fork-to-ready seconds).
    """
    policy = SandboxPolicy()
    read_fd, write_fd = os.pipe()
    go_read, go_write = os.pipe()
    begin_fork = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(read_fd)
            os.close(go_write)
            early = apply_policy(policy, program, only=EARLY_LAYERS)
            os.write(write_fd, b"R")
            os.read(go_read, 1)
            begin = time.perf_counter()
            late = apply_policy(policy, program, only=LATE_LAYERS)
            elapsed = time.perf_counter() - begin
            code = 0 if early.complete and late.complete else 71
            os.write(write_fd, struct.pack("d", elapsed))
        finally:
            os._exit(code)
    os.close(write_fd)
    os.close(go_read)
    ready = os.read(read_fd, 1)
    prepared = time.perf_counter() - begin_fork
    start = time.perf_counter()
    os.write(go_write, b"G")
    data = os.read(read_fd, 8)
    os.close(read_fd)
    os.close(go_write)
    _, status = os.waitpid(pid, 0)
    total = time.perf_counter() - start
    if status != 0 or ready != b"R" or len(data) != 8:
        raise SystemExit(f"spare child failed (wait status {status})")
    return total, struct.unpack("d", data)[0], prepared


def grow_to_zygote_size() -> None:
    """Import and build what the sandbox zygote holds (``workers.zygote.main``): the child's modules, an
    engine that ran the warm-up guest."""
    from workers.child import spare_main  # noqa: PLC0415  (the point: grow only now)
    from workers.engine import make_engine  # noqa: PLC0415
    from workers.runtime import warm_up  # noqa: PLC0415

    engine = make_engine()
    warm_up(engine)
    _KEEP.extend([engine, spare_main])


def grow_to_worker_size(directory: str) -> int:
    """Import and build what a worker's pool process holds; return the resident set size in KiB."""
    from broker.celery_app import make_celery_app  # noqa: PLC0415  (the point: grow only now)
    from broker.settings import Settings  # noqa: PLC0415
    from workers.runtime import GuestRuntime  # noqa: PLC0415
    from workers.tasks import register_tasks  # noqa: PLC0415

    settings = Settings(cache_dir=Path(directory), sandbox="strict")
    app = make_celery_app(settings, broker_url="redis://127.0.0.1:9/0")
    register_tasks(app, settings, broker_url="redis://127.0.0.1:9/0")
    import billiard.pool  # noqa: PLC0415, F401
    import celery.worker.consumer  # noqa: PLC0415, F401

    _KEEP.extend([app, GuestRuntime(settings)])
    return rss_kib()


def rss_kib() -> int:
    """This process's resident set size in KiB."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


#: What ``grow_to_worker_size`` built, kept alive while the second table is measured.
_KEEP: list[object] = []


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, by the inclusive method."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main() -> None:
    """Measure every variant and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="samples per variant")
    args = parser.parse_args()

    builds = []
    for _ in range(20):
        begin = time.perf_counter()
        program = build_program()
        builds.append(time.perf_counter() - begin)

    totals: dict[str, list[float]] = {name: [] for name in VARIANTS}
    applies: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, layers in VARIANTS.items():
            total, applied = sample(layers, program)
            totals[name].append(total)
            applies[name].append(applied)

    base50 = percentile(totals["plain fork (baseline)"], 0.50)
    ms = 1000.0
    print(f"{args.runs} runs per variant; seccomp program: {len(program) // 8} BPF instructions")
    print(
        f"building the seccomp program (parent, once): p50 {percentile(builds, 0.5) * ms:.2f} ms, "
        f"p95 {percentile(builds, 0.95) * ms:.2f} ms"
    )
    header = f"{'variant':<24}{'fork..reap p50':>16}{'p95':>10}{'x baseline':>12}{'apply p50':>12}{'p95':>10}"
    print(header)
    print("-" * len(header))
    for name in VARIANTS:
        t50, t95 = percentile(totals[name], 0.50), percentile(totals[name], 0.95)
        a50, a95 = percentile(applies[name], 0.50), percentile(applies[name], 0.95)
        print(
            f"{name:<24}{t50 * ms:>13.2f} ms{t95 * ms:>7.2f} ms{t50 / base50:>11.2f}x"
            f"{a50 * ms:>9.3f} ms{a95 * ms:>7.3f} ms"
        )
    small_rss = rss_kib()
    grow_to_zygote_size()
    zygote = Sized("zygote-sized", rss_kib(), measure_sized(args.runs, program))
    with tempfile.TemporaryDirectory() as directory:
        worker = Sized("worker-sized", grow_to_worker_size(directory), measure_sized(args.runs, program))
    print_sized([zygote, worker], base50, small_rss)


@dataclass
class Sized:
    """Samples of ``SIZED_ROWS`` taken in a process of one size."""

    label: str
    rss_kib: int
    rows: dict[str, tuple[list[float], list[float]]]


def measure_sized(runs: int, program: bytes) -> dict[str, tuple[list[float], list[float]]]:
    """Interleaved samples of every ``SIZED_ROWS`` variant in this process: (fork..reap, apply) seconds."""
    rows: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in SIZED_ROWS}
    plain, per_job, spare, prepared = SIZED_ROWS
    for _ in range(runs):
        for name, layers in ((plain, ()), (per_job, ALL_LAYERS)):
            total, applied = sample(layers, program)
            rows[name][0].append(total)
            rows[name][1].append(applied)
        total, applied, ready = spare_sample(program)
        rows[spare][0].append(total)
        rows[spare][1].append(applied)
        rows[prepared][0].append(ready)
        rows[prepared][1].append(0.0)
    return rows


def print_sized(tables: list[Sized], small50: float, small_rss: int) -> None:
    """The zygote-sized and worker-sized tables, each row against the three plain forks."""
    ms = 1000.0
    plain = SIZED_ROWS[0]
    worker50 = percentile(tables[-1].rows[plain][0], 0.50)
    for table in tables:
        own50 = percentile(table.rows[plain][0], 0.50)
        print()
        print(
            f"{table.label} process (RSS {table.rss_kib // 1024} MiB; the first table: "
            f"{small_rss // 1024} MiB): fork-per-job against a spare child"
        )
        header = (
            f"{'variant':<37}{'p50':>9}{'p95':>10}{'x own fork':>12}{'x worker fork':>15}{'x small fork':>14}"
            f"{'apply p50':>12}{'goal':>6}"
        )
        print(header)
        print("-" * len(header))
        for name, (totals, applies) in table.rows.items():
            t50, t95, a50 = percentile(totals, 0.50), percentile(totals, 0.95), percentile(applies, 0.50)
            goal = ""
            if name in SIZED_ROWS[1:3]:
                goal = "met" if t50 / worker50 <= CONFINE_GOAL else "NO"
            print(
                f"{name:<37}{t50 * ms:>6.2f} ms{t95 * ms:>7.2f} ms{t50 / own50:>11.2f}x"
                f"{t50 / worker50:>14.2f}x{t50 / small50:>13.2f}x{a50 * ms:>9.3f} ms{goal:>6}"
            )
    zygote = tables[0]
    spare_totals = zygote.rows[SIZED_ROWS[2]][0]
    per_job_totals = zygote.rows[SIZED_ROWS[1]][0]
    spare50, per_job50 = percentile(spare_totals, 0.50), percentile(per_job_totals, 0.50)
    own50 = percentile(zygote.rows[plain][0], 0.50)
    goals.record(
        "15.11-confinement",
        "a job's confined child in the workers' mode (zygote's spare child, all layers, go..reap) / a plain"
        " fork..reap of the worker",
        f"{spare50 / worker50:.2f}x ({spare50 * ms:.2f} vs {worker50 * ms:.2f} ms); fork per job in the"
        f" zygote, all layers: {per_job50 / own50:.2f}x the zygote's own plain fork",
        f"<= {CONFINE_GOAL}x",
        spare50 / worker50 <= CONFINE_GOAL,
    )
    print(
        f"goal: confinement <= {CONFINE_GOAL}x a plain fork of the worker-sized process, the fork a job costs"
        " without a zygote (fork..reap for fork-per-job; go..reap for a spare)"
    )


if __name__ == "__main__":
    main()
