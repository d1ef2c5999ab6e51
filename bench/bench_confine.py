"""Cost of confining a forked child, per layer and for all layers, against a plain fork from the same run.

Each sample forks a child that applies one layer set with ``apply_policy`` (a no-op for the baseline), writes
the time its ``apply_policy`` took to a pipe and leaves with ``os._exit``; the parent times fork to reap.
Variants run interleaved (round-robin) so that drift on a shared machine spreads evenly over them. The
seccomp program is built once in the parent, as the workers do; its build cost is shown separately.

The first table forks this small process (only ``workers.confine`` imported). The second is measured after the
process has grown to a worker's size (Celery, kombu, redis-py and billiard imported, a Celery app and a
``GuestRuntime`` built: wasmtime engine, warm-up guest, seccomp program): a plain fork of it, fork-per-job
with all layers, and the spare child of ``workers.spare`` (``Settings.sandbox_spare_child``), forked and
through its early layers (no_new_privs, network namespace) before the clock starts; its row times what a job
waits for: the go message, the late layers (rlimits, Landlock, seccomp), the answer and the reap. The spare's
own fork..ready time is shown as a row too: it is still spent, but while the previous job's outcome is
handled. Ratios are given against both plain forks (the worker-sized one, and the small one of the first
table).

Run: ``.venv/bin/python bench/bench_confine.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path

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


#: Rows of the worker-sized table, in order.
WORKER_ROWS = (
    "plain fork (worker-sized)",
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
    with tempfile.TemporaryDirectory() as directory:
        big_rss = grow_to_worker_size(directory)
        worker_table(args.runs, program, base50, small_rss, big_rss)


def worker_table(runs: int, program: bytes, small50: float, small_rss: int, big_rss: int) -> None:
    """The second table: the worker-sized process, fork-per-job against the spare child."""
    rows: dict[str, list[float]] = {name: [] for name in WORKER_ROWS}
    applies: dict[str, list[float]] = {name: [] for name in WORKER_ROWS}
    for _ in range(runs):
        total, applied = sample((), program)
        rows[WORKER_ROWS[0]].append(total)
        applies[WORKER_ROWS[0]].append(applied)
        total, applied = sample(ALL_LAYERS, program)
        rows[WORKER_ROWS[1]].append(total)
        applies[WORKER_ROWS[1]].append(applied)
        total, applied, prepared = spare_sample(program)
        rows[WORKER_ROWS[2]].append(total)
        applies[WORKER_ROWS[2]].append(applied)
        rows[WORKER_ROWS[3]].append(prepared)
        applies[WORKER_ROWS[3]].append(0.0)
    ms = 1000.0
    base50 = percentile(rows[WORKER_ROWS[0]], 0.50)
    print()
    print(
        f"worker-sized process (RSS {big_rss // 1024} MiB; the table above: {small_rss // 1024} MiB): "
        f"fork-per-job against a spare child"
    )
    header = (
        f"{'variant':<34}{'p50':>9}{'p95':>10}{'x worker fork':>15}{'x small fork':>14}"
        f"{'apply p50':>12}{'goal':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in WORKER_ROWS:
        t50, t95 = percentile(rows[name], 0.50), percentile(rows[name], 0.95)
        a50 = percentile(applies[name], 0.50)
        goal = ""
        if name in (WORKER_ROWS[1], WORKER_ROWS[2]):
            goal = "met" if t50 / base50 <= CONFINE_GOAL else "NO"
        print(
            f"{name:<34}{t50 * ms:>6.2f} ms{t95 * ms:>7.2f} ms{t50 / base50:>14.2f}x{t50 / small50:>13.2f}x"
            f"{a50 * ms:>9.3f} ms{goal:>7}"
        )
    print(
        f"goal: confinement <= {CONFINE_GOAL}x the worker-sized plain fork (fork..reap for fork-per-job; "
        "go..reap for the spare)"
    )


if __name__ == "__main__":
    main()
