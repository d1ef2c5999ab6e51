"""The worker's ops endpoint: ``GET /metrics`` (Prometheus) and ``GET /health``, from the main process.

``start_endpoint`` runs a small HTTP server on a thread of the worker's main process (the one that runs
Celery's consumer and supervises the pool), bound to ``Settings.metrics_host:metrics_port``:

* ``/metrics`` merges every pool process's values (``workers.metrics.exposition``);
* ``/health`` answers 200 ``{"status": "ok", "broker": "ok", "pid": N}`` when the broker's Redis answers
  PING, else 503 with ``"status": "unhealthy", "broker": "unavailable"``. That the server answers at all
  shows the main process is up: the thread dies with it.

HEAD is answered like GET without a body; other methods get 405, other paths 404.

Invariants:
    * Pool processes are forked from the main process after the server started, so each inherits the
      listening socket; ``close_inherited`` (connected to Celery's ``worker_process_init``) closes it in
      every pool process, so only the main process ever holds the port and a dead main process leaves it
      refusing connections instead of hanging them.
    * A health check waits at most ``HEALTH_PING_TIMEOUT`` for Redis; it never raises into the server.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from broker.redis_client import make_redis, ping
from broker.settings import Settings
from sync_format.errors import BrokerUnavailable
from workers.metrics import disable_multiprocess, enable_multiprocess, exposition, metrics_directory

log = logging.getLogger(__name__)

#: Path of the Prometheus page.
METRICS_PATH = "/metrics"
#: Path of the health check.
HEALTH_PATH = "/health"
#: Seconds a health check waits for the broker's Redis to connect and to answer PING.
HEALTH_PING_TIMEOUT = 2.0
#: Content type of the Prometheus text format 0.0.4 (our names are plain ASCII, so that is what is written).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsEndpoint:
    """The running endpoint.

    Args:
        server: The bound HTTP server.
        directory: The multiprocess metrics directory.
    """

    def __init__(self, server: ThreadingHTTPServer, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self._thread = threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True)
        self._owner = os.getpid()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port bound (the real port when 0 was asked for)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> OpsEndpoint:
        """Serve on a daemon thread.

        Returns:
            This endpoint.
        """
        self._thread.start()
        host, port = self.address
        log.info("worker metrics listening host=%s port=%d", host, port)
        return self

    def close_inherited(self, **_: Any) -> None:
        """In a forked pool process: close the inherited listening socket (Celery signal receiver)."""
        if os.getpid() != self._owner:
            self.server.socket.close()

    def stop(self) -> None:
        """Stop serving, close the socket and remove the metrics directory (main process only)."""
        if os.getpid() != self._owner:
            return
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
        disable_multiprocess(self.directory)


def start_endpoint(settings: Settings, redis_url: str) -> OpsEndpoint | None:
    """Switch on multiprocess metrics and serve ``/metrics`` and ``/health``, when a port is configured.

    Call in the worker's main process before Celery starts its pool.

    Args:
        settings: ``metrics_port`` (0: no endpoint), ``metrics_host`` and ``cache_dir``.
        redis_url: The broker's Redis, which ``/health`` pings.

    Returns:
        The running endpoint, or None when ``metrics_port`` is 0.

    Raises:
        OSError: The address cannot be bound.
    """
    if settings.metrics_port == 0:
        return None
    directory = metrics_directory(settings.cache_dir)
    enable_multiprocess(directory)
    client = make_redis(redis_url, socket_timeout=HEALTH_PING_TIMEOUT, connect_timeout=HEALTH_PING_TIMEOUT)

    def health() -> tuple[bool, dict[str, Any]]:
        try:
            ping(client)
        except BrokerUnavailable as exc:
            log.info("worker health broker unavailable reason=%s", exc.message)
            return False, {"status": "unhealthy", "broker": "unavailable", "pid": os.getpid()}
        return True, {"status": "ok", "broker": "ok", "pid": os.getpid()}

    handler = _handler_class(lambda: exposition(directory), health)
    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), handler)
    except OSError:
        disable_multiprocess(directory)
        raise
    server.daemon_threads = True
    return OpsEndpoint(server, directory).start()


def _handler_class(
    metrics: Callable[[], bytes], health: Callable[[], tuple[bool, dict[str, Any]]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sync-worker"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            if self.path == METRICS_PATH:
                self._send(200, METRICS_CONTENT_TYPE, metrics(), body=body)
            elif self.path == HEALTH_PATH:
                ok, doc = health()
                self._send(
                    200 if ok else 503, "application/json", json.dumps(doc).encode() + b"\n", body=body
                )
            else:
                self._send(404, "text/plain; charset=utf-8", b"404 Not Found\n", body=body)

        def _refuse(self) -> None:
            self._send(
                405, "text/plain; charset=utf-8", b"405 Method Not Allowed\n", body=True, allow="GET, HEAD"
            )

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def _send(self, status: int, content_type: str, data: bytes, *, body: bool, allow: str = "") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if allow:
                self.send_header("Allow", allow)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("worker metrics request %s", format % args)

    return Handler
