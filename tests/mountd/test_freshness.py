"""Reads of expired archives ask for a refresh once per request, through the broker, without waiting."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from dav_client import Response, get, propfind, request
from recording_hook import RecordingHook
from redis_server import RedisServer, wait_for
from store_manifests import EXPIRED

from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    QUEUE_REFRESH,
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    RefreshRequest,
    Settings,
    make_celery_app,
    make_redis,
)
from broker.claims import Claims
from broker.connection import BrokerConnection
from mountd import BrokerFreshness, ServerHandle, serve_background
from sync_format import BuildResult, commit_payload

AddArchive = Callable[..., BuildResult]
KEY = "reports/daily.txt.sync"
CONCURRENT_READS = 50


def test_expired_get_calls_the_hook_once_and_returns_the_bytes(
    add_archive: AddArchive, hook: RecordingHook, store: Path, url: str
) -> None:
    """Each GET or HEAD of an expired archive calls the hook exactly once with (key, generation, timeout)
    and still answers the bytes; fresh archives, listings and failed conditions of fresh ones do not."""
    add_archive("reports/daily.txt.sync", b"stale bytes", manifest=EXPIRED)
    add_archive("reports/fresh.txt.sync", b"fresh bytes")
    stale = get(url, "/reports/daily.txt")
    assert (stale.status, stale.body) == (200, b"stale bytes")
    assert hook.calls == [(KEY, 0, 42)]
    assert request(url, "HEAD", "/reports/daily.txt").status == 200
    assert len(hook.calls) == 2
    assert get(url, "/reports/fresh.txt").body == b"fresh bytes"
    propfind(url, "/reports/")
    propfind(url, "/reports/daily.txt", depth="0")
    assert len(hook.calls) == 2
    commit_payload(store / "reports/daily.txt.sync", 0, b"refreshed")
    assert get(url, "/reports/daily.txt").body == b"refreshed"
    assert len(hook.calls) == 2  # a commit restarts the TTL from updated_at


class FailingHook:
    """A hook that raises, as a broken implementation would."""

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Fail."""
        raise RuntimeError("hook is broken")


