"""``request_refresh``: one message per archive under concurrency, merging, and never failing on outages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from burst_requests import burst
from celery import Celery  # type: ignore[import-untyped]
from queued_messages import queue_length, queued_requests
from redis_server import RedisServer, free_port, wait_for

from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    SwappedSubscription,
    list_status,
    make_celery_app,
    make_redis,
    read_status,
    replay_pending,
    request_refresh,
)
from broker.celery_app import TimeLimits
from broker.claims import STALE_QUEUED_CLAIM_MS, Claims, claim_key
from broker.requests import WantedRefresh
from broker.swapped import SwappedEvent

HERE = Path(__file__).resolve().parent
Worker = subprocess.Popen[bytes]
ARCHIVE = "reports/daily.csv.sync"
#: Upper bound for a deferred request; the producer timeouts make it far shorter in practice.
DEFER_BOUND = 2.0


def producer(url: str) -> tuple[Celery, redis.Redis]:
    """A producer app and Redis client with mountd's short timeouts."""
    app = make_celery_app(Settings(), broker_url=url, producer=True)
    client = make_redis(url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT)
    return app, client


@pytest.fixture
def session_producer(redis_server: RedisServer, redis_client: redis.Redis) -> tuple[Celery, redis.Redis]:
    """A producer on the session's (emptied) Redis."""
    return producer(redis_server.url)


def test_first_request_queues_one_message_named_by_its_request(
    session_producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """The first request claims with its id as token and sends one ``sync.refresh`` message carrying it."""
    app, client = session_producer
    request = RefreshRequest.new(ARCHIVE, 3)
    assert request_refresh(app, client, request, PendingRefreshes()) is RequestResult.QUEUED
    assert queued_requests(redis_client) == [request]
    envelope = json.loads(str(redis_client.lindex("sync.refresh", 0)))
    assert envelope["headers"]["id"] == request.request_id
    holder = Claims(redis_client).holder(ARCHIVE)
    assert holder is not None
    assert holder.token == request.request_id


def test_later_requests_merge_into_the_queued_one(
    session_producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """While a refresh is queued, further requests send nothing and are counted on the claim."""
    app, client = session_producer
    pending = PendingRefreshes()
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 3), pending) is RequestResult.QUEUED
    for _ in range(3):
        assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 3), pending) is RequestResult.MERGED
    assert request_refresh(app, client, RefreshRequest.new("other.sync", 0), pending) is RequestResult.QUEUED
    assert queue_length(redis_client) == 2
    holder = Claims(redis_client).holder(ARCHIVE)
    assert holder is not None
    assert holder.merged == 3


