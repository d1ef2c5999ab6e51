"""The scheduler lease and summary in Redis (``broker.scheduling``): one holder at a time, renewal and release
only by the holder, expiry frees it for a takeover; claims are probed in one round trip; summaries are
published with a TTL and read back by scope."""

from __future__ import annotations

import subprocess
import sys

import redis
from redis_server import RedisServer, wait_for

from broker.claims import Claims
from broker.scheduling import (
    SCHEDULER_LEASE_PREFIX,
    SchedulerLease,
    claims_held,
    read_summaries,
    write_summary,
)


def test_one_holder_at_a_time_and_only_the_holder_renews_or_releases(redis_client: redis.Redis) -> None:
    """The first replica takes the lease and renews it; the second cannot take it, and its release does
    nothing; once the holder releases, the second takes it."""
    first = SchedulerLease(redis_client, "/store")
    second = SchedulerLease(redis_client, "/store")
    other_store = SchedulerLease(redis_client, "/elsewhere")
    assert first.acquire()
    assert first.acquire()  # a renewal
    assert not second.acquire()
    assert other_store.acquire()
    assert not second.release()
    assert first.holder() == first.token
    assert first.release()
    assert second.acquire()
    assert redis_client.pttl(SCHEDULER_LEASE_PREFIX + "/store") > 0


def test_a_dead_holder_s_lease_expires_and_is_taken_over(redis_client: redis.Redis) -> None:
    """A holder that stops renewing loses the lease after its TTL; the other replica takes it and the old
    holder cannot renew it back."""
    dead = SchedulerLease(redis_client, "/store", ttl_ms=200)
    alive = SchedulerLease(redis_client, "/store", ttl_ms=200)
    assert dead.acquire()
    wait_for(alive.acquire, 5.0, interval=0.05, what="the lease taken over")
    assert not dead.acquire()
    assert alive.holder() == alive.token


def test_claims_are_probed_in_order(redis_client: redis.Redis) -> None:
    """``claims_held`` tells which archives have a claim (a refresh queued or running)."""
    Claims(redis_client).claim("b.txt.sync", "token", 60_000)
    assert claims_held(redis_client, ["a.txt.sync", "b.txt.sync"]) == [False, True]
    assert claims_held(redis_client, []) == []


def test_summaries_are_read_back_by_scope(redis_client: redis.Redis) -> None:
    """A published summary is read back under its scope and lives a bounded time."""
    write_summary(redis_client, "/store", {"archives": 3, "expired": 1})
    assert read_summaries(redis_client) == {"/store": {"archives": 3, "expired": 1}}
    assert 0 < redis_client.pttl("sync:scheduler:summary:/store") <= 10_000


def test_syncctl_status_prints_the_freshness_summary(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """``syncctl status`` shows a line per published scheduler summary: archives, expired, queue, lag."""
    summary = {"archives": 150, "expired": 2, "waiting": 5, "in_flight": 64, "window": 64}
    write_summary(redis_client, "/srv/store", {**summary, "lag_count": 4, "lag_sum": 2.0, "lag_max": 1.5})
    done = subprocess.run(
        [sys.executable, "-m", "syncctl", "status", "--broker", redis_server.url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert (
        "freshness /srv/store: 150 archives, 2 expired now, queue 5 waiting + 64 in flight (window 64), "
        "refresh lag mean 0.5 s max 1.5 s over 4 commits"
    ) in done.stdout
