"""mountd as several server processes on one socket (``syncctl serve --processes 2``, a private Redis): both
processes serve, a killed one is replaced, SIGTERM stops them all and a killed supervisor leaves no orphan,
a LOCK taken through one process holds in the other, a child failing at start-up fails the command; and the
Digest nonces of one server's processes (one shared key) get a stale challenge in another process."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dav_client import request
from store_manifests import csv_manifest
from support import RedisServer, wait_for

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.auth.users import Role, UserTable, add_user, load_users
from mountd.ops.endpoints import METRICS_PATH
from sync_format import BuildResult

AddArchive = Callable[..., BuildResult]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Fresh connections tried, at most, to reach a given process (the kernel gives each to whichever accepts).
MAX_TRIES = 400
LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
    b"<locktype><write/></locktype><owner>me</owner></lockinfo>"
)
_PROCESS_LINE = re.compile(rb'^sync_mountd_process\{pid="(\d+)",slot="(\d+)"\} 1\.0$', re.MULTILINE)


@dataclass
class Served:
    """A running ``syncctl serve --processes 2``."""

    process: subprocess.Popen[str]
    url: str

    def connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=STOP_TIMEOUT)

    def children(self) -> set[int]:
        """The supervisor's child processes now."""
        found: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            found.update(int(pid) for pid in (task / "children").read_text().split())
        return found


def whoami(conn: http.client.HTTPConnection) -> tuple[int, int]:
    """``(slot, pid)`` of the process serving this (keep-alive) connection, from its metrics."""
    conn.request("GET", METRICS_PATH)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    match = _PROCESS_LINE.search(body)
    assert match, body
    return int(match.group(2)), int(match.group(1))


def connection_to(served: Served, wanted: Callable[[int, int], bool]) -> http.client.HTTPConnection:
    """A keep-alive connection served by a process for which ``wanted(slot, pid)`` holds."""
    for _ in range(MAX_TRIES):
        conn = served.connect()
        if wanted(*whoami(conn)):
            return conn
        conn.close()
    raise AssertionError(f"no connection reached the wanted process in {MAX_TRIES} tries")


def _first_line(process: subprocess.Popen[str]) -> str:
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    assert lines, f"no line within {START_TIMEOUT} s"
    return lines[0]


def _serve_command(store: Path, tmp_path: Path, redis_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "syncctl",
        "serve",
        str(store),
        "--port",
        "0",
        "--processes",
        "2",
        "--workers",
        "0",
        "--no-scheduler",
        "--broker",
        redis_url,
        "--cache-dir",
        str(tmp_path / "cache"),
        *extra,
    ]


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server."""
    with RedisServer(tmp_path / "redis") as server:
        yield server.url


@pytest.fixture
def served(store: Path, add_archive: AddArchive, tmp_path: Path, redis_url: str) -> Iterator[Served]:
    """``syncctl serve STORE --processes 2`` on a free port, in its own session (nothing is left behind)."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    process = subprocess.Popen(
        _serve_command(store, tmp_path, redis_url),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = _first_line(process)
        match = re.search(r" at (http://\S+) ", line)
        assert match, line
        assert "2 server processes" in line
        yield Served(process, match.group(1))
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def test_both_processes_take_requests(served: Served) -> None:
    """Fresh connections reach both slots, each a different process, and each serves the archive."""
    seen: dict[int, int] = {}
    for _ in range(MAX_TRIES):
        conn = served.connect()
        try:
            slot, pid = whoami(conn)
            conn.request("GET", "/report.csv")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"a,b\n")
        finally:
            conn.close()
        seen[slot] = pid
        if len(seen) == 2:
            break
    assert sorted(seen) == [0, 1]
    assert len(set(seen.values())) == 2
    assert set(seen.values()) == served.children()


