"""Claim and enqueue in one script (``broker.claimed_send``): one round trip, kombu's own message, atomic."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery  # type: ignore[import-untyped]
from queued_messages import queue_length, queued_requests
from redis.connection import AbstractConnection
from redis_server import RedisServer

import broker.claimed_send
from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    QUEUE_REFRESH,
    TASK_REFRESH,
    EmbeddedRedis,
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    make_celery_app,
    make_redis,
    replay_pending,
    request_refresh,
)
from broker.celery_app import TimeLimits
from broker.claims import Claims, claim_key

#: Round trips of one request once the producer's connections are up and the scripts loaded.
PRODUCER_ROUND_TRIPS = 1
EVENT_PATTERN = "/0.celeryev/*"


class WireCounter:
    """Counts request batches written by every redis-py connection of this process (ours and kombu's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        original = AbstractConnection.send_packed_command

        def counting(connection: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
            self.sent += 1
            return original(connection, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


@pytest.fixture
def producer(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[tuple[Celery, redis.Redis]]:
    app = make_celery_app(Settings(), broker_url=redis_server.url, producer=True)
    client = make_redis(
        redis_server.url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
    )
    yield app, client
    client.close()
    app.close()


def _events(redis_client: redis.Redis) -> Any:
    pubsub = redis_client.pubsub()
    pubsub.psubscribe(EVENT_PATTERN)
    assert pubsub.get_message(timeout=1.0)["type"] == "psubscribe"
    return pubsub


def _published(pubsub: Any) -> list[dict[str, Any]]:
    events = []
    while (message := pubsub.get_message(timeout=0.3)) is not None:
        envelope = json.loads(message["data"])
        events.append(json.loads(base64.b64decode(envelope["body"])))
    return events


def test_a_request_costs_one_round_trip_on_the_wire(
    producer: tuple[Celery, redis.Redis], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim, enqueue and the ``task-sent`` event are one script: one round trip, queued or merged
    (three before: the claim script, kombu's LPUSH, the event's PUBLISH)."""
    app, client = producer
    pending = PendingRefreshes()
    warm = RefreshRequest.new("warm.sync", 0)  # connects, declares the queue, loads the script
    assert request_refresh(app, client, warm, pending) is RequestResult.QUEUED
    counter = WireCounter(monkeypatch)
    assert request_refresh(app, client, RefreshRequest.new("a.sync", 0), pending) is RequestResult.QUEUED
    queued = counter.sent
    assert request_refresh(app, client, RefreshRequest.new("a.sync", 0), pending) is RequestResult.MERGED
    merged = counter.sent - queued
    assert (queued, merged) == (PRODUCER_ROUND_TRIPS, PRODUCER_ROUND_TRIPS)
    assert [r.archive for r in queued_requests(redis_client)] == ["warm.sync", "a.sync"]


def test_the_message_is_the_one_celery_sends(
    producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """The pushed envelope has exactly the fields, headers and properties of a plain ``send_task``."""
    app, client = producer
    request = RefreshRequest.new("a.sync", 3)
    limits = TimeLimits(soft=65.0, hard=95.0)
    pubsub = _events(redis_client)
    assert request_refresh(app, client, request, PendingRefreshes(), limits=limits) is RequestResult.QUEUED
    [ours_sent] = _published(pubsub)
    ours = json.loads(redis_client.rpop(QUEUE_REFRESH))
    app.send_task(
        TASK_REFRESH,
        args=[request.to_json()],
        queue=QUEUE_REFRESH,
        task_id=request.request_id,
        retry=False,
        soft_time_limit=limits.soft,
        time_limit=limits.hard,
    )
    [plain_sent] = _published(pubsub)
    plain = json.loads(redis_client.rpop(QUEUE_REFRESH))
    assert sorted(ours) == sorted(plain)
    assert ours["headers"].keys() == plain["headers"].keys()
    volatile = {"delivery_tag", "reply_to"}
    assert {k: v for k, v in ours["properties"].items() if k not in volatile} == {
        k: v for k, v in plain["properties"].items() if k not in volatile
    }
    assert ours["headers"]["task"] == TASK_REFRESH
    assert ours["headers"]["timelimit"] == plain["headers"]["timelimit"] == [95.0, 65.0]
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(plain["body"]))
    assert ours_sent["type"] == plain_sent["type"] == "task-sent"
    assert ours_sent["uuid"] == plain_sent["uuid"] == request.request_id
    assert ours_sent.keys() == plain_sent.keys()


def test_a_refused_claim_enqueues_and_announces_nothing(
    producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    app, client = producer
    Claims(redis_client).claim("a.sync", "someone-else", 60_000)
    pubsub = _events(redis_client)
    result = request_refresh(app, client, RefreshRequest.new("a.sync", 0), PendingRefreshes())
    assert result is RequestResult.MERGED
    assert queue_length(redis_client) == 0
    assert _published(pubsub) == []
    assert redis_client.hget(claim_key("a.sync"), "token") == "someone-else"


def test_a_failing_enqueue_leaves_no_claim(
    producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """The script checks what could fail before it claims: a queue key of the wrong type claims nothing."""
    app, client = producer
    redis_client.set(QUEUE_REFRESH, "not a list")
    with pytest.raises(redis.ResponseError, match="holds a string"):
        request_refresh(app, client, RefreshRequest.new("a.sync", 0), PendingRefreshes())
    assert not redis_client.exists(claim_key("a.sync"))


def test_redis_down_at_the_script_leaves_no_claim_and_the_replay_sends_once(
    private_redis: RedisServer,
) -> None:
    """Redis gone when the script would run: nothing is claimed or sent; the replay claims and sends once."""
    app = make_celery_app(Settings(), broker_url=private_redis.url, producer=True)
    client = make_redis(
        private_redis.url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
    )
    admin = make_redis(private_redis.url, socket_timeout=5.0, connect_timeout=5.0)
    pending = PendingRefreshes()
    try:
        assert request_refresh(app, client, RefreshRequest.new("w.sync", 0), pending) is RequestResult.QUEUED
        script = broker.claimed_send._CLAIM_AND_SEND_LUA
        real = client.register_script

        def stop_then_register(text: str) -> Any:
            if text == script:
                private_redis.stop()  # kombu built and handed over its message; the script never arrives
            return real(text)

        client.register_script = stop_then_register  # type: ignore[method-assign]
        request = RefreshRequest.new("a.sync", 0)
        assert request_refresh(app, client, request, pending) is RequestResult.DEFERRED
        client.register_script = real  # type: ignore[method-assign]
        private_redis.start()  # no persistence: the restarted Redis is empty, as after a flush
        assert queue_length(admin) == 0
        assert not admin.exists(claim_key("a.sync"))
        assert replay_pending(app, client, pending).queued == 1
        assert [r.request_id for r in queued_requests(admin)] == [request.request_id]
        assert admin.hget(claim_key("a.sync"), "token") == request.request_id
    finally:
        client.close()
        admin.close()
        app.close()


def test_a_broker_on_another_database_claims_then_sends(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims and queue in different databases cannot share a script: the two-step path claims, then sends."""
    app = make_celery_app(Settings(), broker_url=redis_server.url.rsplit("/", 1)[0] + "/1", producer=True)
    client = make_redis(redis_server.url, socket_timeout=5.0, connect_timeout=5.0)
    queue_db = make_redis(redis_server.url.rsplit("/", 1)[0] + "/1", socket_timeout=5.0, connect_timeout=5.0)
    calls = []
    real = broker.claimed_send.claim_and_send

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(result := real(*args, **kwargs))
        return result

    monkeypatch.setattr(broker.requests, "claim_and_send", spy)
    try:
        request = RefreshRequest.new("a.sync", 0)
        assert request_refresh(app, client, request, PendingRefreshes()) is RequestResult.QUEUED
        assert calls == [None]
        assert client.hget(claim_key("a.sync"), "token") == request.request_id
        assert [r.request_id for r in queued_requests(queue_db)] == [request.request_id]
        assert queue_length(redis_client) == 0
    finally:
        queue_db.flushdb()
        queue_db.close()
        client.close()
        app.close()


def test_the_embedded_broker_on_a_unix_socket_also_takes_one_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default deployment: the broker URL is ``redis+socket://``, the claims client ``unix://`` (no
    database in either URL); both are the same database, so the one-script path is used."""
    (tmp_path / "broker").mkdir(mode=0o700)
    embedded = EmbeddedRedis(tmp_path / "broker").start()
    app = make_celery_app(Settings(), broker_url=embedded.celery_url, producer=True)
    client = make_redis(
        embedded.redis_url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
    )
    try:
        pending = PendingRefreshes()
        warm = RefreshRequest.new("warm.sync", 0)
        assert request_refresh(app, client, warm, pending) is RequestResult.QUEUED
        counter = WireCounter(monkeypatch)
        assert request_refresh(app, client, RefreshRequest.new("a.sync", 0), pending) is RequestResult.QUEUED
        assert counter.sent == PRODUCER_ROUND_TRIPS
        assert [r.archive for r in queued_requests(client)] == ["warm.sync", "a.sync"]
    finally:
        client.close()
        app.close()
        embedded.close()
