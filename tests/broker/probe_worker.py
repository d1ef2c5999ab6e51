"""A real Celery worker process for the broker tests, run as a script: ``probe_worker.py BROKER_URL NAME``.

It builds the app with ``make_celery_app`` and binds ``TASK_REFRESH`` to a probe body that follows the
worker side of the claim protocol exactly as a refresh job does: re-take the claim with the request's token
(a claim held by another token means this job was superseded), mark the status running, count one
execution in ``probe:executions:<archive>``, write the outcome, publish "swapped" and release the claim.
It stands in for ``workers`` only to prove the broker contract (one message, one execution); it refreshes
no archive. Stop it with SIGTERM (warm shutdown after the task in progress).
"""

from __future__ import annotations

import sys
from typing import Any

from broker import (
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    TASK_REFRESH,
    RefreshRequest,
    Settings,
    make_celery_app,
    make_redis,
)
from broker.claims import RUNNING_CLAIM_TTL_MS, Claims
from broker.status import mark_running, write_status
from broker.swapped import publish_swapped


def main(argv: list[str]) -> None:
    """Run the probe worker until it is told to stop."""
    broker_url, name = argv[1], argv[2]
    app = make_celery_app(Settings(), broker_url=broker_url)
    client = make_redis(
        broker_url, socket_timeout=SERVICE_SOCKET_TIMEOUT, connect_timeout=SERVICE_CONNECT_TIMEOUT
    )
    claims = Claims(client)

    @app.task(name=TASK_REFRESH, bind=True)  # type: ignore[untyped-decorator]
    def refresh(task: Any, payload: object) -> None:
        request = RefreshRequest.from_json(payload)
        if not claims.claim(request.archive, request.request_id, RUNNING_CLAIM_TTL_MS).ok:
            client.incr(f"probe:superseded:{request.archive}")
            return
        worker, job = str(task.request.hostname), str(task.request.id)
        mark_running(client, request.archive, generation=request.base_generation, worker=worker, job_id=job)
        client.incr(f"probe:executions:{request.archive}")
        claims.heartbeat(request.archive, request.request_id, RUNNING_CLAIM_TTL_MS)
        generation = request.base_generation + 1
        outcome = {
            "status": "committed",
            "base_generation": request.base_generation,
            "generation": generation,
            "duration_ms": 1.0,
        }
        write_status(client, request.archive, outcome, worker=worker, job_id=job)
        publish_swapped(client, request.archive, generation)
        claims.release(request.archive, request.request_id)

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            f"--hostname={name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main(sys.argv)