def test_a_killed_process_is_replaced(served: Served) -> None:
    """SIGKILL of one server process: the supervisor starts another in its slot, and both slots serve."""
    conn = connection_to(served, lambda slot, pid: slot == 0)
    _, old = whoami(conn)
    conn.close()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: old not in served.children() and len(served.children()) == 2, START_TIMEOUT)
    conn = connection_to(served, lambda slot, pid: slot == 0 and pid != old)
    conn.request("GET", "/report.csv")
    assert conn.getresponse().read() == b"a,b\n"
    conn.close()
    assert served.process.poll() is None


def test_sigterm_stops_every_process(served: Served) -> None:
    """SIGTERM to the supervisor: it exits 0 and no server process is left."""
    children = served.children()
    assert len(children) == 2
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(STOP_TIMEOUT) == 0
    assert all(_gone(pid) for pid in children)


def test_a_killed_supervisor_leaves_no_orphan(served: Served) -> None:
    """SIGKILL of the supervisor: its server processes are told (PR_SET_PDEATHSIG) and exit by themselves."""
    children = served.children()
    assert len(children) == 2
    served.process.kill()
    served.process.wait(STOP_TIMEOUT)
    wait_for(lambda: all(_gone(pid) for pid in children), STOP_TIMEOUT, what="server processes exit")


def test_a_lock_taken_through_one_process_holds_in_the_other(served: Served) -> None:
    """LOCK through slot 0 succeeds; the same LOCK through slot 1 gets 423 until the lock is released."""
    first = connection_to(served, lambda slot, pid: slot == 0)
    second = connection_to(served, lambda slot, pid: slot == 1)
    headers = {"Content-Type": "application/xml", "Timeout": "Second-60"}
    first.request("LOCK", "/report.csv", body=LOCK_BODY, headers=headers)
    resp = first.getresponse()
    resp.read()
    assert resp.status == 200
    token = (resp.getheader("Lock-Token") or "").strip()
    assert token
    second.request("LOCK", "/report.csv", body=LOCK_BODY, headers=headers)
    other = second.getresponse()
    other.read()
    assert other.status == 423
    second.request("UNLOCK", "/report.csv", headers={"Lock-Token": token})
    unlocked = second.getresponse()
    unlocked.read()
    assert unlocked.status == 204
    first.request("LOCK", "/report.csv", body=LOCK_BODY, headers=headers)
    again = first.getresponse()
    again.read()
    assert again.status == 200
    first.close()
    second.close()


def test_one_process_holds_the_scheduler_lease(
    store: Path, add_archive: AddArchive, tmp_path: Path, redis_url: str
) -> None:
    """With the refresh scheduler on, the two processes share its lease in Redis: exactly one is leader."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    command = [arg for arg in _serve_command(store, tmp_path, redis_url) if arg != "--no-scheduler"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        match = re.search(r" at (http://\S+) ", _first_line(process))
        assert match
        served = Served(process, match.group(1))
        leaders: dict[int, int] = {}

        def settled() -> bool:
            conn = served.connect()
            try:
                conn.request("GET", METRICS_PATH)
                body = conn.getresponse().read()
            finally:
                conn.close()
            slot = _PROCESS_LINE.search(body)
            leader = re.search(rb"^sync_mountd_scheduler_leader(?:\{[^}]*\})? (\S+)$", body, re.MULTILINE)
            if slot and leader:
                leaders[int(slot.group(2))] = int(float(leader.group(1)))
            return len(leaders) == 2 and sum(leaders.values()) == 1

        wait_for(settled, START_TIMEOUT, what="one scheduler leader among two processes")
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()


SUPERVISE = """
import sys
from mountd.processes import ProcessesFailed, Supervisor, bind_listener

def child(slot, ready):
    if slot == 1:
        raise RuntimeError("cannot start")
    ready()
    import signal
    signal.pause()

try:
    Supervisor(2, bind_listener("127.0.0.1", 0, 8), child).run(lambda group: print("ready", flush=True))
except ProcessesFailed as exc:
    print("failed:", exc, flush=True)
    sys.exit(3)
