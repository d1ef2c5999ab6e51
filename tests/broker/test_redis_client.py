"""Redis clients: URL spellings, redaction, fast failure and translation of outages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis_server import RedisServer

from broker import PRODUCER_CONNECT_TIMEOUT, PRODUCER_SOCKET_TIMEOUT, SettingsError, make_redis, ping
from broker.redis_client import client_location, redact_url, to_celery_url, to_redis_url
from sync_format.errors import BrokerUnavailable


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6380/1", "redis://:***@host:6380/1"),
        ("redis://user:s3cret@host/0", "redis://user:***@host/0"),
        ("rediss://user@host/0", "rediss://user@host/0"),
        ("redis://host/0?password=s3cret&db=2", "redis://host/0?password=***&db=2"),
        ("redis+socket:///run/redis.sock", "redis+socket:///run/redis.sock"),
    ],
)
def test_redact_url_removes_passwords(url: str, expected: str) -> None:
    """Passwords in the userinfo or the query are replaced by ``***``; everything else stays."""
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url)


def test_socket_urls_convert_between_celery_and_redis_py() -> None:
    """``redis+socket://`` (Celery) and ``unix://`` (redis-py) name the same socket."""
    assert to_redis_url("redis+socket:///d/redis.sock") == "unix:///d/redis.sock"
    assert to_celery_url("unix:///d/redis.sock") == "redis+socket:///d/redis.sock"
    assert to_redis_url("redis://h:1/0") == to_celery_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize("url", ["amqp://guest@host//", "filesystem://", "http://redis"])
def test_non_redis_urls_are_settings_errors(url: str) -> None:
    """A broker URL that is not Redis is refused as a setting."""
    with pytest.raises(SettingsError):
        to_redis_url(url)
    with pytest.raises(SettingsError):
        make_redis(url, socket_timeout=1, connect_timeout=1)


def test_client_fails_fast_and_with_our_error_when_redis_is_down(private_redis: RedisServer) -> None:
    """With the producer timeouts and no retries, a stopped Redis gives ``BrokerUnavailable`` at once."""
    client = make_redis(
        private_redis.url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
    )
    ping(client)
    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        ping(client)
    assert time.monotonic() - started < 2.0
    assert info.value.url == client_location(client)
    assert info.value.__cause__ is not None


def test_client_gives_up_on_a_hung_redis(private_redis: RedisServer) -> None:
    """A Redis that accepts connections but never answers costs one socket timeout, not a hang."""
    client = make_redis(private_redis.url, socket_timeout=0.3, connect_timeout=0.3)
    ping(client)
    private_redis.pause()
    try:
        with pytest.raises(BrokerUnavailable):
            ping(client)
    finally:
        private_redis.resume()
    ping(client)


def test_bounded_pool_and_unix_sockets_work(tmp_path: Path) -> None:
    """A client with ``max_connections`` reaches a Redis on a Unix socket, given either URL spelling."""
    with RedisServer(tmp_path / "unix", unix_socket=True) as server:
        for url in (server.url, server.celery_url):
            client = make_redis(url, socket_timeout=1, connect_timeout=1, max_connections=2)
            ping(client)
            assert client_location(client) == server.url
            client.close()


def test_redact_url_keeps_socket_urls_intact() -> None:
    """A password in the query of a socket URL is hidden without losing the empty authority."""
    assert redact_url("unix:///d/redis.sock?password=x&db=1") == "unix:///d/redis.sock?password=***&db=1"
