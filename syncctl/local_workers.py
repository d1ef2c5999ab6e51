"""Refresh workers started by ``syncctl serve`` on the same machine, so one command serves a live store.

The workers are ordinary ``syncctl worker`` processes (a Celery prefork pool each) pointed at the same
broker and store. ``LocalWorkers`` starts them, restarts one that exits (at most ``MAX_RESTARTS`` times, so a
worker that cannot start does not spin), and stops them with SIGTERM (warm shutdown: the job in progress
finishes) and SIGKILL after ``STOP_TIMEOUT`` seconds. Their output goes to this process's stdout and stderr,
or appended to ``log`` when one is given (``syncctl demo`` keeps the terminal for its own instructions).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds a worker gets to finish its job after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: Restarts of an exited worker before giving up on it.
MAX_RESTARTS = 5
#: Seconds between checks that the workers are alive.
WATCH_INTERVAL = 1.0


class LocalWorkers:
    """One supervised ``syncctl worker`` process with ``concurrency`` pool processes, logging in
    ``log_format`` like the command that started it, to ``log`` (a file) or to this process's output."""

    def __init__(
        self,
        *,
        store: Path,
        broker_url: str,
        cache_dir: Path,
        concurrency: int,
        sandbox: str,
        egress_allow_private: tuple[str, ...] = (),
        log: Path | None = None,
        log_format: str = "text",
    ) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "syncctl",
            "--log-format",
            log_format,
            "worker",
            "--store",
            str(store),
            "--broker",
            broker_url,
            "--cache-dir",
            str(cache_dir),
            "--concurrency",
            str(concurrency),
            "--sandbox",
            sandbox,
            "--name",
            f"sync-local-{os.getpid()}@%h",
        ]
        # The operator's egress setting goes by environment, as for any worker (Settings reads it there).
        self._env = {**os.environ, "SYNC_EGRESS_ALLOW_PRIVATE": ",".join(egress_allow_private)}
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._restarts = 0
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="local-workers", daemon=True)

    def start(self) -> LocalWorkers:
        """Start the worker and its watcher.

        Returns:
            This object.
        """
        self._spawn()
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        # Our own interpreter and fixed arguments: nothing here comes from a client.
        if self._log is None:
            self._process = subprocess.Popen(  # noqa: S603
                self._argv, stdin=subprocess.DEVNULL, start_new_session=True, env=self._env
            )
        else:
            with self._log.open("ab") as output:  # the child keeps its own copy of the descriptor
                self._process = subprocess.Popen(  # noqa: S603
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self._env,
                )
        log.info("local worker started pid=%d", self._process.pid)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            process = self._process
            if process is None or process.poll() is None:
                continue
            if self._restarts >= MAX_RESTARTS:
                log.error("local worker keeps exiting status=%s; not restarting it", process.returncode)
                return
            self._restarts += 1
            log.warning("local worker exited status=%s; restarting", process.returncode)
            self._spawn()

    def stop(self) -> None:
        """Stop the watcher, then the worker (SIGTERM, SIGKILL after ``STOP_TIMEOUT``)."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
