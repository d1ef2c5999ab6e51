"""Where a refresh's latency goes between ``request_refresh`` and "swapped": one timestamp per step.

A diagnostic next to ``bench_pipeline.py`` (same archives, guest, private TCP Redis and ``Producer``): a
``syncctl worker`` (prefork, concurrency 1, the workers' default sandbox mode) is started through this script,
which first installs timestamp hooks in it (Celery signals and thin wrappers, nothing else changed), then
``--refreshes`` sequential refreshes are timed step by step:

    request      ``request_refresh`` called (this process; it returns once the claim, the message and
                 ``task-sent`` were pushed by one script, shown as its own row)
    popped       the worker's main process read the ``BRPOP`` reply (kombu's ``_brpop_read``)
    received     Celery built the request: unacked bookkeeping done, ``task_received`` fired (main process)
    prerun       the pool process begins the task (``task_prerun``)
    start        ``RefreshJob.start`` sent (task body decoded, job built) ... and answered
    run          ``run_refresh`` begins ... and returns (the guest in its sandbox, the commit)
    end>         ``RefreshJob``'s end script sent (status, history, "swapped" published, release)
    swapped      this process received "swapped" (the script's answer to the worker is its own row)

Every timestamp is ``time.monotonic()`` (one clock for all processes on Linux). The table gives p50 and
p95 of each step and of the total; the steps that are not ``run`` are what the pipeline adds. The hooks
write one short line per step to a file, which costs a few microseconds per step. Exit status 0 whenever
it ran.

Run ``.venv/bin/python bench/pipeline_phases.py [--refreshes 100] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

#: Environment variable naming the file the worker's hooks append to (set for the worker only).
HOOK_LOG_ENV = "SYNC_BENCH_PHASE_LOG"
#: The steps, in order along one refresh; each row of the table is the span from one to the next.
STEPS = (
    "request",
    "popped",
    "received",
    "prerun",
    "start>",
    "start<",
    "run>",
    "run<",
    "end>",
    "swapped",
)
#: Spans off the chain above: the producer's call, and the end script's answer (after "swapped" went out).
EXTRA = {
    "request_refresh call (request -> queued)": ("request", "queued"),
    "end script (end> -> end<)": ("end>", "end<"),
}
MS = 1000.0


def install_hooks(log_path: str) -> None:
    """In the worker process, before Celery starts: append ``<monotonic> <step> <task id>`` per step."""
    import kombu.transport.redis as kombu_redis  # noqa: PLC0415  (only in the hooked worker)
    from celery import signals  # type: ignore[import-untyped]  # noqa: PLC0415

    import broker.job  # noqa: PLC0415
    import workers.tasks  # noqa: PLC0415

    def emit(step: str, task_id: object = "") -> None:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{time.monotonic():.6f} {step} {task_id}\n".encode())
        finally:
            os.close(fd)

    signals.task_received.connect(lambda request=None, **_: emit("received", request.id), weak=False)
    signals.task_prerun.connect(lambda task_id=None, **_: emit("prerun", task_id), weak=False)

    brpop_read = kombu_redis.Channel._brpop_read

    def popped(self: Any, **options: Any) -> Any:
        emit("popped")
        return brpop_read(self, **options)

    kombu_redis.Channel._brpop_read = popped

    def around(owner: Any, name: str, step: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            emit(step + ">")
            try:
                return original(*args, **kwargs)
            finally:
                emit(step + "<")

        setattr(owner, name, timed)

    around(broker.job.RefreshJob, "start", "start")
    around(broker.job.RefreshJob, "_end_with", "end")
    around(workers.tasks, "run_refresh", "run")


def worker_main(log_path: str, argv: list[str]) -> int:
    """``syncctl`` with the hooks installed."""
    install_hooks(log_path)
    from syncctl.main import main  # noqa: PLC0415

    return main(argv)


def read_hook_log(path: Path) -> list[tuple[float, str]]:
    """The worker's steps in the order written."""
    steps = []
    for line in path.read_text().splitlines():
        stamp, step, *_ = line.split()
        steps.append((float(stamp), step))
    return steps


