"""The demo's data source: a small HTTP server on loopback whose documents change with time.

``syncctl demo`` starts one ``DemoSource`` before it builds its archives, because their guests fetch from
it and their manifests must name it (``127.0.0.1:PORT``); a loopback address is reachable only when the
operator opens it too, so the demo adds ``operator_entry`` to ``SYNC_EGRESS_ALLOW_PRIVATE`` for its workers
and says so. It serves two documents, both computed from the clock:

* ``/readings.csv``: a CSV of sensor readings, one new row every ``READING_INTERVAL`` seconds, the last
  ``CSV_ROWS`` rows (so it changes and stays small);
* ``/feed.json``: a JSON feed with the time of the latest reading and its last ``FEED_ITEMS`` items.

Invariants: it binds 127.0.0.1 only, on a free port chosen by the kernel; the server runs in one daemon
thread of the process that owns it (so it cannot outlive that process) and ``stop`` joins it; a document is
a pure function of the reading number, so two fetches within one interval return the same bytes; any other
path is 404. Requests are logged at debug level, never on stderr by ``http.server`` itself.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from sync_format.freshness import format_timestamp

log = logging.getLogger(__name__)

#: Address the source binds: loopback only, it serves nobody but the local workers.
SOURCE_HOST = "127.0.0.1"
#: Seconds between two readings, i.e. how often both documents change.
READING_INTERVAL = 2.0
#: Readings in ``/readings.csv``.
CSV_ROWS = 20
#: Items in ``/feed.json``.
FEED_ITEMS = 5
#: Readings that already exist when the source starts, so the first documents are not nearly empty.
HISTORY = 5
#: Sensors the readings cycle through.
SENSORS = ("roof", "garden", "cellar")
#: Seconds ``stop`` waits for the server thread.
STOP_TIMEOUT = 10.0

READINGS_PATH = "/readings.csv"
FEED_PATH = "/feed.json"
CSV_HEADER = "reading,time,sensor,celsius\n"

_NS = 1_000_000_000


def _celsius(number: int) -> float:
    """A plausible temperature for reading ``number``: a slow wave per sensor, no randomness."""
    sensor = number % len(SENSORS)
    return round(12.0 + 4.0 * sensor + 3.0 * math.sin(number / 7.0), 1)


class DemoSource:
    """The HTTP source; use as a context manager (``start`` on enter, ``stop`` on exit)."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._origin_ns = clock_ns() - HISTORY * int(READING_INTERVAL * _NS)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (only after ``start``)."""
        if self._server is None:
            raise RuntimeError("the demo source is not started")
        return int(self._server.server_address[1])

    @property
    def host_entry(self) -> str:
        """The ``allow_hosts`` entry that lets a guest reach this source: ``127.0.0.1:PORT``."""
        return f"{SOURCE_HOST}:{self.port}"

    @property
    def operator_entry(self) -> str:
        """The ``SYNC_EGRESS_ALLOW_PRIVATE`` entry that opens this source (and nothing else on loopback)."""
        return f"{SOURCE_HOST}:{self.port}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (``/readings.csv``) on this source."""
        return f"http://{self.host_entry}{path}"

    def start(self) -> DemoSource:
        """Bind a free loopback port and serve in a daemon thread.

        Returns:
            This object.
        """
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, content_type = source.document(self.path)
                status = HTTPStatus.OK if body is not None else HTTPStatus.NOT_FOUND
                data = body if body is not None else b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("demo source request %s", format % args)

        self._server = ThreadingHTTPServer((SOURCE_HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-source", daemon=True)
        self._thread.start()
        log.info("demo source started url=%s", self.url("/"))
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
        log.info("demo source stopped")
        self._server = None

    def __enter__(self) -> DemoSource:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def latest(self) -> int:
        """The number of the latest reading (readings start at 1)."""
        elapsed = max(0, self._clock_ns() - self._origin_ns)
        return 1 + elapsed // int(READING_INTERVAL * _NS)

    def document(self, path: str) -> tuple[bytes | None, str]:
        """The body and content type served at ``path``; the body is None for an unknown path."""
        latest = self.latest()
        if path == READINGS_PATH:
            return self.readings_csv(latest), "text/csv; charset=utf-8"
        if path == FEED_PATH:
            return self.feed_json(latest), "application/json"
        return None, "text/plain; charset=utf-8"

    def _reading_time(self, number: int) -> str:
        return format_timestamp(self._origin_ns + (number - 1) * int(READING_INTERVAL * _NS))

    def readings_csv(self, latest: int) -> bytes:
        """``/readings.csv`` when ``latest`` is the newest reading."""
        rows = [
            f"{n},{self._reading_time(n)},{SENSORS[n % len(SENSORS)]},{_celsius(n)}\n"
            for n in range(max(1, latest - CSV_ROWS + 1), latest + 1)
        ]
        return (CSV_HEADER + "".join(rows)).encode()

    def feed_json(self, latest: int) -> bytes:
        """``/feed.json`` when ``latest`` is the newest reading."""
        items = [
            {
                "id": n,
                "published": self._reading_time(n),
                "title": f"{SENSORS[n % len(SENSORS)]}: {_celsius(n)} °C",
            }
            for n in range(latest, max(0, latest - FEED_ITEMS), -1)
        ]
        feed = {"title": "sync demo feed", "updated": self._reading_time(latest), "items": items}
        return (json.dumps(feed, indent=2, ensure_ascii=False) + "\n").encode()