def test_time_limits_travel_with_the_message(
    session_producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """Limits derived from the manifest's timeout are set on the message (hard, soft)."""
    app, client = session_producer
    request = RefreshRequest.new(ARCHIVE, 0)
    limits = TimeLimits(soft=95.0, hard=125.0)
    request_refresh(app, client, request, PendingRefreshes(), limits=limits)
    envelope = json.loads(str(redis_client.lindex("sync.refresh", 0)))
    assert envelope["headers"]["timelimit"] == [125.0, 95.0]


def test_thousand_threads_enqueue_exactly_one_message(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """1,000 threads requesting the same archive at once produce one message; the rest merge."""
    counts = burst(redis_server.url, ARCHIVE, 1000)
    assert counts == Counter({"queued": 1, "merged": 999})
    assert queue_length(redis_client) == 1
    holder = Claims(redis_client).holder(ARCHIVE)
    assert holder is not None
    assert holder.merged == 999


def test_processes_enqueue_exactly_one_message(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """4 processes x 250 threads, released together, produce one message between them."""
    children = [
        subprocess.Popen(
            [sys.executable, str(HERE / "burst_requests.py"), redis_server.url, ARCHIVE, "250"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        total: Counter[str] = Counter()
        for child in children:
            out, _ = child.communicate(timeout=120)
            assert child.returncode == 0
            total.update(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert total == Counter({"queued": 1, "merged": 999})
    assert queue_length(redis_client) == 1


@pytest.fixture
def start_probe_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    """Starts real Celery worker processes (``probe_worker.py``) on the session Redis; SIGTERM at the end."""
    started: list[Worker] = []
    log = (tmp_path / "worker.log").open("wb")

    def start() -> Worker:
        worker = subprocess.Popen(
            [sys.executable, str(HERE / "probe_worker.py"), redis_server.celery_url, "probe@test"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=HERE,
        )
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        log.close()


def test_a_real_worker_runs_a_burst_exactly_once(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    start_probe_worker: Callable[[], Worker],
) -> None:
    """After a 1,000-thread burst, a real worker runs the refresh once, records it, notifies and releases;
    the next request after that is queued again."""
    executions = f"probe:executions:{ARCHIVE}"
    counts = burst(redis_server.url, ARCHIVE, 1000)
    assert counts == Counter({"queued": 1, "merged": 999})
    assert queue_length(redis_client) == 1
    with SwappedSubscription(redis_client) as swapped:
        worker = start_probe_worker()
        assert swapped.get(timeout=60) == SwappedEvent(ARCHIVE, 1)
    wait_for(lambda: Claims(redis_client).holder(ARCHIVE) is None, 30, what="claim released")
    assert redis_client.get(executions) == "1"
    assert redis_client.get(f"probe:superseded:{ARCHIVE}") is None
    assert queue_length(redis_client) == 0
    record = read_status(redis_client, ARCHIVE)
    assert record is not None
    assert (record.status, record.generation, record.worker) == ("committed", 1, "probe@test")
    assert record.attempts == 1
    assert worker.poll() is None
    app, client = producer(redis_server.url)
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 1), PendingRefreshes()) == "queued"
    wait_for(lambda: redis_client.get(executions) == "2", 60, what="second refresh after release ran")
    assert [r.archive for r in list_status(redis_client)] == [ARCHIVE]


def test_redis_down_defers_fast_and_replays_exactly_once(private_redis: RedisServer) -> None:
    """With Redis stopped, requests return ``DEFERRED`` quickly and are replayed once when it is back."""
    app, client = producer(private_redis.url)
    pending = PendingRefreshes()
    assert request_refresh(app, client, RefreshRequest.new("warm-up.sync", 0), pending) == "queued"
    private_redis.stop()
    first = RefreshRequest.new(ARCHIVE, 3)
    started = time.monotonic()
    assert request_refresh(app, client, first, pending) is RequestResult.DEFERRED
    assert time.monotonic() - started < DEFER_BOUND
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 4), pending) is RequestResult.DEFERRED
    assert len(pending) == 1
    report = replay_pending(app, client, pending)
    assert (report.queued, report.remaining) == (0, 1)
    private_redis.start()
    wait_for(lambda: replay_pending(app, client, pending).remaining == 0, 30, what="pending replayed")
    assert replay_pending(app, client, pending).queued == 0
    requests = queued_requests(private_redis.client())
    assert len(requests) == 1
    assert (requests[0].request_id, requests[0].base_generation) == (first.request_id, 4)
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 4), pending) is RequestResult.MERGED


def test_hung_redis_defers_within_the_timeouts(private_redis: RedisServer) -> None:
    """A frozen Redis (accepting connections, never answering) costs a request one timeout, not a hang."""
    app, client = producer(private_redis.url)
    pending = PendingRefreshes()
    private_redis.pause()
    try:
        started = time.monotonic()
        assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 0), pending) is RequestResult.DEFERRED
        assert time.monotonic() - started < DEFER_BOUND
    finally:
        private_redis.resume()
    assert ARCHIVE in pending


def test_failed_send_releases_the_claim(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """When the claim succeeds but the broker refuses the message, the claim is released and the refresh
    deferred; replaying through a working broker sends it."""
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    app, _ = producer(dead_broker)
    _, client = producer(redis_server.url)
    pending = PendingRefreshes()
    started = time.monotonic()
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 0), pending) is RequestResult.DEFERRED
    assert time.monotonic() - started < DEFER_BOUND
    assert Claims(redis_client).holder(ARCHIVE) is None
    assert queue_length(redis_client) == 0
    good_app, _ = producer(redis_server.url)
    assert replay_pending(good_app, client, pending).queued == 1
    assert queue_length(redis_client) == 1


