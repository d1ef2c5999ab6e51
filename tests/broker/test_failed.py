"""Failed jobs: kept newest first for operators, bounded, with the request to send again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from broker import FailedJob, MalformedRecord, RefreshRequest, list_failed
from broker.contract import FAILED_KEY
from broker.failed import FAILED_LENGTH, record_failed

NOW = datetime(2025, 5, 1, tzinfo=UTC)


def failed_job(i: int) -> FailedJob:
    """A failed job numbered ``i``."""
    request = RefreshRequest("a.sync", i, NOW, f"{i:032x}")
    return FailedJob(request, "guest_trap", "unreachable", "w1", request.request_id, 1, NOW)


def test_failed_jobs_round_trip_newest_first(redis_client: redis.Redis) -> None:
    """Recorded jobs come back intact, newest first, and ``limit`` bounds the answer."""
    for i in range(3):
        record_failed(redis_client, failed_job(i))
    jobs = list_failed(redis_client)
    assert jobs == [failed_job(2), failed_job(1), failed_job(0)]
    assert list_failed(redis_client, limit=1) == [failed_job(2)]
    assert list_failed(redis_client, limit=0) == []


def test_failed_list_is_bounded(redis_client: redis.Redis) -> None:
    """The list never holds more than ``FAILED_LENGTH`` entries; the oldest go first."""
    for i in range(FAILED_LENGTH + 3):
        record_failed(redis_client, failed_job(i))
    assert redis_client.llen(FAILED_KEY) == FAILED_LENGTH
    assert list_failed(redis_client, limit=1)[0] == failed_job(FAILED_LENGTH + 2)


def test_corrupt_entries_raise_our_error(redis_client: redis.Redis) -> None:
    """An entry that is not a failed job raises ``MalformedRecord``."""
    redis_client.lpush(FAILED_KEY, '{"request": {}}')
    with pytest.raises(MalformedRecord):
        list_failed(redis_client)
