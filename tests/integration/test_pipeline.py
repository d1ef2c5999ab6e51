"""The refresh pipeline end to end: producers, a private Redis, real worker processes, sandboxed guests.

Every worker here is a real ``syncctl worker`` process (with fast retry or redelivery settings where a
test needs them soon) running guests in the strict sandbox; the CLI runs as a subprocess; Redis is private
to the test. Guests append one byte to the payload, so an archive refreshed exactly once is at generation 1
with its original payload plus ``MARK``, and a second run would show in both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery  # type: ignore[import-untyped]
from netns_hosts import Route, netns_hosts
from pipeline_harness import (
    FAST_REDELIVERY_ENV,
    FAST_RETRIES,
    FAST_RETRY_ENV,
    MARK,
    ArchiveCheck,
    Gate,
    Services,
    StartWorkers,
    append_guest,
    build_archive,
    check_archive,
    child_env,
    client_of,
    fetch_or_keep_guest,
    fetch_then_append_guest,
    generation,
    original_payload,
    producing,
    syncctl,
    trap_guest,
    wait_value,
)
from redis_server import RedisServer, free_port, wait_for

from broker import (
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    StatusRecord,
    list_failed,
    list_status,
    make_celery_app,
    read_history,
    read_status,
    replay_pending,
    request_refresh,
)
from broker.claims import QUEUED_CLAIM_TTL_MS, STALE_QUEUED_CLAIM_MS, Claims, claim_key
from broker.contract import QUEUE_REFRESH, TASK_REFRESH
from broker.settings import DEFAULT_REFRESH_COOLDOWN

#: Concurrent requests of the burst test.
THREADS = 1000
#: Seconds a refresh of a fast guest may take to show up, queue wait and worker start-up included.
REFRESH_BOUND = 60.0
#: Seconds until a job whose whole worker was killed has run again: the visibility timeout (35 s with
#: ``FAST_REDELIVERY_ENV``) plus kombu's restore interval (10 s) plus slack.
REDELIVERY_BOUND = 120.0


def finished(client: redis.Redis, key: str) -> StatusRecord | None:
    """The archive's status record once its job has written an outcome (not while running)."""
    record = read_status(client, key)
    return record if record is not None and record.status != "running" else None


def settled(client: redis.Redis, key: str) -> StatusRecord | None:
    """The archive's final status record once its job has also released the claim, its last step (the
    failed list and notifications are written before it)."""
    record = finished(client, key)
    return record if record is not None and Claims(client).holder(key) is None else None


def refreshed_once(path: Path) -> ArchiveCheck:
    """What an archive built by ``build_archive`` looks like after exactly one refresh."""
    return ArchiveCheck(generation=1, payload=original_payload(path.name) + MARK, verified=True)


