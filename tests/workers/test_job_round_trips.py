"""Redis round trips of one refresh job, counted on the wire (issue 15 asks for at most 8 per refresh).

A round trip is one write of a request batch to the socket followed by reading its replies: one command, or
one whole pipeline. ``CountingConnection`` counts them on the client the job uses; the job runs against a
private ``redis-server`` on a real archive, through the same ``refresh_job`` the Celery task calls.

The whole refresh, as ``bench/bench_pipeline.py`` (c) counts it: the producer's one script
(``tests/broker/test_claimed_send.py`` counts it on the wire), these two, and Celery's and kombu's in the
worker's main process (``BRPOP``, the unacked bookkeeping at delivery and at ack, a share of one batched
task-event message, ``broker.task_events``): about 6 in all, against 11 before issue 15's pipeline work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import guests
import pytest
import redis
from redis_server import RedisServer

from broker.claims import Claims
from broker.contract import RefreshRequest
from broker.retry import RetryPolicy
from broker.settings import Settings
from sync_format.testing import make_archive
from workers.tasks import WorkerState, refresh_job

#: Round trips of a refresh without egress (hence without heartbeats): ``RefreshJob.start`` and its end, one
#: script each (six or seven before the job was one object). Of issue 15's eight per refresh, the producer
#: takes one and Celery about three.
ROUND_TRIP_BUDGET = 2


class CountingConnection(redis.Connection):
    """A redis-py connection that counts the request batches it sends (one per round trip)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


def _state(server: RedisServer, store: Path) -> WorkerState:
    settings = Settings(store=store, cache_dir=store.parent / "cache")
    state = WorkerState(settings, server.url, RetryPolicy())
    client = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=CountingConnection, host="127.0.0.1", port=server.port, decode_responses=True
        )
    )
    # The process's resources, built for this process with the counting client (as on first use).
    state._pid = os.getpid()
    state._client = client
    return state


def _task(job_id: str) -> Any:
    """What the job reads from Celery's bound task: the request's id, retries and hostname."""
    return SimpleNamespace(request=SimpleNamespace(id=job_id, retries=0, hostname="w1"))


@pytest.mark.parametrize(
    ("wasm", "status"), [(None, "no_update_logic"), (guests.record(), "committed")], ids=["plain", "guest"]
)
def test_one_refresh_stays_within_the_round_trip_budget(
    server: RedisServer, tmp_path: Path, wasm: bytes | None, status: str
) -> None:
    """A refresh that needs no retry costs at most ``ROUND_TRIP_BUDGET`` round trips (scripts loaded)."""
    store = tmp_path / "store"
    store.mkdir()
    make_archive(store / "a.sync", b"old", **({"wasm": wasm} if wasm is not None else {}))
    state = _state(server, store)
    warm = RefreshRequest.new("a.sync", 0)
    Claims(state.client).claim(warm.archive, warm.request_id, 60_000)
    refresh_job(_task(warm.request_id), warm.to_json(), state)  # loads the scripts once per process
    make_archive(store / "a.sync", b"old", **({"wasm": wasm} if wasm is not None else {}))
    request = RefreshRequest.new("a.sync", 0)
    Claims(state.client).claim(request.archive, request.request_id, 60_000)
    probe = redis.Redis(host="127.0.0.1", port=server.port)
    commands_before = probe.info("stats")["total_commands_processed"]
    CountingConnection.sent = 0
    doc = refresh_job(_task(request.request_id), request.to_json(), state)
    trips = CountingConnection.sent
    # The second INFO counts itself once.
    commands = probe.info("stats")["total_commands_processed"] - commands_before - 1
    print(f"per refresh ({status}): {trips} round trips, {commands} commands")
    assert doc["status"] == status
    assert trips <= ROUND_TRIP_BUDGET


class _CountingPattern:
    """Stands in front of the archive-key check's control-character pattern to count full checks."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.calls = 0

    def search(self, text: str) -> Any:
        self.calls += 1
        return self.pattern.search(text)


def test_the_archive_key_is_checked_once_per_job(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job checks its archive key once, when the request is decoded, and passes it on as ``ArchiveKey``
    (ten checks before the key had a type of its own)."""
    import broker.contract

    store = tmp_path / "store"
    store.mkdir()
    make_archive(store / "a.sync", b"old")
    state = _state(server, store)
    request = RefreshRequest.new("a.sync", 0)
    Claims(state.client).claim(request.archive, request.request_id, 60_000)
    payload = {**request.to_json(), "archive": "a.sync"}  # as it arrives: plain JSON
    counting = _CountingPattern(broker.contract._CONTROL)
    monkeypatch.setattr(broker.contract, "_CONTROL", counting)
    assert refresh_job(_task(request.request_id), payload, state)["status"] == "no_update_logic"
    assert counting.calls == 1
