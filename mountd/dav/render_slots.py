"""At most a few folder listings rendered by wsgidav at once; the rest wait briefly, then 503.

Why: a PROPFIND Depth 1 of a folder that the fast path (``mountd.http.fast_propfind``) does not answer is
rendered by wsgidav as an element tree of every member, in memory, under the interpreter lock. That is every
listing of a writable store, and any listing with a condition header or an ``If`` header, which any reader
can add. Measured on a folder of 10,000 archives: about 35 MB and 2.5 s of CPU per request; 16 such requests
at once peaked at 779 MB and kept the server busy for 42 s, a GET waiting 31 s of it
(``bench/replay_heavy_listings.py``).

``RenderSlots`` bounds them: ``MAX_RENDERS`` at once (more would not finish sooner: they share one
interpreter lock), and ``MAX_WAITING`` waiting for a slot, each ``RENDER_WAIT`` seconds at most; any other is
answered 503 with ``Retry-After`` at once. So such listings occupy four server threads at most, and the
other twelve keep answering GETs (a waiting request holds its thread: with 14 of them waiting, a GET of a
small file took 2.5 s).

Invariants:
    * A slot is held only while wsgidav builds the answer (``custom_request_handler``), never while it is
      sent: a slow reader of the document holds no slot.
    * A slot is always given back, whatever the handler raises.
    * PROPFINDs of one resource (Depth 0, or Depth 1 of a file), listings of folders with fewer than
      ``MIN_MEMBERS`` members and everything the fast path answers take no slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from wsgidav.dav_error import HTTP_SERVICE_UNAVAILABLE, DAVError  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: Folder listings wsgidav renders at once.
MAX_RENDERS = 2
#: Members (archives and folders) from which a listing takes a slot: a smaller one costs a few MB and a
#: fraction of a second, and clients list several folders at once (rclone's 8 checkers, Explorer, Finder):
#: a slot for every listing answered 4 % of a writable store's listings 503 under 100 clients.
MIN_MEMBERS = 1000
#: Listings waiting for a slot at once; one more is answered 503 without waiting.
MAX_WAITING = 2
#: Seconds a listing waits for a slot before it is answered 503.
RENDER_WAIT = 5.0
#: ``Retry-After`` of that 503, in seconds.
RETRY_AFTER = 2


class RenderSlots:
    """A bounded number of renders at once (see the module docstring).

    Args:
        count: Renders at once.
        waiting: Renders waiting for a slot at once.
        wait: Seconds a render waits for a slot before it is refused.
    """

    def __init__(
        self, count: int = MAX_RENDERS, waiting: int = MAX_WAITING, wait: float = RENDER_WAIT
    ) -> None:
        self._slots = threading.BoundedSemaphore(count)
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = waiting
        self.wait = wait

    @contextmanager
    def held(self, what: str) -> Iterator[None]:
        """Hold a slot for the block.

        Args:
            what: The request, for the log line of a refusal.

        Raises:
            DAVError: 503 with ``Retry-After`` when no slot is free and enough requests wait already, or
                none came free within ``wait`` seconds.
        """
        if not self._slots.acquire(blocking=False) and not self._wait_for_slot():
            log.warning("listing refused reason=render-slots-busy request=%s", what)
            raise DAVError(
                HTTP_SERVICE_UNAVAILABLE,
                "busy rendering other folder listings; retry",
                add_headers=[("Retry-After", str(RETRY_AFTER))],
            )
        try:
            yield
        finally:
            self._slots.release()

    def _wait_for_slot(self) -> bool:
        # Wait for a slot unless ``max_waiting`` requests wait already; True once one is held.
        with self._lock:
            if self._waiting >= self.max_waiting:
                return False
            self._waiting += 1
        try:
            return self._slots.acquire(timeout=self.wait)
        finally:
            with self._lock:
                self._waiting -= 1
