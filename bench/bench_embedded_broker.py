"""Is anything lost? The embedded broker (a supervised redis-server) vs kombu's stock filesystem transport.

For each transport and each of ``--rounds`` rounds: 2 Celery worker processes (prefork, concurrency 2, the
app from ``make_celery_app``: late acks, prefetch 1) answer a ping, then 2 producer processes send 1,000
trivial tasks each, at the same time. Each execution appends its token to a log. A round ends when every
sent task ran, when nothing new ran for ``--stall`` seconds, or at ``--deadline``. The table sums the
rounds: tasks sent, distinct tasks executed, lost (sent, never executed), duplicates, workers that died,
rounds that lost anything, and the wall time from the first send to the last execution. Nothing lost is the
floor; the embedded broker is what sync uses by default.

Run ``python bench/bench_embedded_broker.py``. Everything lives in a temp directory removed at the end. The
exit status is 0 whenever the benchmark ran (losses are reported, not enforced).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_bench_task import TASK_NAME, register

from broker import EmbeddedRedis, Settings, make_celery_app

HERE = Path(__file__).resolve().parent
#: Transports compared, in table order.
TRANSPORTS = ("embedded", "filesystem")
#: Polling interval of the filesystem transport, in seconds (kombu's default is 1 s; 0.01 s is what the
#: Celery notes measured with).
FILESYSTEM_POLLING = 0.01


@dataclass(frozen=True)
class Result:
    """One round of one transport."""

    transport: str
    sent: int
    executed: int
    duplicates: int
    workers_died: int
    seconds: float
    crash_lines: list[str]

    @property
    def lost(self) -> int:
        """Tasks sent and never executed."""
        return self.sent - self.executed


def build_app(transport: str, location: str) -> Any:
    """The app under test: sync's own settings; for ``filesystem`` only the transport is swapped."""
    if transport == "embedded":
        return make_celery_app(Settings(), broker_url=location)
    app = make_celery_app(Settings(), broker_url="redis://unused/0")
    folder = Path(location)
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        # Without it kombu writes its broadcast exchanges into ./control of whatever the cwd is.
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": FILESYSTEM_POLLING,
    }
    return app


def ready_file(log_path: Path, name: str) -> Path:
    """The file a worker creates once its consumer is ready (``wait_for_workers`` waits for it)."""
    return log_path.with_name(f"ready-{name}")


def run_worker(transport: str, location: str, log_path: str, name: str) -> None:
    """Worker process: register the trivial task, say when ready (a file), consume until SIGTERM."""
    from celery.signals import worker_ready  # noqa: PLC0415  (only the worker processes need it)

    app = build_app(transport, location)
    register(app, Path(log_path))
    ready = ready_file(Path(log_path), name)
    worker_ready.connect(lambda **_: ready.touch(), weak=False)
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=WARNING",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def run_producer(transport: str, location: str, count: int, prefix: str) -> None:
    """Producer process: wait for a line on stdin, send ``count`` tasks, print how many were sent."""
    app = build_app(transport, location)
    with app.producer_or_acquire() as warm:  # connect before the start signal
        warm.connection.ensure_connection()
    sys.stdin.readline()
    sent = 0
    for i in range(count):
        app.send_task(TASK_NAME, args=[f"{prefix}-{i}"])
        sent += 1
    print(sent, flush=True)


def wait_for_workers(log_path: Path, names: set[str], deadline: float) -> None:
    """Return once every named worker's consumer is ready (its ``ready_file``), within ``deadline`` s.

    Not a broadcast ping: the filesystem transport has no fanout (one worker takes the ping message from the
    shared folder and the other never sees it), and its replies travel through the same racy message files
    as the tasks; a run once failed on "w1@filesystem did not answer a ping".
    """
    give_up = time.monotonic() + deadline
    while missing := sorted(name for name in names if not ready_file(log_path, name).exists()):
        if time.monotonic() > give_up:
            raise RuntimeError(f"workers {missing} were not ready within {deadline:.0f} s")
        time.sleep(0.05)


