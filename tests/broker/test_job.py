"""``RefreshJob``: each state change of a delivery is one script, and claim, status, history, failed list and
"swapped" agree after it (real Redis)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import redis
from redis_server import RedisServer

from broker.claims import QUEUED_CLAIM_TTL_MS, Claims, claim_key
from broker.contract import FAILED_KEY, ArchiveKey, MalformedRecord, RefreshRequest, RefreshStatus
from broker.failed import list_failed
from broker.job import RefreshJob
from broker.status import history_key, read_history, read_status
from broker.swapped import SwappedSubscription

NOW = datetime(2025, 5, 1, 10, 0, 0, tzinfo=UTC)


def outcome(status: str, generation: int = 4, **extra: Any) -> dict[str, Any]:
    """A dict shaped like the worker's outcome document."""
    return {
        "archive": "a.sync",
        "status": status,
        "base_generation": 3,
        "generation": generation,
        "error_code": None,
        "error": None,
        "duration_ms": 250.0,
        **extra,
    }


def queued(client: redis.Redis) -> RefreshRequest:
    """A request whose producer took the claim, as ``request_refresh`` does."""
    request = RefreshRequest.new("a.sync", 3, now=NOW)
    assert Claims(client).claim(request.archive, request.request_id, QUEUED_CLAIM_TTL_MS).ok
    return request


def job_of(client: redis.Redis, request: RefreshRequest) -> RefreshJob:
    return RefreshJob(client, request, worker="w1", job_id=request.request_id, claim_ttl_ms=30_000)


def test_start_takes_the_claim_and_marks_running_in_one_step(redis_client: redis.Redis) -> None:
    """A started job holds the claim with its runner and the status says running; a second delivery of the
    same request (another runner) does not start and writes nothing."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    assert redis_client.hget(claim_key(request.archive), "runner") == job.runner
    record = read_status(redis_client, request.archive)
    assert record is not None
    assert (record.status, record.worker, record.attempts) == (RefreshStatus.RUNNING, "w1", 0)
    redis_client.hset("sync:status:a.sync", "worker", "marker")
    assert not job_of(redis_client, request).start(now=NOW)
    assert redis_client.hget("sync:status:a.sync", "worker") == "marker"


def test_complete_writes_status_publishes_swapped_and_releases(redis_client: redis.Redis) -> None:
    """A committed job's end is one change: status and history written, "swapped" sent, claim gone."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    with SwappedSubscription(redis_client) as subscription:
        end = job.complete(outcome("committed"), now=NOW)
        event = subscription.get(timeout=5.0)
    assert event is not None
    assert (event.archive, event.generation) == ("a.sync", 4)
    assert (end.claim_held, end.record.attempts, end.record.status) == (True, 1, "committed")
    assert redis_client.exists(claim_key(request.archive)) == 0
    assert read_status(redis_client, request.archive) == end.record
    # The history entry is byte for byte the record's JSON, with the attempts the script counted.
    stored = redis_client.lindex(history_key(request.archive), 0)
    assert stored == json.dumps(end.record.to_json(), separators=(",", ":"))
    assert read_history(redis_client, request.archive) == [end.record]


def test_retry_keeps_the_claim_without_a_runner(redis_client: redis.Redis) -> None:
    """A retry writes the status and keeps the claim for the countdown, free for the retry's runner."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    end = job.retry(outcome("failed", 3, error_code="swap_conflict", error="moved"), hold_ms=60_000, now=NOW)
    assert end.claim_held
    claim = redis_client.hgetall(claim_key(request.archive))
    assert claim["token"] == request.request_id
    assert "runner" not in claim
    assert 0 < redis_client.pttl(claim_key(request.archive)) <= 60_000
    assert job_of(redis_client, request).start(now=NOW)


def test_give_up_records_the_failed_job_and_releases(redis_client: redis.Redis) -> None:
    """Giving up writes the status, the failed list entry and releases, all at once."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    doc = outcome("failed", 3, error_code="guest_trap", error="unreachable")
    job.give_up(doc, job.failed_entry(doc, attempts=2, at=NOW), now=NOW)
    assert redis_client.exists(claim_key(request.archive)) == 0
    [failed] = list_failed(redis_client)
    assert (failed.request, failed.error_code, failed.attempts) == (request, "guest_trap", 2)
    record = read_status(redis_client, request.archive)
    assert record is not None
    assert record.error_code == "guest_trap"


