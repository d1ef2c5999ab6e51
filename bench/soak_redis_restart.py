"""Restart Redis under a burst of refresh requests, many rounds: does every archive still get refreshed?

The compose stack's ``redis_restart`` check without Docker. Each round: a private ``redis-server`` with an
append-only file (fsync every second, no RDB: a SIGTERM restart keeps everything, as in the stack), one real
``syncctl worker`` (concurrency 2), 10 archives at generation 0; ``request_refresh`` for all 10 the way mountd
asks, then at once a Redis restart (SIGTERM, wait, start on the same directory and port); then, every 2 s,
the pending replay and a new request for each archive not yet refreshed (mountd does both on reads), until
all 10 reach generation 1 or ``--timeout`` passes. A failed round prints the claims of the stale archives,
the queue, the unacknowledged messages and the worker's log.

Run from the repository root (about 40 s a round, most of it the 30 s running claim of the jobs Celery
terminates on the connection loss)::

    .venv/bin/python bench/soak_redis_restart.py --rounds 20 [--timeout 150] [--no-zygote] [--stop]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CELERY_TRACE_APP", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from pipeline_harness import (  # noqa: E402
    Services,
    append_guest,
    build_archive,
    child_env,
    generation,
    wait_ready,
    worker_argv,
)
from support import RedisServer  # noqa: E402

from broker import (  # noqa: E402
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    PendingRefreshes,
    RefreshRequest,
    Settings,
    make_celery_app,
    make_redis,
    replay_pending,
    request_refresh,
)

ARCHIVES = 10
#: Seconds between two rounds of re-requests (the stack check reads every 2 s).
READ_INTERVAL = 2.0


def one_round(tmp: Path, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """One round; True with the seconds each archive took, or False with what was left behind."""
    server = RedisServer(tmp / "redis", appendonly=True).start()
    services = Services(tmp)
    store = tmp / "store"
    wasm = append_guest()
    paths = {
        f"restart-{i:02d}.sync": build_archive(store, f"restart-{i:02d}.sync", wasm) for i in range(ARCHIVES)
    }
    control = make_celery_app(Settings(), broker_url=server.url)
    app = make_celery_app(Settings(), broker_url=server.url, producer=True)
    client = make_redis(
        server.url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
    )
    pending = PendingRefreshes()
    try:
        argv = worker_argv("w1@restart", store, broker=server.url, concurrency=2)
        worker = services.start("w1@restart", argv, child_env(tmp / "cache", **env))
        wait_ready(control, [worker])
        started = time.monotonic()
        for key in paths:
            request_refresh(app, client, RefreshRequest.new(key, 0), pending)
        server.stop()
        server.start()
        done: dict[str, float] = {}
        while time.monotonic() - started < timeout:
            for key, path in paths.items():
                if key not in done and generation(path) >= 1:
                    done[key] = round(time.monotonic() - started, 1)
            if len(done) == len(paths):
                return True, f"refreshed after {sorted(done.values())} s"
            replay_pending(app, client, pending)
            for key in paths.keys() - done.keys():
                request_refresh(app, client, RefreshRequest.new(key, 0), pending)
            time.sleep(READ_INTERVAL)
        redis = server.client()
        stale = sorted(paths.keys() - done.keys())
        claims = {key: redis.hgetall(f"sync:claim:{key}") for key in stale}
        return False, (
            f"not refreshed: {stale}; claims {claims}; queue {redis.llen('sync.refresh')}; "
            f"unacked {redis.hkeys('unacked')}; unacked index {redis.zrange('unacked_index', 0, -1)}\n"
            + services.report()
        )
    finally:
        services.stop_all()
        app.close()
        control.close()
        client.close()
        server.stop()


def main() -> int:
    """Run the rounds; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds a round may take")
    parser.add_argument("--no-zygote", action="store_true", help="SYNC_SANDBOX_ZYGOTE=0 for the worker")
    parser.add_argument("--stop", action="store_true", help="stop at the first failed round")
    args = parser.parse_args()
    env = {"SYNC_SANDBOX_ZYGOTE": "0"} if args.no_zygote else {}
    failed = 0
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="soak-redis-restart-") as directory:
            ok, detail = one_round(Path(directory), env, args.timeout)
        print(f"round {number}: {'ok' if ok else 'FAILED'} {detail}", flush=True)
        failed += not ok
        if failed and args.stop:
            break
    print(f"{args.rounds - failed}/{args.rounds} rounds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
