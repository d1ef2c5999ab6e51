"""Fixtures of the broker tests: a private Redis per session (flushed per test), one per test for outages.

``CELERY_TRACE_APP`` is set before Celery is imported so that any use of an implicit default app would
show up (CONTRIBUTING.md: no module-level Celery app, no implicit ``current_app``).
"""

from __future__ import annotations

import os

os.environ.setdefault("CELERY_TRACE_APP", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer

from broker import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, Settings, make_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free port, shared by the session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis, which is emptied before the test."""
    client = make_redis(
        redis_server.url, socket_timeout=SERVICE_SOCKET_TIMEOUT, connect_timeout=SERVICE_CONNECT_TIMEOUT
    )
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop, restart or pause."""
    with RedisServer(tmp_path / "private-redis") as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a cache directory of this test."""
    return Settings(cache_dir=tmp_path / "cache")
