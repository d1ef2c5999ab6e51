"""Status records: latest attempt per archive, bounded history, listing, strict decoding, outages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from broker import MalformedRecord, forget_status, list_status, make_redis, read_history, read_status
from broker.status import HISTORY_LENGTH, RUNNING, history_key, mark_running, status_key, write_status
from sync_format.errors import BrokerUnavailable

NOW = datetime(2025, 5, 1, 10, 0, 0, tzinfo=UTC)


def outcome(status: str = "committed", generation: int = 4, **extra: Any) -> dict[str, Any]:
    """A dict shaped like ``RefreshOutcome.to_json()``."""
    return {
        "archive": "/srv/store/a.sync",
        "status": status,
        "base_generation": 3,
        "generation": generation,
        "error_code": None,
        "error": None,
        "duration_ms": 250.0,
        "entry": "update",
        "fuel_used": 10,
        "requests": 1,
        "payload_size": 5,
        "sandbox": None,
        **extra,
    }


def test_write_then_read_the_latest_record(redis_client: redis.Redis) -> None:
    """The record holds outcome, generation, worker, job, duration and attempt times."""
    record = write_status(redis_client, "a.sync", outcome(), worker="w1@host", job_id="job-1", now=NOW)
    assert read_status(redis_client, "a.sync") == record
    assert record.status == "committed"
    assert (record.base_generation, record.generation) == (3, 4)
    assert (record.worker, record.job_id, record.attempts) == ("w1@host", "job-1", 1)
    assert record.duration_ms == 250.0
    assert record.updated_at == NOW
    assert record.last_attempt == NOW - timedelta(milliseconds=250)
    assert (record.error_code, record.error) == (None, None)


def test_failures_record_their_code_and_success_clears_it(redis_client: redis.Redis) -> None:
    """A failed attempt stores its error code; a later success removes it."""
    failed = outcome("failed", 3, error_code="guest_trap", error="unreachable executed")
    write_status(redis_client, "a.sync", failed, worker="w1", job_id="j1", now=NOW)
    record = read_status(redis_client, "a.sync")
    assert record is not None
    assert (record.error_code, record.error) == ("guest_trap", "unreachable executed")
    write_status(redis_client, "a.sync", outcome(), worker="w1", job_id="j2", now=NOW)
    record = read_status(redis_client, "a.sync")
    assert record is not None
    assert (record.status, record.error_code, record.error, record.attempts) == ("committed", None, None, 2)


def test_history_is_newest_first_and_trimmed(redis_client: redis.Redis) -> None:
    """Each attempt is pushed to the history, which keeps only the newest ``HISTORY_LENGTH``."""
    for i in range(HISTORY_LENGTH + 5):
        write_status(redis_client, "a.sync", outcome(generation=i), worker="w", job_id=f"j{i}", now=NOW)
    history = read_history(redis_client, "a.sync")
    assert len(history) == HISTORY_LENGTH
    assert redis_client.llen(history_key("a.sync")) == HISTORY_LENGTH
    assert [r.job_id for r in history[:2]] == [f"j{HISTORY_LENGTH + 4}", f"j{HISTORY_LENGTH + 3}"]
    assert history[0].attempts == HISTORY_LENGTH + 5
    assert read_history(redis_client, "a.sync", limit=3) == history[:3]
    assert read_history(redis_client, "a.sync", limit=0) == []


def test_running_marker_then_outcome(redis_client: redis.Redis) -> None:
    """``mark_running`` shows a started job; the outcome replaces it and counts one attempt."""
    mark_running(redis_client, "a.sync", generation=3, worker="w1", job_id="j1", now=NOW)
    record = read_status(redis_client, "a.sync")
    assert record is not None
    assert (record.status, record.attempts, record.last_attempt) == (RUNNING, 0, NOW)
    assert read_history(redis_client, "a.sync") == []
    write_status(redis_client, "a.sync", outcome(), worker="w1", job_id="j1", now=NOW)
    record = read_status(redis_client, "a.sync")
    assert record is not None
    assert (record.status, record.attempts) == ("committed", 1)


def test_list_status_covers_every_archive_sorted(redis_client: redis.Redis) -> None:
    """``list_status`` returns one latest record per archive, by key; forgotten archives disappear."""
    for key in ("b.sync", "a/c.sync", "a.sync"):
        write_status(redis_client, key, outcome(), worker="w", job_id=key, now=NOW)
    assert [r.archive for r in list_status(redis_client)] == ["a.sync", "a/c.sync", "b.sync"]
    forget_status(redis_client, "a/c.sync")
    assert [r.archive for r in list_status(redis_client)] == ["a.sync", "b.sync"]
    assert read_status(redis_client, "a/c.sync") is None
    assert read_history(redis_client, "a/c.sync") == []


def test_unknown_archives_have_no_record(redis_client: redis.Redis) -> None:
    """An archive never refreshed through the queue has no record and an empty history."""
    assert read_status(redis_client, "never.sync") is None
    assert list_status(redis_client) == []


def test_generation_unknown_is_kept_as_minus_one(redis_client: redis.Redis) -> None:
    """An outcome whose archive could not be opened (generation -1) is recorded as such."""
    record = write_status(
        redis_client,
        "a.sync",
        outcome("failed", -1, base_generation=-1, error_code="malformed_archive", error="bad"),
        worker="w",
        job_id="j",
    )
    assert (record.generation, record.base_generation) == (-1, -1)


@pytest.mark.parametrize(
    "bad",
    [
        {"status": ""},
        {"status": 3},
        {"generation": "4"},
        {"generation": True},
        {"duration_ms": -1},
        {"duration_ms": float("nan")},
        {"error_code": 5},
    ],
)
def test_malformed_outcomes_are_refused(redis_client: redis.Redis, bad: dict[str, Any]) -> None:
    """An outcome with a missing status or mistyped fields is refused before anything is written."""
    with pytest.raises(MalformedRecord):
        write_status(redis_client, "a.sync", outcome(**bad), worker="w", job_id="j")
    assert not redis_client.exists(status_key("a.sync"))


def test_corrupt_stored_records_raise_our_error(redis_client: redis.Redis) -> None:
    """A hash or history entry that does not decode raises ``MalformedRecord``, not a crash."""
    write_status(redis_client, "a.sync", outcome(), worker="w", job_id="j", now=NOW)
    redis_client.hset(status_key("a.sync"), "generation", "four")
    with pytest.raises(MalformedRecord) as info:
        read_status(redis_client, "a.sync")
    assert info.value.field == "generation"
    redis_client.lpush(history_key("a.sync"), json.dumps({"archive": "a.sync"}))
    with pytest.raises(MalformedRecord):
        read_history(redis_client, "a.sync")
    redis_client.lpush(history_key("a.sync"), "{not json")
    with pytest.raises(MalformedRecord):
        read_history(redis_client, "a.sync")


def test_outages_raise_broker_unavailable(private_redis: RedisServer) -> None:
    """With Redis down, reads and writes raise ``BrokerUnavailable`` (the translated edge)."""
    client = make_redis(private_redis.url, socket_timeout=1, connect_timeout=1)
    private_redis.stop()
    with pytest.raises(BrokerUnavailable):
        write_status(client, "a.sync", outcome(), worker="w", job_id="j")
    with pytest.raises(BrokerUnavailable):
        read_status(client, "a.sync")
    with pytest.raises(BrokerUnavailable):
        list_status(client)
    with pytest.raises(BrokerUnavailable):
        mark_running(client, "a.sync", generation=0, worker="w", job_id="j")


def test_guest_log_lines_are_recorded_and_cleared(redis_client: redis.Redis) -> None:
    """A guest's log lines (ABI v2) are kept in the record and its history entry; the next attempt without
    lines clears them, as does a job starting."""
    lines = ["fetched 3 rows", "not modified: payload kept"]
    written = write_status(redis_client, "g.sync", outcome(guest_log=lines), worker="w", job_id="j1", now=NOW)
    assert written.guest_log == tuple(lines)
    assert read_status(redis_client, "g.sync") == written
    assert read_history(redis_client, "g.sync")[0].guest_log == tuple(lines)
    mark_running(redis_client, "g.sync", generation=4, worker="w", job_id="j2", now=NOW)
    running = read_status(redis_client, "g.sync")
    assert running is not None
    assert running.guest_log == ()
    write_status(redis_client, "g.sync", outcome(), worker="w", job_id="j2", now=NOW)
    latest = read_status(redis_client, "g.sync")
    assert latest is not None
    assert latest.guest_log == ()


def test_history_entries_from_before_guest_logs_still_decode(redis_client: redis.Redis) -> None:
    """Entries written before the ``guest_log`` field existed decode with no lines."""
    write_status(redis_client, "old.sync", outcome(), worker="w", job_id="j", now=NOW)
    entry = json.loads(redis_client.lindex(history_key("old.sync"), 0))
    del entry["guest_log"]
    redis_client.lset(history_key("old.sync"), 0, json.dumps(entry))
    assert read_history(redis_client, "old.sync")[0].guest_log == ()


def test_status_record_keeps_refused_requests_escaped(redis_client: redis.Redis) -> None:
    """The record's ``egress`` field lists each refused or failed request of the attempt (rule, host, ABI
    code, url, reason); hostile text in it, and in ``error``, is stored escaped (issue 11)."""
    refused = [
        {
            "rule": "private_address",
            "host": "meta.test",
            "code": -2,
            "url": "http://meta.test/creds",
            "reason": "meta.test resolves to ::ffff:169.254.169.254, a cloud metadata address",
        },
        {
            "rule": "timeout",
            "host": "x\x1b[8m.test",
            "code": -5,
            "url": "http://x/",
            "reason": "a\nINFO forged",
        },
    ]
    doc = outcome("unchanged", error="guest said \x1b[2J\u202eevil\nINFO forged", egress=refused)
    record = write_status(redis_client, "eg.sync", doc, worker="w1", job_id="j1", now=NOW)
    assert read_status(redis_client, "eg.sync") == record
    assert [e["rule"] for e in record.egress] == ["private_address", "timeout"]
    assert record.egress[0]["code"] == -2
    assert record.egress[1]["host"] == "x\\x1b[8m.test"
    assert record.egress[1]["reason"] == "a\\x0aINFO forged"
    assert record.error == "guest said \\x1b[2J\\u202eevil\\x0aINFO forged"
    assert read_history(redis_client, "eg.sync")[0].egress == record.egress
    mark_running(redis_client, "eg.sync", generation=4, worker="w1", job_id="j2", now=NOW)
    assert read_status(redis_client, "eg.sync").egress == ()  # type: ignore[union-attr]


def test_history_written_before_the_egress_field_still_reads(redis_client: redis.Redis) -> None:
    """A history entry without ``egress`` (written before issue 11) decodes with an empty list."""
    record = write_status(redis_client, "old.sync", outcome(), worker="w1", job_id="j1", now=NOW)
    old = record.to_json()
    del old["egress"]
    redis_client.lpush(history_key("old.sync"), json.dumps(old))
    assert read_history(redis_client, "old.sync")[0].egress == ()


def test_syncctl_status_shows_refused_requests(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Any
) -> None:
    """``syncctl status`` prints each refused request under its archive, escaped, so an operator sees why
    a guest's fetch failed without reading worker logs."""
    import os
    import subprocess
    import sys

    refused = [{"rule": "private_address", "host": "h\x1b[8m.test", "code": -2, "url": "u", "reason": "r\n"}]
    write_status(redis_client, "shown.sync", outcome("unchanged", egress=refused), worker="w1", job_id="j")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "syncctl",
            "status",
            "--broker",
            redis_server.url,
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    [line] = [line for line in done.stdout.splitlines() if "egress" in line]
    assert line.strip() == "egress private_address (-2) host h\\x1b[8m.test: r\\x0a"
