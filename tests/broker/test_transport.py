"""kombu's Redis transport with a reused client: used for every Redis URL, same traffic, one per pool."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu.transport import redis as kombu_redis
from redis_server import RedisServer

from broker import Settings, make_celery_app
from broker.transport import ReusingChannel, ReusingTransport


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///nonexistent/redis.sock"]
)
def test_every_redis_url_gets_the_reusing_transport(url: str) -> None:
    """TCP, TLS and Unix-socket broker URLs (the last spelled redis+socket:// for kombu) all use it."""
    app = make_celery_app(Settings(broker_url=url))
    for connection in (app.connection_for_read(), app.connection_for_write()):
        assert connection.get_transport_cls() is ReusingTransport
        assert connection.clone().get_transport_cls() is ReusingTransport
    assert issubclass(ReusingTransport, kombu_redis.Transport)


def test_channel_reuses_one_client_per_pool(tmp_path: Path) -> None:
    """Synchronous operations share one client until kombu drops the pool; then a new one is built."""
    with RedisServer(tmp_path / "redis") as server:
        app = make_celery_app(Settings(broker_url=server.url))
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            assert isinstance(channel, ReusingChannel)
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second
                assert first.connection_pool is channel.pool
                first.set("k", "v")
                assert second.get("k") == b"v"
            # The async client (BRPOP, pub/sub) stays kombu's own, separate object.
            assert channel.client is not first
            channel._disconnect_pools()
            with channel.conn_or_acquire() as third:
                assert third is not first
                assert third.connection_pool is channel.pool
                assert third.get("k") == b"v"


def test_worker_traffic_is_unchanged(tmp_path: Path) -> None:
    """Delivery and ack bookkeeping through the reused client write and clear kombu's unacked records."""
    with RedisServer(tmp_path / "redis") as server:
        app = make_celery_app(Settings(broker_url=server.url))
        probe = server.client()
        with app.connection_for_write() as connection:
            queue = connection.SimpleQueue("sync.transport-test")
            queue.put({"n": 1})
            message = queue.get(timeout=5)
            assert message.payload == {"n": 1}
            assert probe.hlen("unacked") == 1
            assert probe.zcard("unacked_index") == 1
            message.ack()
            assert probe.hlen("unacked") == 0
            assert probe.zcard("unacked_index") == 0
            queue.close()
        probe.close()
