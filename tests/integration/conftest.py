"""Fixtures of the pipeline tests: a private Redis per test, real worker processes, producers and a gate.

A test that needs Redis gets its own ``redis-server`` (``RedisServer`` on a free port, which it may stop
and restart), and starts the processes it needs through ``services``, which stops them all at the end
(SIGTERM, then SIGKILL of the whole process group after a bounded wait) and prints their logs when the
test failed. ``workers`` starts named ``syncctl worker`` processes on the test's Redis and waits until
each answers a ping; it depends on ``redis_server`` before ``services``, so workers are stopped before
their Redis. ``CELERY_TRACE_APP`` is set before Celery is imported, as in the broker tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("CELERY_TRACE_APP", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery  # type: ignore[import-untyped]
from pipeline_harness import (
    Gate,
    ServiceProcess,
    Services,
    StartWorkers,
    child_env,
    retry_worker_argv,
    running_gate,
    wait_ready,
    worker_argv,
)
from redis_server import RedisServer

from broker import (
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    Settings,
    make_celery_app,
    make_redis,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Remember each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """Processes of this test; all stopped at the end, their logs printed if the test failed."""
    started = Services(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(started.report())  # shown with the failure, under "Captured stdout teardown"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop and restart on the same port."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test's Redis with the service timeouts."""
    client = make_redis(
        redis_server.url, socket_timeout=SERVICE_SOCKET_TIMEOUT, connect_timeout=SERVICE_CONNECT_TIMEOUT
    )
    yield client
    client.close()


@pytest.fixture
def control_app(redis_server: RedisServer) -> Iterator[Celery]:
    """A Celery app on the test's Redis for control commands (ping) and sending."""
    app = make_celery_app(Settings(), broker_url=redis_server.celery_url)
    yield app
    app.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The store directory the workers serve."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """The workers' SYNC_CACHE_DIR (compiled guest modules)."""
    return tmp_path / "cache"


@pytest.fixture
def workers(
    redis_server: RedisServer, services: Services, control_app: Celery, store: Path, cache_dir: Path
) -> StartWorkers:
    """Start named workers on the test's Redis and wait until every one answers ping.

    Call it as ``workers("w1@pipeline", "w2@pipeline", concurrency=1, fast_retry=False)``; with
    ``fast_retry`` the workers are ``retry_worker.py`` (a retry policy of seconds), else ``syncctl worker``.
    Keyword arguments in capitals are added to the workers' environment (``SYNC_RUNNING_CLAIM_TTL="2"``).
    """

    def start(
        *names: str, concurrency: int = 1, fast_retry: bool = False, **extra_env: str
    ) -> list[ServiceProcess]:
        env = child_env(cache_dir, **extra_env)
        argv = retry_worker_argv if fast_retry else worker_argv
        started = [
            services.start(name, argv(name, store, broker=redis_server.url, concurrency=concurrency), env)
            for name in names
        ]
        wait_ready(control_app, started)
        return started

    return start


@pytest.fixture
def gate() -> Iterator[Gate]:
    """An HTTP gate on 127.0.0.1 that holds requests until the test opens it."""
    with running_gate() as served:
        yield served
