"""Many concurrent ``request_refresh`` calls for one archive from one process, run as a script.

``burst_requests.py REDIS_URL ARCHIVE THREADS``: builds its own producer app and Redis client (as each
mountd process would), starts ``THREADS`` threads that wait at a barrier, prints ``ready``, waits for a line
on stdin (the parent releases every process at once), then lets all threads call ``request_refresh`` and
prints the count of each result as one JSON object.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Callable

from broker import (
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    make_celery_app,
    make_redis,
    request_refresh,
)


def burst(
    redis_url: str,
    archive: str,
    threads: int,
    go: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Counter[str]:
    """Call ``request_refresh`` from ``threads`` threads at once; return the count of each result.

    With ``go``, the threads start, ``on_ready`` is called, and they are released once ``go`` is set.
    """
    app = make_celery_app(Settings(), broker_url=redis_url, producer=True)
    # One connection per thread, so that every call really is concurrent at Redis. The service timeouts,
    # not the producer's 0.5 s: 1,000 threads connecting at once on a loaded 2-core machine can take longer
    # than that, and this burst proves the claim's atomicity; fast failure is proven by the outage tests.
    client = make_redis(
        redis_url,
        socket_timeout=SERVICE_SOCKET_TIMEOUT,
        connect_timeout=SERVICE_CONNECT_TIMEOUT,
        max_connections=threads,
    )
    pending = PendingRefreshes()
    barrier = threading.Barrier(threads + 1)
    results: list[RequestResult] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        result = request_refresh(app, client, RefreshRequest.new(archive, 0), pending)
        with lock:
            results.append(result)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    if on_ready is not None:
        on_ready()
    if go is not None:
        go.wait()
    barrier.wait()
    for worker in workers:
        worker.join()
    client.close()
    return Counter(str(r) for r in results)


def main(argv: list[str]) -> None:
    """Run one burst when stdin says so."""
    go = threading.Event()

    def release() -> None:
        sys.stdin.readline()
        go.set()

    threading.Thread(target=release, daemon=True).start()
    counts = burst(argv[1], argv[2], int(argv[3]), go, lambda: print("ready", flush=True))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv)
