"""``OpsEndpoints``: the health and metrics endpoints of mountd, and the accounting of every other request.

A WSGI middleware placed right inside ``RequestGuard`` (so a request must pass the Host check first). It
answers two paths itself and passes everything else on, counting it in ``MountdMetrics``:

* ``GET /.well-known/sync/health`` → 200 ``application/json``
  ``{"status": "ok", "store": true, "broker": "ok"|"unavailable"|"none", "buffered_refreshes": n}``, or 503
  with ``"status": "unhealthy"`` when the store cannot be read (a directory that cannot be listed, an
  archive that cannot be opened). A broker that does not answer PING is reported (``"unavailable"``) but is
  not unhealthy: mountd keeps serving, and refresh requests wait in the hook's pending set (their number is
  ``buffered_refreshes``). ``"none"`` means mountd runs without a broker.
* ``GET /.well-known/sync/metrics`` → the Prometheus text format.

HEAD is answered like GET without a body; any other method on these paths gets 405 with ``Allow``. Store
content never starts with ``.`` (hidden names are never served), so these paths cannot shadow an archive.

Invariants:
    * A health check does one directory listing (or one open) and, with a broker, one PING bounded by the
      producer timeouts (``broker.PRODUCER_SOCKET_TIMEOUT``); it never raises into the server.
    * A request is counted once, when its response is closed (sent, or abandoned by the client); its bytes
      are counted as the server takes them from the iterable.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mountd.http.middleware import StartResponse, WSGIApp, WSGIEnviron
from mountd.http.sendfile import LATE_BYTES_KEY, direct_bytes
from mountd.ops.metrics import CONTENT_TYPE, METRICS_KEY, MountdMetrics
from mountd.refresh.hooks import BrokerHealth
from sync_format.reader import open_regular

log = logging.getLogger(__name__)

#: Path of the health endpoint.
HEALTH_PATH = "/.well-known/sync/health"
#: Path of the metrics endpoint.
METRICS_PATH = "/.well-known/sync/metrics"
#: Methods the ops endpoints answer.
OPS_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Health:
    """What one health check found.

    Attributes:
        store: True when the store directory (or the single archive) can be read.
        broker: ``ok``, ``unavailable`` or ``none`` (no broker configured).
        buffered_refreshes: Refresh requests waiting for the broker to come back.
    """

    store: bool
    broker: str
    buffered_refreshes: int = 0

    @property
    def healthy(self) -> bool:
        """True when mountd can serve: the store is readable (the broker does not matter)."""
        return self.store

    def to_json(self) -> dict[str, Any]:
        """The health document.

        Returns:
            A JSON-ready dict.
        """
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "store": self.store,
            "broker": self.broker,
            "buffered_refreshes": self.buffered_refreshes,
        }


def health_check(store: Path, broker: Callable[[], BrokerHealth]) -> Callable[[], Health]:
    """The health check of one application.

    Args:
        store: The store directory or single archive served.
        broker: Asks the broker behind the freshness hook (``mountd.refresh.hooks.observe``).

    Returns:
        A function running ``check_health`` on them.
    """
    return lambda: check_health(store, broker)


def check_health(store: Path, broker: Callable[[], BrokerHealth]) -> Health:
    """Check that the store can be read and whether the broker answers.

    Args:
        store: The store directory or single archive served.
        broker: Asks the broker behind the freshness hook (``BrokerHealth()``: there is none).

    Returns:
        The findings.
    """
    found = broker()
    return Health(store=_readable(store), broker=found.state, buffered_refreshes=found.buffered)


def _readable(store: Path) -> bool:
    try:
        if store.is_dir():
            with os.scandir(store) as entries:
                next(entries, None)
        else:  # a single archive (a FIFO put there must not hold the health check)
            os.close(open_regular(store)[0])
    except OSError as exc:
        log.warning("health store unreadable store=%s reason=%s", store, exc.strerror or exc)
        return False
    return True


class OpsEndpoints:
    """Answer the health and metrics paths; count every other request.

    Args:
        app: The wrapped application.
        metrics: The application's instruments.
        health: Runs one health check.
    """

    def __init__(self, app: WSGIApp, metrics: MountdMetrics, health: Callable[[], Health]) -> None:
        self.app = app
        self.metrics = metrics
        self.health = health

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in (HEALTH_PATH, METRICS_PATH):
            return self._answer(path, environ, start_response)
        started = time.monotonic()
        method = str(environ.get("REQUEST_METHOD", ""))
        status: list[str] = []

        def counting_start_response(status_line: str, headers: list[Any], exc_info: Any = None) -> Any:
            status[:] = [status_line[:3]]
            return start_response(status_line, headers, exc_info)

        environ[METRICS_KEY] = self.metrics
        environ[LATE_BYTES_KEY] = self.metrics.add_bytes  # a parked body's bytes, once they left
        try:
            result = self.app(environ, counting_start_response)
        except BaseException:
            self.metrics.record_request(method, "500", time.monotonic() - started)
            raise

        def finished() -> None:
            # A payload body the sendfile gateway sent itself never passed through the iterable.
            self.metrics.add_bytes(direct_bytes(environ))
            self.metrics.record_request(method, status[0] if status else "500", time.monotonic() - started)

        return _CountedResponse(result, self.metrics, finished)

    def _answer(self, path: str, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method not in OPS_METHODS:
            body = f"405 Method Not Allowed: {path} answers {', '.join(OPS_METHODS)}\n".encode()
            start_response(
                "405 Method Not Allowed",
                [
                    ("Allow", ", ".join(OPS_METHODS)),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        if path == HEALTH_PATH:
            health = self.health()
            status = "200 OK" if health.healthy else "503 Service Unavailable"
            body = json.dumps(health.to_json()).encode() + b"\n"
            content_type = "application/json"
        else:
            status, body, content_type = "200 OK", self.metrics.exposition(), CONTENT_TYPE
        start_response(
            status,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if method == "HEAD" else [body]


class _CountedResponse:
    """A response iterable that counts the bytes taken from it and reports the request when closed."""

    def __init__(self, result: Iterable[bytes], metrics: MountdMetrics, finished: Callable[[], None]) -> None:
        self._result = result
        self._metrics = metrics
        self._finished = finished

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._result:
            self._metrics.add_bytes(len(chunk))
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finished()