def test_a_thousand_concurrent_requests_run_one_job(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path, gate: Gate
) -> None:
    """1,000 threads requesting one stale archive while two workers run make one job: one request is
    queued, 999 merge into it, and the archive is refreshed once (generation 1, one attempt)."""
    workers("w1@pipeline", "w2@pipeline")
    path = build_archive(store, "hot.sync", fetch_then_append_guest(gate.url), allow_hosts=(gate.host,))
    app = make_celery_app(Settings(), broker_url=redis_server.celery_url, producer=True)
    # Service timeouts and one connection per thread: 1,000 connections opened at once on two cores can
    # take longer than the producer's 0.5 s; this test is about the merge, not about fast failure.
    client = client_of(redis_server.url, THREADS)
    pending = PendingRefreshes()
    barrier = threading.Barrier(THREADS)
    answers: list[RequestResult | BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        answer: RequestResult | BaseException
        try:
            answer = request_refresh(app, client, RefreshRequest.new("hot.sync", 0), pending)
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            answer = exc
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The job cannot finish before the gate opens, so every request met a held claim or took it.
        assert Counter(answers) == Counter({RequestResult.QUEUED: 1, RequestResult.MERGED: THREADS - 1})
        holder = Claims(redis_client).holder("hot.sync")
        assert holder is not None
        assert holder.merged == THREADS - 1
        wait_for(lambda: gate.seen() == 1, REFRESH_BOUND, what="the job's guest reached the gate")
        gate.open()
        record = wait_value(lambda: settled(redis_client, "hot.sync"), REFRESH_BOUND, what="job finished")
    finally:
        app.close()
        client.close()
    assert (record.status, record.generation, record.error_code, record.attempts) == ("committed", 1, None, 1)
    assert len(read_history(redis_client, "hot.sync")) == 1
    assert check_archive(path) == refreshed_once(path)
    assert gate.seen() == 1
    assert len(pending) == 0


@pytest.mark.slow
def test_a_job_of_a_killed_worker_runs_again(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path, gate: Gate
) -> None:
    """When the whole worker running a job is SIGKILLed mid-job, the job runs again on the other worker
    after the visibility timeout (shortened by settings) and the archive is intact and refreshed once."""
    started = {w.name: w for w in workers("w1@pipeline", "w2@pipeline", env=FAST_REDELIVERY_ENV)}
    path = build_archive(store, "crash.sync", fetch_then_append_guest(gate.url), allow_hosts=(gate.host,))
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["crash.sync"])
        assert producers.answers(["crash.sync"], REFRESH_BOUND) == {"crash.sync": RequestResult.QUEUED}

    def held_at_gate() -> StatusRecord | None:
        record = read_status(redis_client, "crash.sync")
        running = record is not None and record.status == "running"
        return record if running and gate.seen() == 1 else None

    running = wait_value(held_at_gate, REFRESH_BOUND, what="the job runs and its guest waits at the gate")
    assert running.worker in started
    victim = started.pop(running.worker)
    [survivor] = started.values()
    victim.kill_group()
    assert generation(path) == 0
    gate.open()
    record = wait_value(
        lambda: settled(redis_client, "crash.sync"),
        REDELIVERY_BOUND,
        interval=0.5,
        what="the killed job ran again and finished",
    )
    assert (record.status, record.generation, record.worker) == ("committed", 1, survivor.name)
    assert record.attempts == 1
    assert gate.seen() == 2
    assert check_archive(path) == refreshed_once(path)
    assert survivor.alive


def test_redis_outage_defers_requests_and_loses_none(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path
) -> None:
    """While Redis is down, requests return DEFERRED without raising; once it is back they are replayed,
    the workers reconnect by themselves, and every wanted archive is refreshed once."""
    started = workers("w1@pipeline", "w2@pipeline")
    pids = [w.process.pid for w in started]
    wasm = append_guest()
    keys = [f"outage/{i:02d}.sync" for i in range(60)]
    paths = [build_archive(store, key, wasm) for key in keys]
    before, during, after = keys[:20], keys[20:40], keys[40:]
    with producing(redis_server.url) as producers:
        producers.request(before)
        assert set(producers.answers(before, REFRESH_BOUND).values()) == {RequestResult.QUEUED}
        wait_for(
            lambda: all(generation(p) == 1 for p in paths[:20]),
            REFRESH_BOUND,
            interval=0.1,
            what="first batch",
        )

        # The workers are idle now: a job cut off by the outage would come back only after the visibility
        # timeout (the killed-worker test covers that path), and this Redis keeps no data across a restart.
        redis_server.stop()
        producers.request(during)
        assert set(producers.answers(during, REFRESH_BOUND).values()) == {RequestResult.DEFERRED}
        assert sorted(w.request.archive for w in producers.pending.snapshot()) == during
        down = replay_pending(producers.app, producers.client, producers.pending)
        assert (down.queued, down.merged, down.remaining) == (0, 0, len(during))

        redis_server.start()
        passes = []

        def replayed() -> bool:
            passes.append(replay_pending(producers.app, producers.client, producers.pending))
            return passes[-1].remaining == 0

        wait_for(replayed, REFRESH_BOUND, interval=0.2, what="pending refreshes replayed")
        assert (sum(p.queued for p in passes), sum(p.merged for p in passes)) == (len(during), 0)
        producers.request(after)
        assert set(producers.answers(after, REFRESH_BOUND).values()) == {RequestResult.QUEUED}
        wait_for(
            lambda: all(generation(p) >= 1 for p in paths),
            REFRESH_BOUND,
            interval=0.1,
            what="every archive refreshed",
        )
    for path in paths:
        assert check_archive(path) == refreshed_once(path), path
    assert [w.process.pid for w in started if w.alive] == pids
    # The first batch's records went with Redis's data (no persistence here); the others were written after.
    # A worker writes the record just after its commit, so the last ones may still be on their way.

    def recorded() -> bool:
        committed = {r.archive for r in list_status(redis_client) if r.status == "committed"}
        return set(during + after) <= committed

    wait_for(recorded, REFRESH_BOUND, interval=0.1, what="every refresh recorded as committed")