"""


def test_a_process_failing_at_start_up_stops_them_all() -> None:
    """A server process that exits before it listens: the supervisor stops the others, never reports ready,
    and raises ``ProcessesFailed`` (the command fails instead of restarting it in a loop)."""
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISE], capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("failed: mountd process 1 exited during start-up"), done.stdout
    assert "ready" not in done.stdout


def test_a_port_in_use_fails_the_command(
    store: Path, add_archive: AddArchive, tmp_path: Path, redis_url: str
) -> None:
    """The supervisor binds the port before any process starts: a port in use makes ``serve`` exit 1."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    with RedisServer(tmp_path / "busy") as busy:  # a port something listens on
        command = _serve_command(store, tmp_path, redis_url)
        command[command.index("--port") + 1] = str(urlsplit(busy.url).port)
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    assert done.returncode == 1
    assert "error:" in done.stderr


# --- Digest nonces shared by the processes of one server ----------------------------------------------

PASSWORD = "olga-secret"  # noqa: S105  # a test user's


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserTable:
    """olga, an owner with digest."""
    path = tmp_path_factory.mktemp("processes-auth") / "users.toml"
    add_user(path, "olga", Role.OWNER, PASSWORD, digest=True)
    return load_users(path)


def _digest(realm: str, nonce: str, uri: str, nc: int) -> str:
    import hashlib

    ha1 = hashlib.md5(f"olga:{realm}:{PASSWORD}".encode()).hexdigest()  # noqa: S324  # digest is MD5
    ha2 = hashlib.md5(f"GET:{uri}".encode()).hexdigest()  # noqa: S324
    response = hashlib.md5(f"{ha1}:{nonce}:{nc:08x}:0a4f113b:auth:{ha2}".encode()).hexdigest()  # noqa: S324
    return (
        f'Digest username="olga", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5, '
        f'qop=auth, nc={nc:08x}, cnonce="0a4f113b", response="{response}"'
    )


def _challenge(url: str) -> tuple[str, str]:
    resp = request(url, "GET", "/report.csv")
    assert resp.status == 401
    challenge = resp.header("www-authenticate") or ""
    realm = re.search(r'realm="([^"]*)"', challenge)
    nonce = re.search(r'nonce="([^"]*)"', challenge)
    assert realm, challenge
    assert nonce, challenge
    return realm.group(1), nonce.group(1)


def _serve_users(store: Path, users: UserTable, key: bytes | None) -> ServerHandle:
    return serve_background(Settings(host="127.0.0.1", port=0), store, users=users, digest_key=key)


@pytest.mark.parametrize("shared", [True, False])
def test_a_nonce_of_another_process_gets_a_stale_challenge(
    store: Path, add_archive: AddArchive, users: UserTable, shared: bool
) -> None:
    """A nonce issued by another server with the same key (another process of one mountd) is answered 401
    with ``stale=true`` (clients retry without asking the user), and the new nonce works; with another key
    the 401 is not stale. Either way the foreign nonce never authenticates."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    key = os.urandom(32)
    with (
        _serve_users(store, users, key) as one,
        _serve_users(store, users, key if shared else os.urandom(32)) as two,
    ):
        realm, nonce = _challenge(one.mount_url)
        resp = request(
            two.mount_url,
            "GET",
            "/report.csv",
            headers={"Authorization": _digest(realm, nonce, "/report.csv", 1)},
        )
        assert resp.status == 401
        challenge = resp.header("www-authenticate") or ""
        assert ("stale=true" in challenge) is shared
        fresh = re.search(r'nonce="([^"]*)"', challenge)
        assert fresh
        ok = request(
            two.mount_url,
            "GET",
            "/report.csv",
            headers={"Authorization": _digest(realm, fresh.group(1), "/report.csv", 1)},
        )
        assert (ok.status, ok.body) == (200, b"a,b\n")
        # The issuing server still takes its own nonce once.
        own = request(
            one.mount_url,
            "GET",
            "/report.csv",
            headers={"Authorization": _digest(realm, nonce, "/report.csv", 1)},
        )
        assert own.status == 200
