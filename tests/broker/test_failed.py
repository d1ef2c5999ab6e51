"""Failed jobs: kept newest first for operators, bounded, with the request to send again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from broker import FailedJob, MalformedRecord, RefreshRequest, list_failed
from broker.contract import FAILED_INDEX_KEY, FAILED_KEY, ArchiveKey
from broker.failed import FAILED_LENGTH, forget_failed, record_failed

NOW = datetime(2025, 5, 1, tzinfo=UTC)


def failed_job(i: int, archive: str | None = None) -> FailedJob:
    """A failed job numbered ``i``, of ``archive`` (its own archive ``a<i>.sync`` by default)."""
    request = RefreshRequest(archive or f"a{i}.sync", i, NOW, f"{i:032x}")
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


def test_an_archive_keeps_only_its_latest_failure(redis_client: redis.Redis) -> None:
    """A new failure of an archive replaces its previous entry (newest first, the others in their order), so
    an archive that fails again and again holds one place: the others' failures stay (before, 1,000 failures
    of one archive pushed every other one out). Forgetting it removes it and its index entry."""
    record_failed(redis_client, failed_job(0))
    for i in range(1, FAILED_LENGTH + 5):
        record_failed(redis_client, failed_job(i, "looping.sync"))
    record_failed(redis_client, failed_job(FAILED_LENGTH + 5))
    assert list_failed(redis_client) == [
        failed_job(FAILED_LENGTH + 5),
        failed_job(FAILED_LENGTH + 4, "looping.sync"),
        failed_job(0),
    ]
    assert forget_failed(redis_client, ArchiveKey("looping.sync")) == 1
    assert list_failed(redis_client) == [failed_job(FAILED_LENGTH + 5), failed_job(0)]
    assert sorted(redis_client.hkeys(FAILED_INDEX_KEY)) == sorted([f"a{FAILED_LENGTH + 5}.sync", "a0.sync"])


def test_the_index_names_only_what_the_list_holds(redis_client: redis.Redis) -> None:
    """Archives whose entries were trimmed off the end leave the index too: it stays as long as the list."""
    for i in range(FAILED_LENGTH + 10):
        record_failed(redis_client, failed_job(i))
    assert redis_client.hlen(FAILED_INDEX_KEY) == FAILED_LENGTH
    assert redis_client.hget(FAILED_INDEX_KEY, "a9.sync") is None
    assert redis_client.hget(FAILED_INDEX_KEY, "a10.sync") == redis_client.lindex(FAILED_KEY, -1)


def test_corrupt_entries_raise_our_error(redis_client: redis.Redis) -> None:
    """An entry that is not a failed job raises ``MalformedRecord``."""
    redis_client.lpush(FAILED_KEY, '{"request": {}}')
    with pytest.raises(MalformedRecord):
        list_failed(redis_client)