def test_two_workers_refresh_two_hundred_archives_once_each(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path
) -> None:
    """Two workers of two pool processes each, sharing 200 requests, refresh each archive exactly once,
    none torn, both taking part."""
    names = {"w1@pipeline", "w2@pipeline"}
    workers(*sorted(names), concurrency=2)
    wasm = append_guest()
    keys = [f"many/{i:03d}.sync" for i in range(200)]
    paths = [build_archive(store, key, wasm) for key in keys]
    with producing(redis_server.url) as producers:
        producers.request(keys)
        assert set(producers.answers(keys, REFRESH_BOUND).values()) == {RequestResult.QUEUED}

    def all_finished() -> list[StatusRecord] | None:
        records = [r for r in list_status(redis_client) if r.status != "running"]
        return records if len(records) == len(keys) else None

    records = wait_value(all_finished, REFRESH_BOUND, interval=0.2, what="200 refreshes finished")
    assert {(r.status, r.generation, r.attempts, r.error_code) for r in records} == {
        ("committed", 1, 1, None)
    }
    assert {r.worker for r in records} == names
    for path in paths:
        assert check_archive(path) == refreshed_once(path), path


def test_a_trapping_guest_fails_once_and_is_not_retried(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path, cache_dir: Path
) -> None:
    """A guest trap is a deterministic failure: status failed with guest_trap after one attempt, the
    archive unchanged, the job in the failed list at once, and its claim kept for the cooldown with no
    runner: asking again meanwhile (as every read of the still expired archive does) merges into it instead
    of starting another run that fails the same way (1,143 runs a minute for one reader before)."""
    workers("w1@pipeline", env={"SYNC_REFRESH_COOLDOWN": str(DEFAULT_REFRESH_COOLDOWN)})
    path = build_archive(store, "trap.sync", trap_guest())
    before = path.read_bytes()
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["trap.sync"])
        assert producers.answers(["trap.sync"], REFRESH_BOUND) == {"trap.sync": RequestResult.QUEUED}
    record = wait_value(lambda: finished(redis_client, "trap.sync"), REFRESH_BOUND, what="trap recorded")
    assert (record.status, record.error_code, record.generation, record.attempts) == (
        "failed",
        "guest_trap",
        0,
        1,
    )
    [failed] = list_failed(redis_client)
    assert (failed.request.archive, failed.error_code, failed.attempts) == ("trap.sync", "guest_trap", 1)
    assert failed.worker == "w1@pipeline"
    assert path.read_bytes() == before
    claim = redis_client.hgetall(claim_key("trap.sync"))
    assert "runner" not in claim
    assert 0 < redis_client.pttl(claim_key("trap.sync")) <= DEFAULT_REFRESH_COOLDOWN * 1000
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["trap.sync"])
        assert producers.answers(["trap.sync"], REFRESH_BOUND) == {"trap.sync": RequestResult.MERGED}
    time.sleep(1.0)
    assert len(list_failed(redis_client)) == 1
    assert read_status(redis_client, "trap.sync") == record  # no second run
    # An operator's explicit refresh is not swallowed by the cooldown: it runs, and waits for its result.
    env = child_env(cache_dir)
    refresh = subprocess.run(
        syncctl("refresh", str(path), "--store", str(store), "--broker", redis_server.url, "--wait"),
        env=env,
        capture_output=True,
        text=True,
        timeout=REFRESH_BOUND,
        check=False,
    )
    assert refresh.stdout.splitlines()[0] == "trap.sync: queued (generation 0)", (
        refresh.stdout + refresh.stderr
    )
    assert "guest_trap" in refresh.stderr
    [again] = list_failed(redis_client)  # the archive's new failure, in place of its first
    assert (again.request.archive, again.error_code) == ("trap.sync", "guest_trap")
    assert again.job_id != failed.job_id


