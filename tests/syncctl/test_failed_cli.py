"""``syncctl failed list|retry|forget`` against a private redis-server and a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from support import RedisServer

from broker.claims import claim_key
from broker.contract import QUEUE_REFRESH, RefreshRequest
from broker.failed import FailedJob, list_failed, record_failed
from broker.status import read_status, write_status
from sync_format.testing import make_archive
from syncctl.main import main

NOW = datetime(2025, 5, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(server.url, decode_responses=True)
    connection.flushall()
    yield connection
    connection.close()


def fail(client: redis.Redis, archive: str, generation: int, code: str = "guest_trap") -> FailedJob:
    """Record a failed job of ``archive`` (and its status), as a worker that gave up does."""
    request = RefreshRequest(archive, generation, NOW, f"{generation:032x}")
    job = FailedJob(request, code, "unreachable executed", "w1", request.request_id, 2, NOW)
    record_failed(client, job)
    doc = {"status": "failed", "generation": generation, "base_generation": generation, "duration_ms": 1.0}
    write_status(client, archive, {**doc, "error_code": code, "error": "x"}, worker="w1", job_id="j")
    return job


def test_list_shows_failed_jobs_newest_first(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``failed`` (and ``failed list``) print one line per job, newest first; ``--json`` the entries."""
    assert main(["failed", "--broker", server.url]) == 0
    assert capsys.readouterr().out == "no failed refreshes\n"
    fail(client, "a.sync", 1)
    fail(client, "b.sync", 2, "policy_denied")
    assert main(["failed", "list", "--broker", server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["b.sync", "policy_denied"], ["a.sync", "guest_trap"]]
    assert main(["failed", "list", "--json", "--limit", "1", "--broker", server.url]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["request"]["archive"] == "b.sync"


def test_retry_sends_a_new_request_from_the_current_generation(
    client: redis.Redis, server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``failed retry KEY`` claims the archive, queues a request from its generation on disk and drops the
    archive's failed entries (others stay)."""
    store = tmp_path / "store"
    store.mkdir()
    make_archive(store / "a.sync", b"data")
    fail(client, "a.sync", 0)
    fail(client, "b.sync", 0)
    assert main(["failed", "retry", "a.sync", "--store", str(store), "--broker", server.url]) == 0
    assert capsys.readouterr().out.startswith("a.sync: queued (generation 0); dropped 1 failed job(s)")
    assert [job.request.archive for job in list_failed(client)] == ["b.sync"]
    assert client.llen(QUEUE_REFRESH) == 1
    message = json.loads(client.lindex(QUEUE_REFRESH, 0))
    token = client.hget(claim_key("a.sync"), "token")
    assert token is not None
    assert message["headers"]["task"] == "sync.refresh"
    assert token in json.dumps(message)


def test_forget_drops_failures_and_status(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``failed forget KEY`` drops the archive's failed entry (its second failure replaced its first), status
    record and history."""
    fail(client, "a.sync", 1)
    fail(client, "a.sync", 2)
    fail(client, "b.sync", 1)
    assert [job.request.archive for job in list_failed(client)] == ["b.sync", "a.sync"]
    assert main(["failed", "forget", "a.sync", "--broker", server.url]) == 0
    assert capsys.readouterr().out == "a.sync: forgot 1 failed job(s) and its status\n"
    assert [job.request.archive for job in list_failed(client)] == ["b.sync"]
    assert read_status(client, "a.sync") is None
    assert read_status(client, "b.sync") is not None


def test_bad_keys_and_unknown_archives_are_one_error_line(
    client: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that is not an archive key, or one with no failure recorded, is exit 1 with one line."""
    assert main(["failed", "forget", "../etc", "--broker", server.url]) == 1
    assert capsys.readouterr().err.startswith("error: archive_key: '../etc'")
    assert main(["failed", "retry", "none.sync", "--broker", server.url]) == 1
    assert capsys.readouterr().err == "error: none.sync: no failed refresh of this archive is recorded\n"