def test_a_failure_or_an_unchanged_end_keeps_the_claim_for_the_cooldown(redis_client: redis.Redis) -> None:
    """With a cooldown, giving up and an ``unchanged`` end keep the claim (no runner) for that long, so that
    the requests meanwhile merge into it rather than each starting a job, and a redelivered copy of the job's
    message does not start on it either (it did: same token, no runner); a commit still releases."""
    claims = Claims(redis_client)
    for end in ("give_up", "unchanged", "committed"):
        request = queued(redis_client)
        job = job_of(redis_client, request)
        assert job.start(now=NOW)
        if end == "give_up":
            doc = outcome("failed", 3, error_code="guest_trap", error="unreachable")
            job.give_up(doc, job.failed_entry(doc, attempts=1, at=NOW), cooldown_ms=30_000, now=NOW)
        else:
            job.complete(outcome(end, 3 if end == "unchanged" else 4), cooldown_ms=30_000, now=NOW)
        if end == "committed":
            assert redis_client.exists(claim_key(request.archive)) == 0
            continue
        claim = redis_client.hgetall(claim_key(request.archive))
        assert (claim["token"], "runner" in claim) == (request.request_id, False), end
        assert 0 < redis_client.pttl(claim_key(request.archive)) <= 30_000
        later = RefreshRequest.new(request.archive, 3, now=NOW)
        assert not claims.claim(later.archive, later.request_id, QUEUED_CLAIM_TTL_MS).ok  # merged, not sent
        # Nor does a copy of the job's own message that the broker delivers again start on it.
        assert not job_of(redis_client, request).start(now=NOW), end
        redis_client.delete(claim_key(request.archive))


def test_an_explicit_refresh_takes_over_a_claim_no_job_runs_under(redis_client: redis.Redis) -> None:
    """``force`` (``syncctl refresh``, ``syncctl failed retry``) takes over the cooldown claim a failed job
    left, where a read's request merges; it never takes a claim a job is running under."""
    claims = Claims(redis_client)
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    forced = RefreshRequest.new(request.archive, 3, now=NOW)
    assert not claims.claim(forced.archive, forced.request_id, QUEUED_CLAIM_TTL_MS, force=True).ok  # running
    doc = outcome("failed", 3, error_code="guest_trap", error="unreachable")
    job.give_up(doc, job.failed_entry(doc, attempts=1, at=NOW), cooldown_ms=30_000, now=NOW)
    read = RefreshRequest.new(request.archive, 3, now=NOW)
    assert not claims.claim(read.archive, read.request_id, QUEUED_CLAIM_TTL_MS).ok
    taken = claims.claim(forced.archive, forced.request_id, QUEUED_CLAIM_TTL_MS, force=True)
    assert (taken.ok, taken.merged) == (True, 0)
    assert redis_client.hget(claim_key(request.archive), "token") == forced.request_id
    assert not job_of(redis_client, request).start(now=NOW)  # the old job's message, redelivered, drops out


def test_an_overtaken_job_writes_its_status_but_leaves_the_newer_claim(redis_client: redis.Redis) -> None:
    """When the claim expired and a newer request took it, ending the old job does not release it."""
    old = queued(redis_client)
    job = job_of(redis_client, old)
    assert job.start(now=NOW)
    redis_client.delete(claim_key(old.archive))
    newer = queued(redis_client)
    end = job.complete(outcome("unchanged", 3), now=NOW)
    assert not end.claim_held
    assert redis_client.hget(claim_key(old.archive), "token") == newer.request_id
    assert redis_client.llen(FAILED_KEY) == 0
    record = read_status(redis_client, old.archive)
    assert record is not None
    assert record.status == "unchanged"


def test_archive_key_is_checked_once_and_stays_a_plain_string() -> None:
    """``ArchiveKey`` refuses bad keys where they enter, passes a checked key through, and is stored as
    exactly its text."""
    key = ArchiveKey("dir/a.sync")
    assert ArchiveKey(key) is key
    assert json.dumps({"archive": key}) == '{"archive": "dir/a.sync"}'
    assert RefreshRequest.new("dir/a.sync", 0).archive.__class__ is ArchiveKey
    for bad in ("", "/abs", "a/../b", "a//b", "a\x00b", 7):
        try:
            ArchiveKey(bad)
        except MalformedRecord:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    assert json.dumps(RefreshStatus.COMMITTED) == '"committed"'
    assert f"{RefreshStatus.FAILED}" == "failed"


