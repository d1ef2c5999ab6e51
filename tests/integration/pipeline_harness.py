"""The pieces the pipeline tests run: worker processes, guests, a gate server and archive checks.

Workers are real ``syncctl worker`` processes (with ``FAST_RETRY_ENV`` or ``FAST_REDELIVERY_ENV`` in their
environment where a test needs retries or redeliveries soon), each in a session of its own so that a test can
SIGKILL a whole worker (main process and pool) at once. Their output goes to a log file per worker, printed
when a test fails. Guests are WAT compiled on demand (``tests/guests.py``); each appends one byte to the old
payload, so "refreshed exactly once" is checked by content as well as by generation. The gate is an HTTP
server on 127.0.0.1 that holds every request until the test opens it: a guest fetching from it is mid-job for
as long as the test wants. Imported by the tests as ``pipeline_harness`` (``tests/integration`` is on
``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import redis
import wasmtime
from celery import Celery  # type: ignore[import-untyped]
from guests import HOST_IMPORTS, PAGE, STRINGS, http_request, wat_string
from redis_server import wait_for

from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    SERVICE_CONNECT_TIMEOUT,
    SERVICE_SOCKET_TIMEOUT,
    PendingRefreshes,
    RefreshRequest,
    RequestResult,
    Settings,
    make_celery_app,
    make_redis,
    request_refresh,
)
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest

T = TypeVar("T")

#: The repository root (``python -m syncctl`` runs from here).
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: The byte every refresh appends to the payload.
MARK = b"+"
#: Seconds a worker gets to answer ping after it was started (imports, pool fork, broker connection).
READY_TIMEOUT = 60.0
#: Seconds a worker gets to exit after SIGTERM (warm shutdown: it finishes the job in progress).
STOP_TIMEOUT = 30.0
#: Seconds the gate holds a request at most (a test that forgets to open it fails instead of hanging).
GATE_TIMEOUT = 60.0
#: Retries after the first attempt of workers started with ``FAST_RETRY_ENV``.
FAST_RETRIES = 2
#: Settings of a worker that retries ``FAST_RETRIES`` times less than a second apart (default: 5 over
#: minutes).
FAST_RETRY_ENV = {
    "SYNC_RETRY_MAX_RETRIES": str(FAST_RETRIES),
    "SYNC_RETRY_BASE_DELAY": "0.2",
    "SYNC_RETRY_MAX_DELAY": "0.5",
}
#: Settings of a worker whose dead jobs come back soon: a visibility timeout of 30 s (the running claim's
#: lifetime, which it must outlast) + 5 s instead of 60 s + 30 s.
FAST_REDELIVERY_ENV = {
    "SYNC_RETRY_BASE_DELAY": "0.5",
    "SYNC_RETRY_MAX_DELAY": "1",
    "SYNC_VISIBILITY_MARGIN": "5",
}
#: Where a guest keeps the payload it read (the strings of ``http_request`` live below it).
PAYLOAD_AT = PAGE


def wait_value(
    predicate: Callable[[], T | None], timeout: float, *, interval: float = 0.01, what: str = ""
) -> T:
    """``wait_for`` a predicate that returns a value or None; the first value (falsy values count as not
    yet)."""
    value = wait_for(predicate, timeout, interval=interval, what=what)
    assert value is not None
    return value


def child_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a sync process: ours without any SYNC_* setting, plus a cache dir, the operator's
    egress setting opening the test hosts (loopback and the namespace block; ``extra`` may replace it) and
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    if os.environ.get("SYNC_TEST_SPARE_CHILD") == "1":  # run the workers' guests through spare children
        env["SYNC_SANDBOX_SPARE_CHILD"] = "1"
    if os.environ.get("SYNC_TEST_ZYGOTE") == "1":  # through the sandbox zygote
        env["SYNC_SANDBOX_ZYGOTE"] = "1"
    env.update(
        SYNC_CACHE_DIR=str(cache_dir),
        PYTHONUNBUFFERED="1",
        SYNC_EGRESS_ALLOW_PRIVATE="127.0.0.1:*,10.231.0.0/16:*",
        # A failed or unchanged refresh releases its claim at once: these tests follow one with the next
        # request (``test_a_trapping_guest_fails_once_and_is_not_retried`` puts the default cooldown back).
        SYNC_REFRESH_COOLDOWN="0",
    )
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    """A service started by a test in a session of its own, with its output in ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        """True while the main process runs."""
        return self.process.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the whole process group (main process and pool) and reap the main process."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def terminate(self) -> None:
        """Send SIGTERM to the main process (a worker then finishes its job in progress and exits)."""
        if self.alive:
            self.process.terminate()

    def stop(self) -> None:
        """SIGTERM the main process; SIGKILL the group if it has not exited within ``STOP_TIMEOUT``."""
        if self.alive:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)
        # Whatever is left of the group (a pool process, or everything after the timeout) is killed.
        self.kill_group()

    def log_tail(self, lines: int = 60) -> str:
        """The end of the log, for a failure report."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> ServiceProcess:
    """Start ``argv`` from the repository root in a new session, output appended to ``log``."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(env),
            start_new_session=True,
        )
    return ServiceProcess(name, process, log)


