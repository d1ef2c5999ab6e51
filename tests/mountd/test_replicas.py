"""Two mountd processes on one store and one private redis-server, as replicas behind a load balancer:
locks are atomic across them (exactly one of two simultaneous LOCKs wins) and dead properties are shared."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dav_client import request
from redis_server import RedisServer

HERE = Path(__file__).parent
LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
    b"<locktype><write/></locktype><owner>me</owner></lockinfo>"
)
ROUNDS = 40


@dataclass
class Replicas:
    """Two running replicas: their URLs, the store and the Redis they share."""

    urls: list[str]
    store: Path
    redis_url: str


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two replica processes serving one writable store, sharing a private Redis (one pair per module: the
    tests use distinct paths)."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    store = tmp_path / "store"
    store.mkdir()
    with RedisServer(tmp_path / "redis") as redis_server:
        procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "run_replica.py"), str(store), redis_server.url],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            urls = []
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line.startswith("ready "), line
                urls.append(line.split()[1])
            yield Replicas(urls, store, redis_server.url)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()


def test_simultaneous_locks_on_two_replicas_grant_one(replicas: Replicas) -> None:
    """40 rounds of two LOCKs of one new path at once, one per replica: exactly one is granted each round."""
    for i in range(ROUNDS):
        path = f"/race-{i}.csv"
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def take(
            url: str, path: str = path, barrier: threading.Barrier = barrier, statuses: list[int] = statuses
        ) -> None:
            barrier.wait()
            headers = {"Content-Type": "application/xml", "Timeout": "Second-60"}
            statuses.append(request(url, "LOCK", path, headers=headers, body=LOCK_BODY).status)

        threads = [threading.Thread(target=take, args=(url,)) for url in replicas.urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        granted = [status for status in statuses if status in (200, 201)]  # 201: LOCK created the file
        assert len(granted) == 1, (i, statuses)
        assert 423 in statuses, (i, statuses)


def test_dead_properties_are_shared(replicas: Replicas) -> None:
    """A PROPPATCH through one replica is seen by a PROPFIND through the other; a removal too."""
    first, second = replicas.urls
    assert request(first, "PUT", "/note.csv", body=b"a\n").status == 201
    patch = (
        b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:z="urn:z"><set><prop>'
        b"<z:colour>teal</z:colour></prop></set></propertyupdate>"
    )
    assert request(first, "PROPPATCH", "/note.csv", body=patch).status == 207
    find = b'<?xml version="1.0"?><propfind xmlns="DAV:" xmlns:z="urn:z"><prop><z:colour/></prop></propfind>'
    seen = request(second, "PROPFIND", "/note.csv", headers={"Depth": "0"}, body=find)
    assert seen.status == 207
    assert b"teal" in seen.body
    remove = (
        b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:z="urn:z"><remove><prop>'
        b"<z:colour/></prop></remove></propertyupdate>"
    )
    assert request(second, "PROPPATCH", "/note.csv", body=remove).status == 207
    assert b"teal" not in request(first, "PROPFIND", "/note.csv", headers={"Depth": "0"}, body=find).body


def _syncctl(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "syncctl", "locks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_syncctl_lists_and_breaks_locks(replicas: Replicas) -> None:
    """``syncctl locks list`` shows a folder lock taken through a replica; ``break --path`` frees it."""
    first, second = replicas.urls
    assert request(first, "MKCOL", "/team/").status == 201
    headers = {"Content-Type": "application/xml", "Timeout": "Infinite", "Depth": "infinity"}
    taken = request(first, "LOCK", "/team/", headers=headers, body=LOCK_BODY)
    assert taken.status == 200
    token = (taken.header("lock-token") or "").strip("<>")
    assert request(second, "PUT", "/team/a.csv", body=b"x\n").status == 423
    listing = _syncctl("list", str(replicas.store), "--broker", replicas.redis_url)
    assert token in listing
    assert "\t/team\t" in listing
    broken = _syncctl("break", str(replicas.store), "--broker", replicas.redis_url, "--path", "/team/")
    assert token in broken
    assert token not in _syncctl("list", str(replicas.store), "--broker", replicas.redis_url)
    assert request(second, "PUT", "/team/a.csv", body=b"x\n").status == 201
