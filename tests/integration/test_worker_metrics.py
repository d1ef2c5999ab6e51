"""``syncctl worker --metrics-port``: metrics of real jobs in the pool, and a health that follows Redis."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery  # type: ignore[import-untyped]
from pipeline_harness import (
    Services,
    append_guest,
    build_archive,
    child_env,
    syncctl,
    trap_guest,
    wait_ready,
)
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, free_port, wait_for

from broker import PendingRefreshes, RefreshRequest, RequestResult, request_refresh

#: Seconds a job gets to be counted (a worker's first guest compiles its module).
JOB_BOUND = 60.0
#: The layers a sandbox report lists (``workers.confine.Layer``).
LAYERS = {"no_new_privs", "netns", "rlimits", "landlock", "seccomp"}


def fetch(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """Status, content type and body of one request to the worker's endpoint."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def health(port: int) -> tuple[int, dict[str, Any]]:
    """The health endpoint's status and document."""
    status, content_type, body = fetch(port, "/health")
    assert content_type == "application/json"
    return status, json.loads(body)


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the metrics page by (name, labels), parsed with prometheus_client's parser."""
    status, content_type, body = fetch(port, "/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(port: int, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples(port).get((name, frozenset(labels.items())), 0.0)


def refresh(app: Celery, client: redis.Redis, key: str) -> None:
    """Request one refresh of ``key`` from generation 0 and check that it was queued."""
    result = request_refresh(app, client, RefreshRequest.new(key, 0), PendingRefreshes())
    assert result is RequestResult.QUEUED


@pytest.fixture
def metrics_worker(
    services: Services, redis_server: RedisServer, control_app: Celery, store: Path, cache_dir: Path
) -> int:
    """A ``syncctl --log-format json worker --metrics-port P`` on the test's Redis, ready; returns P."""
    port = free_port()
    argv = syncctl(
        "--log-format",
        "json",
        "worker",
        "--store",
        str(store),
        "--broker",
        redis_server.url,
        "--concurrency",
        "1",
        "--name",
        "metrics@pipeline",
        "--metrics-port",
        str(port),
    )
    worker = services.start("metrics@pipeline", argv, child_env(cache_dir))
    wait_ready(control_app, [worker])
    return port


def test_jobs_are_counted_and_health_follows_the_broker(
    metrics_worker: int,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    control_app: Celery,
    store: Path,
    cache_dir: Path,
    services: Services,
) -> None:
    """A committed and a trapping job show in jobs_total (with the failure's code), in the duration
    histogram and in the sandbox layers; /health is 200 while Redis answers and 503 once it is stopped; the
    worker's log lines are JSON."""
    port = metrics_worker
    [worker] = services.started
    assert health(port) == (200, {"status": "ok", "broker": "ok", "pid": worker.process.pid})
    assert value(port, "sync_worker_jobs_in_progress") == 0

    build_archive(store, "append.sync", append_guest())
    refresh(control_app, redis_client, "append.sync")
    wait_for(
        lambda: value(port, "sync_worker_jobs_total", outcome="committed", code="") == 1,
        JOB_BOUND,
        what="the committed job is counted",
    )
    assert value(port, "sync_worker_job_duration_seconds_count", outcome="committed") == 1
    assert value(port, "sync_worker_job_duration_seconds_sum", outcome="committed") > 0
    layers = {
        dict(labels)["layer"]: v
        for (name, labels), v in samples(port).items()
        if name == "sync_worker_sandbox_layers_active"
    }
    assert set(layers) == LAYERS
    assert set(layers.values()) <= {0.0, 1.0}
    assert value(port, "sync_worker_jobs_in_progress") == 0

    build_archive(store, "trap.sync", trap_guest())
    refresh(control_app, redis_client, "trap.sync")
    wait_for(
        lambda: value(port, "sync_worker_jobs_total", outcome="failed", code="guest_trap") == 1,
        JOB_BOUND,
        what="the trapping job is counted with its code",
    )
    assert value(port, "sync_worker_job_duration_seconds_count", outcome="failed") == 1
    assert value(port, "sync_worker_jobs_total", outcome="committed", code="") == 1

    redis_server.stop()
    assert health(port) == (503, {"status": "unhealthy", "broker": "unavailable", "pid": worker.process.pid})
    log_lines = [line for line in worker.log.read_text().splitlines() if line.strip()]
    assert log_lines
    docs = [json.loads(line) for line in log_lines]
    assert any(doc["logger"] == "workers.refresh" and doc.get("status") == "committed" for doc in docs)
    assert any(doc["logger"].startswith("celery.") for doc in docs)
    assert (cache_dir / "worker-metrics").is_dir()


def test_other_methods_and_paths_are_refused(metrics_worker: int) -> None:
    """POST gets 405 with Allow, an unknown path 404, and HEAD the GET's status without a body."""
    port = metrics_worker
    assert fetch(port, "/health", "POST")[0] == 405
    assert fetch(port, "/nothing")[0] == 404
    status, _, body = fetch(port, "/metrics", "HEAD")
    assert (status, body) == (200, b"")