def test_a_dripping_source_cannot_let_a_second_run_start(
    redis_client: redis.Redis, workers: StartWorkers, store: Path, control_app: Celery
) -> None:
    """While the parent waits on a source dripping one header byte at a time, the job's claim is kept alive,
    so a second delivery of the same job (what the broker's redelivery did) is skipped instead of running
    alongside (finding 3: the claim expired because heartbeats only ran between guest messages). The claim
    TTL is shortened to 2 s; the drip lasts 6 s of a 30 s guest budget."""
    with netns_hosts(["slow"]) as served:
        source = served["slow"]
        source.serve({"/data": Route.drip(count=12, interval=0.5)})
        path = build_archive(
            store, "slow.sync", fetch_or_keep_guest(source.url("/data")), allow_hosts=(source.address,)
        )
        workers("w1@pipeline", concurrency=2, env={"SYNC_RUNNING_CLAIM_TTL": "2"})
        request = RefreshRequest.new("slow.sync", 0)
        assert Claims(redis_client).claim("slow.sync", request.request_id, QUEUED_CLAIM_TTL_MS).ok

        def deliver() -> None:
            control_app.send_task(
                TASK_REFRESH, args=[request.to_json()], queue=QUEUE_REFRESH, task_id=request.request_id
            )

        deliver()
        wait_for(lambda: len(source.requests()) == 1, REFRESH_BOUND, what="the guest's request at the source")
        # Longer than the claim TTL, while the parent is blocked in the drip: without heartbeats the claim
        # is gone by now.
        threading.Event().wait(3.0)
        holder = Claims(redis_client).holder("slow.sync")
        deliver()  # the redelivery
        record = wait_value(lambda: settled(redis_client, "slow.sync"), REFRESH_BOUND, what="refresh settled")
        assert len(source.requests()) == 1  # the second delivery never ran the guest
        assert holder is not None
        assert holder.token == request.request_id
        assert record.error_code != "swap_conflict"
        assert record.attempts == 1
        assert generation(path) in (0, 1)