def run(refreshes: int, tmp: Path, stack: ExitStack) -> None:
    """Start Redis and a hooked worker, time ``refreshes`` refreshes, print the table."""
    import bench_pipeline as bp  # noqa: PLC0415  (this directory is on sys.path when run as a script)
    import wasmtime  # noqa: PLC0415

    from broker import Settings  # noqa: PLC0415
    from workers import GuestRuntime  # noqa: PLC0415

    store, cache = tmp / "store", tmp / "cache"
    settings = Settings(store=store, cache_dir=cache, sandbox="strict")
    wasm = bytes(wasmtime.wat2wasm(bp.GUEST_WAT))
    archives = bp.Archives(store, wasm)
    warm_paths, paths = archives.group("warm", 40 * bp.WARMUP), archives.group("timed", refreshes)
    runtime = GuestRuntime(settings)
    runtime.modules.load(wasm)
    runtime.close()
    redis_server = bp.PrivateRedis(tmp / "redis").start()
    stack.callback(redis_server.stop)
    hook_log = tmp / "phases.log"
    launcher = (sys.executable, str(Path(__file__).resolve()), "--worker-hooks", str(hook_log), "--")
    worker = bp.Worker(
        "phases@pipeline", store, cache, tmp / "worker.log", redis_server.url, launcher=launcher
    )
    worker.start()
    stack.callback(worker.stop)
    producer = bp.Producer(redis_server.url, redis_server.url, settings)
    stack.callback(producer.close)
    bp.wait_for_workers(producer.app, [worker])
    bp.warm(producer, archives, iter(warm_paths), {worker.name})
    # Every warm-up job answered its end: from here on, the n-th "end<" is the n-th timed job's.
    bp.wait_until(
        lambda: hook_log.read_text().count("end<") == hook_log.read_text().count("end>"), 10.0, "warm-up"
    )
    done_before = hook_log.read_text().count("end<")
    ours: list[dict[str, float]] = []
    load = Path("/proc/loadavg").read_text().split()[0]
    for path in paths:
        key = archives.key(path)
        stamps = {"request": time.monotonic()}
        producer.request(key)
        stamps["queued"] = time.monotonic()
        got = producer.wait_swapped({key}, bp.SWAP_TIMEOUT)
        if key not in got:
            raise bp.BenchFailed(f"no swap of {key}")
        stamps["swapped"] = time.monotonic()
        ours.append(stamps)
        # The job's tail (postrun, ack) runs after "swapped"; let it end before the next request.
        ended = done_before + len(ours)
        bp.wait_until(
            lambda n=ended: hook_log.read_text().count("end<") >= n, bp.SWAP_TIMEOUT, "the job's end"
        )
    steps = read_hook_log(hook_log)
    rows: dict[str, list[float]] = {f"{a} -> {b}": [] for a, b in pairwise(STEPS)}
    rows |= {name: [] for name in EXTRA}
    totals = []
    for n, stamps in enumerate(ours):
        # The worker's steps of this refresh, in chain order: the first of each kind after the step before it
        # (and before the next request); "end<" is the first answer after "end>".
        until = ours[n + 1]["request"] if n + 1 < len(ours) else float("inf")
        previous = {b: a for a, b in pairwise(STEPS)} | {"end<": "end>"}
        for stamp, step in steps:
            after = previous.get(step)
            if step in stamps or after is None or after not in stamps or not stamps[after] <= stamp < until:
                continue
            stamps[step] = stamp
        if not all(step in stamps for step in (*STEPS, "end<")):
            continue
        for a, b in pairwise(STEPS):
            rows[f"{a} -> {b}"].append((stamps[b] - stamps[a]) * MS)
        for name, (a, b) in EXTRA.items():
            rows[name].append((stamps[b] - stamps[a]) * MS)
        totals.append((stamps["swapped"] - stamps["request"]) * MS)
    print(f"{len(totals)} of {refreshes} refreshes with every step; load average {load} at the start")
    width = max(len(name) for name in rows)
    print(f"{'step':<{width}}  p50 ms  p95 ms")
    print(f"{'-' * width}  ------  ------")
    for name, values in [*rows.items(), ("total (request -> swapped)", totals)]:
        if values:
            p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
            print(f"{name:<{width}}  {statistics.median(values):6.2f}  {p95:6.2f}")
    run_p50 = statistics.median(rows["run> -> run<"])
    print(f"pipeline's share of the p50 total (total - run): {statistics.median(totals) - run_p50:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    """Parse options; run the worker side when asked to, else the measurement."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker-hooks"]:
        return worker_main(args[1], args[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refreshes", type=int, default=100, help="sequential refreshes (default 100)")
    parser.add_argument("--dir", type=Path, help="parent of the temp directory (default: the system's)")
    options = parser.parse_args(args)
    with (
        tempfile.TemporaryDirectory(prefix="sync-bench-phases-", dir=options.dir) as tmp,
        ExitStack() as stack,
    ):
        run(options.refreshes, Path(tmp), stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