def test_a_failing_hook_never_fails_the_read(
    add_archive: AddArchive, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the hook raises, the GET still answers the bytes and the failure is logged with its traceback."""
    add_archive("reports/daily.txt.sync", b"stale bytes", manifest=EXPIRED)
    with (
        caplog.at_level("ERROR", logger="mountd.dav.provider"),
        serve_background(Settings(port=0), store, FailingHook()) as handle,
    ):
        resp = get(handle.mount_url, "/reports/daily.txt")
    assert (resp.status, resp.body) == (200, b"stale bytes")
    failures = [r for r in caplog.records if "freshness hook failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of this test, which the test may stop, start or pause."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private Redis with the service timeouts, for assertions."""
    client = make_redis(
        redis_server.url, socket_timeout=SERVICE_SOCKET_TIMEOUT, connect_timeout=SERVICE_CONNECT_TIMEOUT
    )
    yield client
    client.close()


def concurrent_gets(url: str, path: str, n: int = CONCURRENT_READS) -> list[Response]:
    """``n`` GETs of ``path`` at once, each on its own connection."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: get(url, path), range(n)))


def queued(admin: redis.Redis) -> list[RefreshRequest]:
    """The refresh requests waiting in the queue (kombu's Redis list), oldest first."""
    out = []
    for raw in reversed(admin.lrange(QUEUE_REFRESH, 0, -1)):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(RefreshRequest.from_json(args[0]))
    return out


@pytest.fixture
def broker_server(
    add_archive: AddArchive, store: Path, redis_server: RedisServer
) -> Iterator[tuple[ServerHandle, BrokerFreshness]]:
    """mountd with the broker-backed hook on the private Redis (replay every 0.1 s), one expired archive."""
    add_archive("reports/daily.txt.sync", b"stale bytes", manifest=EXPIRED)
    settings = Settings(port=0)
    connection = BrokerConnection(redis_server.celery_url, redis_server.url)
    freshness = BrokerFreshness.connect(settings, connection)
    freshness.replay_interval = 0.1
    try:
        with serve_background(settings, store, freshness) as handle:
            yield handle, freshness
    finally:
        freshness.close()


def test_fifty_concurrent_stale_reads_enqueue_one_refresh(
    broker_server: tuple[ServerHandle, BrokerFreshness], admin: redis.Redis
) -> None:
    """50 concurrent GETs of one expired archive all get the bytes and leave exactly one refresh message,
    whose claim is held, for the generation they read."""
    handle, freshness = broker_server
    responses = concurrent_gets(handle.mount_url, "/reports/daily.txt")
    assert [(r.status, r.body) for r in responses] == [(200, b"stale bytes")] * CONCURRENT_READS
    assert freshness.wait_idle(10)
    assert admin.llen(QUEUE_REFRESH) == 1
    [message] = queued(admin)
    assert (message.archive, message.base_generation) == (KEY, 0)
    holder = Claims(admin).holder(KEY)
    assert holder is not None
    assert holder.token == message.request_id
    counts = freshness.counts
    assert counts.stale_reads == CONCURRENT_READS
    assert counts.queued == 1
    assert counts.queued + counts.merged + counts.coalesced == CONCURRENT_READS
    concurrent_gets(handle.mount_url, "/reports/daily.txt", 5)
    assert freshness.wait_idle(10)
    assert admin.llen(QUEUE_REFRESH) == 1  # still one: later reads merge into the queued refresh


def test_reads_succeed_while_redis_is_down_and_the_refresh_follows_later(
    broker_server: tuple[ServerHandle, BrokerFreshness], redis_server: RedisServer, admin: redis.Redis
) -> None:
    """With Redis stopped, concurrent stale GETs all succeed and the refresh is deferred; once Redis is back
    the replay sends exactly one message."""
    handle, freshness = broker_server
    redis_server.stop()
    responses = concurrent_gets(handle.mount_url, "/reports/daily.txt")
    assert [(r.status, r.body) for r in responses] == [(200, b"stale bytes")] * CONCURRENT_READS
    assert freshness.wait_idle(10)
    assert freshness.counts.deferred >= 1
    assert KEY in freshness.pending
    redis_server.start()
    wait_for(lambda: admin.llen(QUEUE_REFRESH) == 1, 10, what="replayed refresh queued")
    wait_for(lambda: KEY not in freshness.pending, 10, what="pending emptied")
    assert [m.archive for m in queued(admin)] == [KEY]


def test_a_hung_redis_never_holds_up_a_read(
    add_archive: AddArchive, store: Path, redis_server: RedisServer, admin: redis.Redis
) -> None:
    """With Redis frozen (SIGSTOP) and a hook whose Redis calls may wait 60 s (instead of the producer's
    0.5 s), a stale GET answers while the hook is still blocked on Redis; after Redis resumes the refresh is
    queued."""
    add_archive("reports/daily.txt.sync", b"stale bytes", manifest=EXPIRED)
    settings = Settings(port=0)
    app = make_celery_app(settings, broker_url=redis_server.celery_url, producer=True)
    slow_client = make_redis(redis_server.url, socket_timeout=60, connect_timeout=PRODUCER_CONNECT_TIMEOUT)
    freshness = BrokerFreshness(app, slow_client, settings)
    try:
        with serve_background(settings, store, freshness) as handle:
            redis_server.pause()
            try:
                resp = get(handle.mount_url, "/reports/daily.txt")
                assert (resp.status, resp.body) == (200, b"stale bytes")
                assert freshness.counts.stale_reads == 1
                assert not freshness.wait_idle(0)  # the hook is still blocked on the frozen Redis
            finally:
                redis_server.resume()
            assert freshness.wait_idle(30)
            assert freshness.counts.queued == 1
            assert admin.llen(QUEUE_REFRESH) == 1
    finally:
        freshness.close()