def test_a_key_through_a_symlinked_directory_out_of_the_store_is_refused(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path, tmp_path: Path
) -> None:
    """A refresh key whose path passes through a symlinked directory resolving outside the store is neither
    run nor committed there: the status says ``outside_store``, the job is in the failed list and the
    archive outside is untouched (finding 7: it used to be refreshed in place)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    path = build_archive(outside, "victim.sync", append_guest())
    before = path.read_bytes()
    (store / "linked").symlink_to(outside, target_is_directory=True)
    inside = build_archive(store, "inside.sync", append_guest())
    (store / "alias").symlink_to(store / "inside.sync")
    workers("w1@pipeline")
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["linked/victim.sync", "alias"])
        assert producers.answers(["linked/victim.sync", "alias"], REFRESH_BOUND) == {
            "linked/victim.sync": RequestResult.QUEUED,
            "alias": RequestResult.QUEUED,
        }
    record = wait_value(lambda: settled(redis_client, "linked/victim.sync"), REFRESH_BOUND, what="refusal")
    assert (record.status, record.error_code) == ("failed", "outside_store")
    assert [f.request.archive for f in list_failed(redis_client)] == ["linked/victim.sync"]
    assert path.read_bytes() == before
    # A symlink that stays inside the store is still a store archive.
    alias = wait_value(lambda: settled(redis_client, "alias"), REFRESH_BOUND, what="alias refreshed")
    assert (alias.status, alias.error_code) == ("committed", None)
    assert generation(inside) == 1


def test_a_folder_replaced_by_a_symlink_while_a_job_runs_does_not_lead_its_commit_out_of_the_store(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path, tmp_path: Path
) -> None:
    """Someone who may write to a store folder renames it away while a job of one of its archives runs and
    puts a symlink in its place, to a folder where an archive of the same name and generation is (another
    store's, say). The commit still goes to the folder the job opened, under its new name; the archive the
    symlink leads to is untouched (it used to be the one committed: the worker resolved the folder again by
    name when it committed)."""
    with netns_hosts(["slow"]) as served:
        source = served["slow"]
        source.serve({"/data": Route.trickle(size=8, interval=0.25)})  # the guest runs for 2 s
        guest = fetch_then_append_guest(source.url("/data"))
        path = build_archive(store / "shared", "report.sync", guest, allow_hosts=(source.address,))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        victim = elsewhere / "report.sync"
        victim.write_bytes(path.read_bytes())
        before = victim.read_bytes()
        workers("w1@pipeline")
        with producing(redis_server.url, threads=1) as producers:
            producers.request(["shared/report.sync"])
            assert producers.answers(["shared/report.sync"], REFRESH_BOUND) == {
                "shared/report.sync": RequestResult.QUEUED
            }
        wait_for(lambda: len(source.requests()) == 1, REFRESH_BOUND, what="the guest's request at the source")
        (store / "shared").rename(store / "moved")
        (store / "shared").symlink_to(elsewhere, target_is_directory=True)
        record = wait_value(
            lambda: settled(redis_client, "shared/report.sync"), REFRESH_BOUND, what="the job settled"
        )
    assert victim.read_bytes() == before
    assert (record.status, record.error_code) == ("committed", None)
    assert generation(store / "moved" / "report.sync") == 1


@pytest.mark.parametrize(
    ("guest", "status", "error_code"),
    [(fetch_then_append_guest, "failed", "guest_trap"), (fetch_or_keep_guest, "unchanged", None)],
    ids=["guest-traps", "guest-writes-nothing"],
)
def test_an_unreachable_source_is_retried_then_given_up(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    workers: StartWorkers,
    store: Path,
    guest: Callable[[str], bytes],
    status: str,
    error_code: str | None,
) -> None:
    """A guest whose allowed source refuses connections (egress error connect_failed), whether it then traps
    or writes nothing, is retried as the policy says and then given up: FAST_RETRIES + 1 attempts, the job
    in the failed list, the archive unchanged."""
    [worker] = workers("retry@pipeline", env=FAST_RETRY_ENV)
    port = free_port()  # bound and released: nothing listens there
    source = f"127.0.0.1:{port}"
    path = build_archive(store, "unreachable.sync", guest(f"http://{source}/data"), allow_hosts=(source,))
    before = path.read_bytes()
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["unreachable.sync"])
        answers = producers.answers(["unreachable.sync"], REFRESH_BOUND)
    assert answers == {"unreachable.sync": RequestResult.QUEUED}
    attempts = FAST_RETRIES + 1

    def given_up() -> StatusRecord | None:
        record = settled(redis_client, "unreachable.sync")
        return record if record is not None and record.attempts == attempts else None

    record = wait_value(given_up, REFRESH_BOUND, interval=0.05, what="the last attempt finished")
    [failed] = list_failed(redis_client)
    assert (failed.request.archive, failed.attempts) == ("unreachable.sync", attempts)
    assert failed.error_code == (error_code or "source_unreachable")
    assert (record.status, record.error_code, record.generation, record.attempts) == (
        status,
        error_code or "source_unreachable",
        0,
        attempts,
    )
    if error_code is None:
        assert record.error is not None
        assert "connect_failed" in record.error
    history = read_history(redis_client, "unreachable.sync")
    assert [(r.status, r.error_code) for r in history] == [
        (status, error_code or "source_unreachable")
    ] * attempts
    # Why each attempt failed is in the worker's egress events: the source refused the connection.
    egress = [line for line in worker.log.read_text().splitlines() if f"url=http://{source}/data" in line]
    assert len(egress) == attempts
    assert all("error=connect_failed" in line for line in egress)
    assert path.read_bytes() == before


def get_json(url: str) -> Any:
    """GET ``url`` and decode its JSON body; None while the server does not answer or refuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  (our own http URL)
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_flower_lists_the_workers_and_succeeded_refreshes(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    workers: StartWorkers,
    services: Services,
    store: Path,
    cache_dir: Path,
) -> None:
    """Flower started with ``celery -A workers.celery_entry flower`` lists the workers in /api/workers and a
    finished refresh as a SUCCESS task named sync.refresh in /api/tasks."""
    names = {"w1@pipeline", "w2@pipeline"}
    workers(*sorted(names))
    port = free_port()
    env = child_env(cache_dir, SYNC_BROKER_URL=redis_server.url, FLOWER_UNAUTHENTICATED_API="true")
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_entry", "flower"]
    flower = services.start("flower", [*argv, f"--port={port}", "--address=127.0.0.1"], env)
    base = f"http://127.0.0.1:{port}/api"

    def listed() -> bool:
        assert flower.alive, flower.log_tail()
        found = get_json(f"{base}/workers?refresh=1")
        return bool(found) and names <= set(found)

    wait_for(listed, REFRESH_BOUND, interval=0.5, what="flower lists both workers")
    build_archive(store, "flower.sync", append_guest())
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["flower.sync"])
        [request_answer] = producers.answers(["flower.sync"], REFRESH_BOUND).values()
    assert request_answer is RequestResult.QUEUED
    record = wait_value(lambda: settled(redis_client, "flower.sync"), REFRESH_BOUND, what="refresh finished")
    assert record.status == "committed"

    def succeeded() -> dict[str, Any] | None:
        task: dict[str, Any] = (get_json(f"{base}/tasks") or {}).get(str(record.job_id), {})
        return task if task.get("state") == "SUCCESS" else None

    task = wait_value(succeeded, REFRESH_BOUND, interval=0.5, what="flower shows the task as SUCCESS")
    assert task["name"] == "sync.refresh"
    assert task["worker"] == record.worker