def test_an_end_rides_through_a_redis_restart(private_redis: RedisServer) -> None:
    """Redis goes away after the commit and comes back a moment later: the job's end waits for it and then
    writes the status record (it does not raise and lose the record, the notification and the release)."""
    client = private_redis.client()
    request = queued(client)
    job = job_of(client, request)
    assert job.start(now=NOW)
    private_redis.stop()
    back = threading.Timer(1.0, private_redis.start)
    back.start()
    try:
        end = job.complete(outcome("committed"), now=NOW)
    finally:
        back.join()
    assert end.record.status == RefreshStatus.COMMITTED
    assert read_status(private_redis.client(), request.archive) == end.record


class _LosesOneReply:
    """Runs each script for real, but loses the reply of the first end script: Redis stopped after running it
    and before answering (as a ``compose restart redis`` can). The job's end must try again."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        self.calls += 1
        reply = self.script(keys=keys, args=args)
        if self.calls == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return reply


def test_an_end_whose_reply_was_lost_is_not_applied_twice(redis_client: redis.Redis) -> None:
    """The end ran but its reply was lost; its retry finds the end's receipt and writes nothing more: one
    history entry, one "swapped", attempts counted once, the failed list untouched, the same reply."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    lossy = _LosesOneReply(job._end)
    job._end = lossy
    with SwappedSubscription(redis_client) as subscription:
        end = job.complete(outcome("committed"), now=NOW)
        first = subscription.get(timeout=5.0)
        second = subscription.get(timeout=0.5)
    assert lossy.calls == 2
    assert first is not None
    assert second is None
    assert (end.claim_held, end.record.attempts) == (True, 1)
    assert [r.status for r in read_history(redis_client, request.archive)] == ["committed"]
    assert read_status(redis_client, request.archive) == end.record
    assert redis_client.exists(claim_key(request.archive)) == 0


def test_a_given_up_end_replayed_adds_one_failed_entry(redis_client: redis.Redis) -> None:
    """The same for an end that gives up: the failed list gets the job once."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    job._end = _LosesOneReply(job._end)
    doc = outcome("failed", 3, error_code="guest_trap", error="trap")
    job.give_up(doc, job.failed_entry(doc, attempts=3, at=NOW), now=NOW)
    assert len(list_failed(redis_client)) == 1
    assert len(read_history(redis_client, request.archive)) == 1


def test_each_execution_has_its_own_receipt(redis_client: redis.Redis) -> None:
    """A receipt belongs to one execution: the next delivery of the archive writes its own end."""
    for _ in range(2):
        request = queued(redis_client)
        job = job_of(redis_client, request)
        assert job.start(now=NOW)
        job.complete(outcome("committed"), now=NOW)
    assert [r.attempts for r in read_history(redis_client, "a.sync")] == [2, 1]
    receipts = list(redis_client.scan_iter("sync:end:*"))
    assert len(receipts) == 2
    assert all(0 < redis_client.ttl(key) <= 600 for key in receipts)


def test_a_job_that_gives_up_replaces_its_archives_previous_failed_entry(redis_client: redis.Redis) -> None:
    """Two jobs of the same archive give up one after the other: the failed list holds the second only (its
    attempts and error), so an archive failing again and again keeps one place in it."""
    for attempts, error in ((1, "first"), (2, "second")):
        request = queued(redis_client)
        job = job_of(redis_client, request)
        assert job.start(now=NOW)
        doc = outcome("failed", 3, error_code="guest_trap", error=error)
        job.give_up(doc, job.failed_entry(doc, attempts=attempts, at=NOW), now=NOW)
    [failed] = list_failed(redis_client)
    assert (failed.request.archive, failed.attempts, failed.error) == ("a.sync", 2, "second")


def test_a_failed_entry_holds_the_error_escaped_and_bounded(redis_client: redis.Redis) -> None:
    """The failed list is read by operators on a terminal: a guest-chosen newline, ESC or bidi control in the
    outcome's error is escaped there, and a long error is cut."""
    request = queued(redis_client)
    job = job_of(redis_client, request)
    assert job.start(now=NOW)
    error = "invalid module: x\n[INFO] refresh done\x1b[2J\u202e" + "y" * 5000
    doc = outcome("failed", 3, error_code="guest_trap\x1b[8m", error=error)
    job.give_up(doc, job.failed_entry(doc, attempts=1, at=NOW), now=NOW)
    [failed] = list_failed(redis_client)
    assert failed.error is not None
    assert failed.error.startswith("invalid module: x\\x0a[INFO] refresh done\\x1b[2J\\u202e")
    assert len(failed.error) <= 1000
    assert failed.error_code == "guest_trap\\x1b[8m"