class Services:
    """The processes one test started, all stopped when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceProcess] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> ServiceProcess:
        """Start a process in a session of its own, logging to ``<tmp>/logs/<name>.log``."""
        logs = self.tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        service = spawn(name, argv, env, logs / f"{name.replace('@', '-')}.log")
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        """Stop every process (workers finish the job in progress; the rest is killed), all at once."""
        for service in self.started:
            service.terminate()
        for service in reversed(self.started):
            service.stop()

    def report(self) -> str:
        """The tail of every log, for a failed test."""
        return "\n".join(f"----- {s.name} (pid {s.process.pid}) -----\n{s.log_tail()}" for s in self.started)


#: ``workers(*names, concurrency=1, env=None)``: the conftest fixture that starts named workers.
StartWorkers = Callable[..., list[ServiceProcess]]


def syncctl(*args: str) -> list[str]:
    """The argv of a ``syncctl`` command run with this interpreter."""
    return [sys.executable, "-m", "syncctl", *args]


def worker_argv(name: str, store: Path, *, broker: str | None, concurrency: int) -> list[str]:
    """``syncctl worker`` for one named worker (embedded broker when ``broker`` is None)."""
    argv = syncctl("worker", "--store", str(store), "--concurrency", str(concurrency), "--name", name)
    return argv + (["--broker", broker] if broker else [])


def answering(app: Celery, names: Sequence[str]) -> set[str]:
    """The workers among ``names`` that answer a broadcast ping."""
    replies = app.control.ping(destination=list(names), timeout=1.0) or []
    return {hostname for reply in replies for hostname in reply}


def wait_ready(app: Celery, workers: Sequence[ServiceProcess], timeout: float = READY_TIMEOUT) -> None:
    """Wait until every worker answers ping; fail at once (with its log) if one exits instead."""
    names = [w.name for w in workers]

    def ready() -> bool:
        for worker in workers:
            exited = f"worker {worker.name} exited with {worker.process.returncode}"
            assert worker.alive, f"{exited}:\n{worker.log_tail()}"
        return answering(app, names) == set(names)

    wait_for(ready, timeout, interval=0.2, what=f"workers {names} answer ping")


# --- guests -------------------------------------------------------------------------------------------


#: ``$append``: write the old payload followed by ``MARK`` as the new payload.
APPEND = f"""(func $append (local $n i32)
    (local.set $n (call $payload_size))
    (drop (call $payload_read (i32.const 0) (local.get $n) (i32.const {PAYLOAD_AT})))
    (i32.store8 (i32.add (local.get $n) (i32.const {PAYLOAD_AT})) (i32.const {MARK[0]}))
    (drop (call $payload_write (i32.const 0) (i32.add (local.get $n) (i32.const 1))
      (i32.const {PAYLOAD_AT}))))"""


def _module(run: str, data: Mapping[int, bytes] | None = None) -> bytes:
    """A module with the host imports, two pages of memory, ``data``, ``$append`` and ``run`` as body of
    the exported entry point."""
    segments = "".join(f"\n  (data (i32.const {at}) {wat_string(b)})" for at, b in (data or {}).items())
    text = f"""(module {HOST_IMPORTS}
  (memory (export "memory") 2){segments}
  {APPEND}
  (func (export "run") {run}))"""
    return bytes(wasmtime.wat2wasm(text))


def append_guest() -> bytes:
    """A guest that appends ``MARK`` to the payload."""
    return _module("(call $append)")


def fetch_then_append_guest(url: str) -> bytes:
    """A guest that fetches ``url``, traps unless it answered 200, then appends ``MARK``.

    An unreachable ``url`` makes the run fail with ``guest_trap`` and a ``connect_failed`` egress error,
    which the workers treat as a transient failure (the source was unreachable).
    """
    request, data = http_request(url, at=STRINGS)
    return _module(f"(if (i32.ne {request} (i32.const 200)) (then unreachable)) (call $append)", data)


def fetch_or_keep_guest(url: str) -> bytes:
    """A guest that fetches ``url`` and appends ``MARK`` only if it answered 200, else writes nothing.

    This is how reference guests behave when their source is down: no new payload. An unreachable ``url``
    makes the run end ``unchanged`` with a ``connect_failed`` egress error, which is transient too.
    """
    request, data = http_request(url, at=STRINGS)
    return _module(f"(if (i32.eq {request} (i32.const 200)) (then (call $append)))", data)


def trap_guest() -> bytes:
    """A guest that traps at once (a deterministic failure)."""
    return _module("unreachable")


# --- archives -----------------------------------------------------------------------------------------


def original_payload(name: str) -> bytes:
    """The payload an archive whose file is called ``name`` is built with."""
    return f"payload of {name}\n".encode()


def build_archive(store: Path, name: str, wasm: bytes, *, allow_hosts: tuple[str, ...] = ()) -> Path:
    """Build ``store/name`` at generation 0 with ``wasm`` as its guest (timeout 30 s)."""
    path = store / name
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(timeout=30, ttl=60, allow_hosts=allow_hosts)
    make_archive(path, original_payload(path.name), manifest=manifest, wasm=wasm)
    return path


@dataclass(frozen=True)
class ArchiveCheck:
    """What a test needs to know about an archive after refreshes, read from one open snapshot."""

    generation: int
    payload: bytes
    verified: bool


def check_archive(path: Path) -> ArchiveCheck:
    """Open the archive, read its payload (CRC checked) and compare its BLAKE3 with ``state.json``."""
    with open_archive(path) as snap:
        payload = snap.read_payload()
        verified = snap.digest_payload().blake3 == snap.state.payload_blake3
        return ArchiveCheck(snap.generation, payload, verified)


def generation(path: Path) -> int:
    """The archive's generation now."""
    with open_archive(path) as snap:
        return snap.generation