def count_lines(path: Path) -> list[str]:
    """Tokens in the execution log so far."""
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def measure(transport: str, workdir: Path, tasks: int, stall: float, deadline: float) -> Result:
    """Run one transport and report what happened."""
    workdir.mkdir(parents=True)
    embedded: EmbeddedRedis | None = None
    if transport == "embedded":
        embedded = EmbeddedRedis(workdir / "broker").start()
        location = embedded.celery_url
    else:
        for sub in ("queue", "processed"):
            (workdir / "fs" / sub).mkdir(parents=True)
        location = str(workdir / "fs")
    log_path = workdir / "executions.log"
    script = str(Path(__file__).resolve())
    logs = [(workdir / f"worker-{i}.log").open("wb") for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, script, "--worker", transport, location, str(log_path), f"w{i}@{transport}"],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    producers = [
        subprocess.Popen(
            [sys.executable, script, "--producer", transport, location, str(tasks), f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        wait_for_workers(log_path, {f"w{i}@{transport}" for i in range(2)}, deadline)
        started = time.monotonic()
        for producer in producers:
            assert producer.stdin is not None
            producer.stdin.write("go\n")
            producer.stdin.flush()
        sent = sum(int(producer.communicate(timeout=deadline)[0].strip() or 0) for producer in producers)
        last_count, last_change = -1, time.monotonic()
        finished = started
        while True:
            tokens = count_lines(log_path)
            now = time.monotonic()
            if len(tokens) != last_count:
                last_count, last_change, finished = len(tokens), now, now
            if len(set(tokens)) >= sent or now - last_change > stall or now - started > deadline:
                break
            threading.Event().wait(0.05)
        died = sum(1 for worker in workers if worker.poll() is not None)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
                producer.communicate()
        if embedded is not None:
            embedded.close()
    tokens = count_lines(log_path)
    crash_lines = [
        line.strip()
        for i in range(2)
        for line in (workdir / f"worker-{i}.log").read_text(errors="replace").splitlines()
        if "Unrecoverable error" in line
    ]
    return Result(
        transport,
        sent,
        len(set(tokens)),
        len(tokens) - len(set(tokens)),
        died,
        finished - started,
        crash_lines,
    )


def print_table(results: list[Result], tasks: int, rounds: int) -> None:
    """The result table: one row per transport, summed over its rounds."""
    print(f"2 workers (prefork x2), 2 producers x {tasks} tasks, acks_late, prefetch 1, {rounds} rounds")
    headers = [
        "transport",
        "sent",
        "executed",
        "lost",
        "duplicates",
        "workers died",
        "lossy rounds",
        "tasks/s",
    ]
    rows = []
    for transport in dict.fromkeys(r.transport for r in results):
        mine = [r for r in results if r.transport == transport]
        seconds = sum(r.seconds for r in mine)
        executed = sum(r.executed for r in mine)
        rows.append(
            [
                transport,
                str(sum(r.sent for r in mine)),
                str(executed),
                str(sum(r.lost for r in mine)),
                str(sum(r.duplicates for r in mine)),
                str(sum(r.workers_died for r in mine)),
                f"{sum(1 for r in mine if r.lost)}/{len(mine)}",
                f"{executed / seconds:.0f}" if seconds > 0 else "-",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        for line in r.crash_lines[:2]:
            print(f"{r.transport}: {line[:160]}")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (or, with ``--worker``/``--producer``, one of its child processes)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--worker":
        run_worker(*args[1:5])
        return 0
    if args and args[0] == "--producer":
        run_producer(args[1], args[2], int(args[3]), args[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per producer (default 1000)")
    parser.add_argument("--stall", type=float, default=10.0, help="seconds without progress that end a run")
    parser.add_argument("--deadline", type=float, default=45.0, help="longest run per transport, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per transport (default 3)")
    parser.add_argument("--only", choices=TRANSPORTS, help="run one transport")
    options = parser.parse_args(args)
    os.environ.setdefault("CELERY_TRACE_APP", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-broker-") as tmp:
        for transport in [options.only] if options.only else TRANSPORTS:
            for round_ in range(options.rounds):
                workdir = Path(tmp) / f"{transport}-{round_}"
                results.append(measure(transport, workdir, options.tasks, options.stall, options.deadline))
    print_table(results, options.tasks, options.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
