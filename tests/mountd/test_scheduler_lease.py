"""Two mountd replicas on one store and one broker (a private redis-server) do not double the refresh traffic:
one holds the scheduler lease and asks for refreshes, the other asks for none; when the holder is killed,
the other takes the lease over within seconds and asks from then on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis_server import RedisServer, wait_for

from broker.scheduling import LEASE_TTL_MS
from sync_format import EMPTY_WASM
from sync_format.testing import make_archive, make_manifest

WAIT = 30.0
#: A valid module that is not the empty one, so the archives have update logic.
LOGIC_WASM = EMPTY_WASM + b"\x00\x05\x04sync"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The replicas' broker."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def metric(url: str, name: str) -> float:
    """One unlabelled sample of a replica's /metrics."""
    with urllib.request.urlopen(url + "/.well-known/sync/metrics", timeout=10) as response:  # noqa: S310  (our loopback server)
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


def start_replica(
    store: Path, redis_url: str, log: Path, stack: ExitStack
) -> tuple[subprocess.Popen[str], str]:
    """``syncctl serve STORE --broker URL --workers 0`` in its own session; returns it and its URL."""
    env = {**os.environ, "SYNC_CACHE_DIR": str(log.parent / "cache")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncctl",
            "serve",
            str(store),
            "--port",
            "0",
            "--broker",
            redis_url,
            "--workers",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=stack.enter_context(log.open("wb")),
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    stack.callback(process.stdout.close)
    stack.callback(process.wait, 30)
    stack.callback(lambda: process.poll() is None and os.killpg(process.pid, signal.SIGTERM))
    line = process.stdout.readline()
    assert line.startswith("serving "), line + log.read_text()
    return process, line.split(" at ")[1].split(" ", maxsplit=1)[0]


def test_one_replica_schedules_and_the_other_takes_over_when_it_dies(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Ten expired archives, no workers: exactly one replica asks for them (the other's request counter stays
    0); after SIGKILL of that one, the other becomes the leader within the lease's TTL and a few seconds."""
    store = tmp_path / "store"
    store.mkdir()
    for i in range(10):
        make_archive(
            store / f"a{i}.txt.sync",
            b"x",
            manifest=make_manifest(ttl=60, created_at="2020-01-01T00:00:00Z"),
            wasm=LOGIC_WASM,
        )
    with ExitStack() as stack:
        first, first_url = start_replica(store, private_redis.url, tmp_path / "first.log", stack)
        second, second_url = start_replica(store, private_redis.url, tmp_path / "second.log", stack)
        urls = {first.pid: first_url, second.pid: second_url}
        wait_for(
            lambda: sum(metric(u, "sync_mountd_scheduler_requests_total") for u in urls.values()) >= 10,
            WAIT,
            interval=0.2,
            what="the due archives asked for",
        )
        leaders = {pid: metric(u, "sync_mountd_scheduler_leader") for pid, u in urls.items()}
        assert sorted(leaders.values()) == [0.0, 1.0]
        holder = first if leaders[first.pid] else second
        survivor = second if holder is first else first
        assert metric(urls[survivor.pid], "sync_mountd_scheduler_requests_total") == 0
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        wait_for(
            lambda: metric(urls[survivor.pid], "sync_mountd_scheduler_leader") == 1.0,
            WAIT,
            interval=0.1,
            what="the lease taken over",
        )
        takeover = time.monotonic() - killed
        print(f"takeover after {takeover:.1f} s (lease TTL {LEASE_TTL_MS / 1000:g} s)")
        wait_for(
            lambda: metric(urls[survivor.pid], "sync_mountd_scheduler_requests_total") >= 10,
            WAIT,
            interval=0.2,
            what="the survivor asks",
        )