def redis_servers_in(directory: Path) -> set[int]:
    """Pids of the redis-server processes working in ``directory`` or below (the embedded broker runs in
    its data directory; redis-server rewrites its command line, so that is no use)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "redis-server":
                continue
            cwd = (entry / "cwd").readlink()
        except OSError:
            continue
        if cwd.is_relative_to(directory):
            pids.add(int(entry.name))
    return pids


def test_embedded_broker_serves_worker_refresh_and_status(services: Services, tmp_path: Path) -> None:
    """Without --broker, ``syncctl worker`` starts the embedded redis-server in SYNC_CACHE_DIR,
    ``syncctl refresh --wait`` gets the archive refreshed through it, ``syncctl status`` shows the refresh,
    and the worker stops the server when it exits."""
    # A short cache path: the embedded broker's Unix socket lives in it (sun_path is 108 bytes).
    cache = Path(os.path.realpath(tmp_path)) / "c"
    store = tmp_path / "store"
    store.mkdir()
    path = build_archive(store, "embedded.sync", append_guest())
    env = child_env(cache)
    argv = syncctl("worker", "--store", str(store), "--name", "embedded@pipeline", "--concurrency", "1")
    worker = services.start("embedded@pipeline", argv, env)
    pid_file = cache / "broker" / "redis.pid"
    app = make_celery_app(Settings(), broker_url=f"redis+socket://{cache / 'broker' / 'redis.sock'}")
    try:

        def ready() -> bool:
            assert worker.alive, worker.log_tail()
            if not pid_file.exists():
                return False
            replies = app.control.ping(destination=[worker.name], timeout=1.0) or []
            return any(worker.name in reply for reply in replies)

        wait_for(ready, REFRESH_BOUND, interval=0.2, what="the worker answers ping on the embedded broker")
        assert redis_servers_in(cache) == {int(pid_file.read_text())}
        refresh = subprocess.run(
            syncctl("refresh", str(path), "--wait", "--timeout", str(REFRESH_BOUND)),
            env=env,
            capture_output=True,
            text=True,
            timeout=REFRESH_BOUND + 30,
            check=False,
        )
        assert refresh.returncode == 0, refresh.stderr
        assert refresh.stdout.splitlines() == [
            "embedded.sync: queued (generation 0)",
            "embedded.sync: committed (generation 1)",
        ]
        status = subprocess.run(
            syncctl("status", "--json"), env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert status.returncode == 0, status.stderr
        [doc] = json.loads(status.stdout)
        assert (doc["archive"], doc["status"], doc["generation"]) == ("embedded.sync", "committed", 1)
        assert doc["worker"] == "embedded@pipeline"
        assert check_archive(path) == refreshed_once(path)
        worker.stop()
        assert worker.process.returncode == 0, worker.log_tail()
        assert redis_servers_in(cache) == set()
        assert not pid_file.exists()
    finally:
        app.close()
        # Whatever happened above, no server of this test outlives it.
        for pid in redis_servers_in(cache):
            os.kill(pid, signal.SIGKILL)


def _descendants_running(root: int, marker: str) -> list[int]:
    """Pids of ``root``'s descendants whose command line contains ``marker``."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry)] = command

    def under_root(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    found = [pid for pid, command in commands.items() if marker in command and under_root(pid)]
    # A zygote's spare child is a fork of it, with the same command line: count the zygotes themselves.
    return [pid for pid in found if parents.get(pid) not in found]


@pytest.mark.parametrize("setting", [None, "0"], ids=["worker-default", "turned-off"])
def test_a_worker_forks_guests_from_the_sandbox_zygote_unless_told_not_to(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    workers: StartWorkers,
    store: Path,
    setting: str | None,
) -> None:
    """``syncctl worker`` runs its guests' children from the sandbox zygote by default (a long-running
    worker's default, ``WORKER_DEFAULTS``), and ``SYNC_SANDBOX_ZYGOTE=0`` goes back to a fork per job;
    both commit."""
    env = {} if setting is None else {"SYNC_SANDBOX_ZYGOTE": setting}
    [worker] = workers("w1@pipeline", env=env)
    path = build_archive(store, "zygote.sync", append_guest())
    with producing(redis_server.url, threads=1) as producers:
        producers.request(["zygote.sync"])
        assert producers.answers(["zygote.sync"], REFRESH_BOUND) == {"zygote.sync": RequestResult.QUEUED}
    record = wait_value(lambda: finished(redis_client, "zygote.sync"), REFRESH_BOUND, what="refresh recorded")
    assert (record.status, record.generation) == ("committed", 1)
    assert check_archive(path) == refreshed_once(path)
    zygotes = _descendants_running(worker.process.pid, "workers.zygote_main")
    assert len(zygotes) == (1 if setting is None else 0), zygotes


def test_a_lost_message_is_sent_again_by_a_later_read_and_runs_once(
    redis_server: RedisServer, redis_client: redis.Redis, workers: StartWorkers, store: Path
) -> None:
    """A queued claim whose message vanished (a Redis restart can drop one on its way to a worker) is
    re-sent by a read ``STALE_QUEUED_CLAIM_MS`` after the send, under the holder's token; an archive whose
    message was only slow gets a copy too, and still exactly one refresh runs for each."""
    wasm = append_guest()
    paths = {key: build_archive(store, key, wasm) for key in ("lost.sync", "slow.sync")}
    app = make_celery_app(Settings(), broker_url=redis_server.url, producer=True)
    client = client_of(redis_server.url, 2)
    try:
        first = {key: RefreshRequest.new(key, 0) for key in paths}
        for request in first.values():
            assert request_refresh(app, client, request, PendingRefreshes()) is RequestResult.QUEUED
        for raw in redis_client.lrange(QUEUE_REFRESH, 0, -1):
            if json.loads(raw)["headers"]["id"] == first["lost.sync"].request_id:
                assert redis_client.lrem(QUEUE_REFRESH, 1, raw) == 1
        assert redis_client.llen(QUEUE_REFRESH) == 1
        for key in paths:
            claim = f"sync:claim:{key}"
            redis_client.hset(
                claim, "sent", int(str(redis_client.hget(claim, "sent"))) - STALE_QUEUED_CLAIM_MS
            )
            for _ in range(2):
                assert request_refresh(app, client, RefreshRequest.new(key, 0), PendingRefreshes()) is (
                    RequestResult.MERGED
                )
        assert redis_client.llen(QUEUE_REFRESH) == 3
    finally:
        app.close()
        client.close()
    workers("w1@pipeline", concurrency=2)

    def all_done() -> bool:
        idle = redis_client.llen(QUEUE_REFRESH) == 0 and not redis_client.hlen("unacked")
        return idle and all(settled(redis_client, key) for key in paths)

    wait_for(all_done, REFRESH_BOUND, interval=0.2, what="both archives refreshed, queue drained")
    for key, path in paths.items():
        assert check_archive(path) == refreshed_once(path), key
        record = read_status(redis_client, key)
        assert record is not None
        assert record.job_id == first[key].request_id
