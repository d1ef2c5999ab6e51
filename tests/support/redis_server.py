"""Private ``redis-server`` processes for tests.

``RedisServer`` runs the system ``redis-server`` on a free TCP port of 127.0.0.1 (or on a Unix socket) with
its working directory in a temp dir, no persistence, and readiness checked by PING. It can be stopped and
started again on the same port (Redis outages), and paused with SIGSTOP (a hung Redis). Nothing here uses
6379 or any fixed port. If the server cannot start, the caller's test fails; nothing skips.

Tests import it from ``support`` (or, as before, from ``redis_server``): pytest puts ``tests/`` on
``sys.path`` because ``tests/conftest.py`` lives there (prepend import mode).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support.polling import free_port, wait_for

#: Seconds a server gets to answer PING after it was started.
START_TIMEOUT = 15.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


class RedisServer:
    """One private ``redis-server``.

    Args:
        directory: Working directory (created if missing); the Unix socket lives here when used.
        unix_socket: Listen on ``<directory>/redis.sock`` instead of TCP.
        executable: The server binary.
        appendonly: Keep the data in an append-only file (fsync every second, as the compose stack's Redis):
            a SIGTERM ``restart`` then keeps everything.
    """

    def __init__(
        self,
        directory: Path,
        *,
        unix_socket: bool = False,
        executable: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.unix_socket = unix_socket
        self.executable = executable or shutil.which("redis-server") or "redis-server"
        self.port = 0 if unix_socket else free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """The Unix socket (only used when ``unix_socket``)."""
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        """The redis-py URL."""
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def celery_url(self) -> str:
        """The Celery URL."""
        if self.unix_socket:
            return f"redis+socket://{self.socket_path}"
        return self.url

    def client(self) -> redis.Redis:
        """A fresh client (5 s timeouts, no retries) decoding responses."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=5,
            socket_connect_timeout=5,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, after a ``stop``) and wait for PING."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unix_socket:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        process = self.process
        probe = self.client()
        try:
            wait_for(
                lambda: process.poll() is not None or self._answers(probe),
                START_TIMEOUT,
                what=f"redis-server answers PING at {self.url}",
            )
        finally:
            probe.close()
        if process.poll() is not None:
            self.process = None
            log_text = (self.directory / "redis.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server exited with {process.returncode}: {log_text[-2000:]}")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until it is gone; a paused one is resumed."""
        process = self.process
        if process is None:
            return
        self.process = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> RedisServer:
        """Stop and start again on the same address (its data is gone unless ``appendonly``)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections are accepted by the kernel but never answered."""
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause``."""
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        os.kill(self.process.pid, signal.SIGCONT)

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