def test_replay_retakes_a_claim_its_failed_send_left_behind(
    session_producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """A pending request whose claim could not be released re-takes it (same token) instead of merging."""
    app, client = session_producer
    request = RefreshRequest.new(ARCHIVE, 0)
    pending = PendingRefreshes()
    pending.add(WantedRefresh(request))
    assert Claims(redis_client).claim(ARCHIVE, request.request_id, 60_000).ok
    assert replay_pending(app, client, pending).queued == 1
    assert queued_requests(redis_client) == [request]


def test_a_new_request_for_a_pending_archive_uses_the_pending_one(
    session_producer: tuple[Celery, redis.Redis], redis_client: redis.Redis
) -> None:
    """Redis back, a fresh request for a pending archive sends the pending request and clears it."""
    app, client = session_producer
    earlier = RefreshRequest.new(ARCHIVE, 2)
    pending = PendingRefreshes()
    pending.add(WantedRefresh(earlier))
    assert request_refresh(app, client, RefreshRequest.new(ARCHIVE, 5), pending) is RequestResult.QUEUED
    assert len(pending) == 0
    [sent] = queued_requests(redis_client)
    assert (sent.request_id, sent.base_generation) == (earlier.request_id, 5)


def test_pending_set_is_deduplicated_and_bounded() -> None:
    """One entry per archive (highest base generation, first id); beyond the limit the oldest is dropped."""
    pending = PendingRefreshes(limit=2)
    first = RefreshRequest.new("a.sync", 1)
    assert pending.add(WantedRefresh(first))
    assert not pending.add(WantedRefresh(RefreshRequest.new("a.sync", 7)))
    assert not pending.add(WantedRefresh(RefreshRequest.new("a.sync", 2)))
    entry = pending.get("a.sync")
    assert entry is not None
    assert (entry.request.request_id, entry.request.base_generation) == (first.request_id, 7)
    assert pending.add(WantedRefresh(RefreshRequest.new("b.sync", 0)))
    assert pending.add(WantedRefresh(RefreshRequest.new("c.sync", 0)))
    assert [w.request.archive for w in pending.snapshot()] == ["b.sync", "c.sync"]
    assert pending.dropped == 1
    pending.discard(RefreshRequest.new("b.sync", 0))
    assert "b.sync" in pending
    with pytest.raises(ValueError, match="limit"):
        PendingRefreshes(limit=0)


@pytest.mark.parametrize("two_step", [False, True], ids=["one-script", "claim-then-send"])
def test_a_merge_into_a_claim_whose_message_was_lost_sends_it_again(
    redis_server: RedisServer, redis_client: redis.Redis, two_step: bool
) -> None:
    """A queued claim whose message is gone (a Redis restart can drop one between the queue and a worker)
    does not block its archive for the claim's 10 minutes: ``STALE_QUEUED_CLAIM_MS`` after the send, a
    merged request sends the holder's message again, under the holder's token; once, not per read."""
    app, client = producer(redis_server.url)
    if two_step:  # another name for the same server: claimed_send declines, the producer claims, then sends
        client = make_redis(
            redis_server.url.replace("127.0.0.1", "localhost"),
            socket_timeout=PRODUCER_SOCKET_TIMEOUT,
            connect_timeout=PRODUCER_CONNECT_TIMEOUT,
        )
    first = RefreshRequest.new(ARCHIVE, 0)
    assert request_refresh(app, client, first, PendingRefreshes()) is RequestResult.QUEUED
    redis_client.delete("sync.refresh")  # the message is lost
    merged = request_refresh(app, client, RefreshRequest.new(ARCHIVE, 0), PendingRefreshes())
    assert merged is RequestResult.MERGED
    assert queue_length(redis_client) == 0
    key = claim_key(ARCHIVE)
    redis_client.hset(key, "sent", int(str(redis_client.hget(key, "sent"))) - STALE_QUEUED_CLAIM_MS)
    later = RefreshRequest.new(ARCHIVE, 1)
    for _ in range(3):
        assert request_refresh(app, client, later, PendingRefreshes()) is RequestResult.MERGED
    [again] = queued_requests(redis_client)
    assert again.request_id == first.request_id
    assert again.base_generation == 1
    envelope = json.loads(str(redis_client.lindex("sync.refresh", 0)))
    assert envelope["headers"]["id"] == first.request_id
    holder = Claims(redis_client).holder(ARCHIVE)
    assert holder is not None
    assert (holder.token, holder.merged) == (first.request_id, 4)