# --- the gate -----------------------------------------------------------------------------------------


@dataclass
class Gate:
    """An HTTP server on 127.0.0.1 that answers every request only once ``open`` was called."""

    server: ThreadingHTTPServer
    opened: threading.Event = field(default_factory=threading.Event)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        """The allow-list entry of the gate (an exact IP literal with its port)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL guests fetch."""
        return f"http://{self.host}/gate"

    def seen(self) -> int:
        """Requests received so far (answered or held)."""
        with self.lock:
            return len(self.requests)

    def open(self) -> None:
        """Answer every held and future request."""
        self.opened.set()


@contextlib.contextmanager
def running_gate() -> Iterator[Gate]:
    """A gate serving in a background thread until the block ends (it is opened on the way out)."""
    gate: Gate

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with gate.lock:
                gate.requests.append(self.path)
            gate.opened.wait(GATE_TIMEOUT)
            body = b"open"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A worker killed while its request was held leaves a broken connection: expected here.
            del request, client_address

    gate = Gate(Server(("127.0.0.1", 0), Handler))
    thread = threading.Thread(target=gate.server.serve_forever, name="gate", daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        gate.open()
        gate.server.shutdown()
        gate.server.server_close()
        thread.join(timeout=10)


# --- producers ----------------------------------------------------------------------------------------


class Producers:
    """Request threads of one producer process (as in mountd: one app, one client, one pending set).

    Each key fed to ``request`` is asked for once, by whichever thread takes it, with
    ``request_refresh(RefreshRequest.new(key, 0))``; the answer (or the exception, which a test then
    reports) is kept by key. The producer timeouts are mountd's.

    Args:
        url: The Redis (and broker) URL.
        threads: Request threads.
    """

    def __init__(self, url: str, threads: int = 4) -> None:
        self.app = make_celery_app(Settings(), broker_url=url, producer=True)
        self.client = make_redis(
            url, socket_timeout=PRODUCER_SOCKET_TIMEOUT, connect_timeout=PRODUCER_CONNECT_TIMEOUT
        )
        self.pending = PendingRefreshes()
        self._feed: queue.Queue[str | None] = queue.Queue()
        self._answers: dict[str, RequestResult | BaseException] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"producer-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (key := self._feed.get()) is not None:
            answer: RequestResult | BaseException
            try:
                answer = request_refresh(self.app, self.client, RefreshRequest.new(key, 0), self.pending)
            except BaseException as exc:  # noqa: BLE001  (kept and reported by the test)
                answer = exc
            with self._lock:
                self._answers[key] = answer

    def request(self, keys: Sequence[str]) -> None:
        """Hand ``keys`` to the request threads."""
        for key in keys:
            self._feed.put(key)

    def answers(self, keys: Sequence[str], timeout: float) -> dict[str, RequestResult | BaseException]:
        """Wait until every key in ``keys`` was answered; return their answers."""

        def done() -> dict[str, RequestResult | BaseException] | None:
            with self._lock:
                if all(key in self._answers for key in keys):
                    return {key: self._answers[key] for key in keys}
            return None

        return wait_value(done, timeout, what=f"{len(keys)} requests answered")

    def close(self) -> None:
        """Stop the threads and close the app and client."""
        for _ in self._threads:
            self._feed.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self.app.close()
        self.client.close()


@contextlib.contextmanager
def producing(url: str, threads: int = 4) -> Iterator[Producers]:
    """``Producers`` for the block."""
    producers = Producers(url, threads)
    try:
        yield producers
    finally:
        producers.close()


def client_of(url: str, connections: int) -> redis.Redis:
    """A Redis client with the service timeouts and room for ``connections`` concurrent calls."""
    return make_redis(
        url,
        socket_timeout=SERVICE_SOCKET_TIMEOUT,
        connect_timeout=SERVICE_CONNECT_TIMEOUT,
        max_connections=connections,
    )
