"""HTTP freshness: the response headers that say how fresh a payload is, and the request directives that ask
for a fresh one. One place for both GET paths (``mountd.http.fast_get`` and wsgidav's) and HEAD.

Response headers (``freshness_headers``), for every GET and HEAD of an archive answered 200, 206 or 304:

* ``Age``: whole seconds since the served generation's expiry base (its ``updated_at``, or the manifest's
  ``created_at`` before the first refresh).
* ``Cache-Control: max-age=<TTL>`` while fresh — the freshness lifetime counted from that same base, so
  that ``max-age - Age`` (what RFC 9111 §4.2 has every cache compute) is the seconds left; a cache holding
  the response never keeps it past the archive's expiry. ``max-age=0, must-revalidate`` once expired.
* ``Expires``: the expiry instant as an HTTP date (in the past once expired).
* ``Sync-Stale: true`` when the payload served is expired, or when the reader asked for fresh data and the
  refresh did not come within the bound (see below). No header when fresh.
* An archive that never expires gets ``Age`` only.

Request directives (``CacheDirectives``, from ``Cache-Control``, or ``Pragma: no-cache`` without one):
``no-cache``, ``max-age=0`` (or ``max-age=N`` with the payload older than N s) and ``min-fresh=N`` on an
archive that is expired or nearly expired (within ``mountd.dav.facts.lead_ns`` of expiry; for ``min-fresh``,
within N s) make the read ask for a refresh and wait, at most ``Settings.fresh_wait`` seconds, for a new
generation (``SwapWaiters``); then the new generation is served, or, past the bound, what is there with
``Sync-Stale: true``. ``max-stale`` (``max-stale=N``: up to N s past expiry) accepts stale data: no wait.

Invariants: parsing never raises (unknown or malformed directives are ignored, as RFC 9111 §5.2 says); a
wait never exceeds its bound; a generation announced as swapped is never waited for again; at most
``MAX_WAITING_READS`` reads wait at once (each holds one of the server's threads), so readers asking for fresh
data cannot take every thread: past that a read is answered at once with what is there (``Sync-Stale``).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from typing import Any

from broker.swapped import SwappedEvent
from mountd.dav.facts import NS_PER_SECOND, ArchiveFacts, lead_ns
from mountd.http.middleware import StartResponse, WSGIApp, WSGIEnviron
from sync_format import FileIdentity
from sync_format.freshness import now_ns

#: Environ key: the facts of the archive version a GET or HEAD serves (set by the provider).
SERVED_FACTS_KEY = "sync.served_facts"
#: Environ key: True when the reader asked for fresh data and the wait ran past its bound.
MISSED_KEY = "sync.fresh_wait_missed"
#: Environ key: True once this request waited (the other GET path must not wait again).
WAITED_KEY = "sync.fresh_waited"
#: Name of the header that marks stale content.
STALE_HEADER = "Sync-Stale"
#: Seconds a read waits for a fresh generation at most, when no setting says otherwise.
DEFAULT_FRESH_WAIT = 5.0
#: Seconds between two looks at the archive on disk while waiting (a notification wakes the wait earlier).
WAIT_POLL = 0.05
#: Reads that may wait for a refresh at the same time: a quarter of mountd's 16 server threads, so that
#: readers sending ``no-cache`` for expired archives cannot hold every thread for ``fresh_wait`` seconds.
MAX_WAITING_READS = 4
#: Archives whose last announced generation is remembered; beyond it all are forgotten (the wait then
#: relies on the file's identity, which a swap changes).
MAX_REMEMBERED = 100_000
#: Statuses whose responses describe the archive's current representation.
FRESHNESS_STATUSES = ("200", "206", "304")


@dataclass(frozen=True)
class CacheDirectives:
    """The freshness directives of a request.

    Attributes:
        no_cache: ``no-cache`` (or ``Pragma: no-cache``).
        max_age: ``max-age=N`` seconds, or None.
        min_fresh: ``min-fresh=N`` seconds, or None.
        max_stale: ``max-stale``: -1 without a value (any staleness), N seconds, or None when absent.
    """

    no_cache: bool = False
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: int | None = None

    @property
    def any(self) -> bool:
        """True when at least one directive is present."""
        return (
            self.no_cache
            or self.max_age is not None
            or self.min_fresh is not None
            or (self.max_stale is not None)
        )


NO_DIRECTIVES = CacheDirectives()


def request_directives(environ: WSGIEnviron) -> CacheDirectives:
    """The freshness directives of a request (RFC 9111 §5.2.1; ``Pragma: no-cache`` per §5.4).

    Args:
        environ: The request's environ.

    Returns:
        The directives; ``NO_DIRECTIVES`` when there are none.
    """
    header = environ.get("HTTP_CACHE_CONTROL")
    if header is None:
        pragma = environ.get("HTTP_PRAGMA", "")
        return CacheDirectives(no_cache=True) if "no-cache" in pragma.lower() else NO_DIRECTIVES
    return parse_directives(header)


def parse_directives(header: str) -> CacheDirectives:
    """Parse a request ``Cache-Control`` value; unknown and malformed directives are ignored.

    Args:
        header: The header's value.

    Returns:
        The directives.
    """
    no_cache = False
    numbers: dict[str, int | None] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name == "no-cache":
            no_cache = True
        elif name in ("max-age", "min-fresh", "max-stale"):
            if not value:
                if name == "max-stale":
                    numbers[name] = -1
                continue
            if value.isdigit():
                numbers[name] = int(value)
    return CacheDirectives(
        no_cache, numbers.get("max-age"), numbers.get("min-fresh"), numbers.get("max-stale")
    )


def needs_fresh(directives: CacheDirectives, facts: ArchiveFacts, now: int) -> bool:
    """Tell whether a read must wait for a refresh before it is answered.

    Args:
        directives: The request's directives.
        facts: The version at hand.
        now: Wall-clock nanoseconds.

    Returns:
        True when the directives ask for fresher data than ``facts`` and a refresh can give it (the archive
        expires at all and is expired or nearly expired).
    """
    if not directives.any or facts.expiry.never or not facts.has_update_logic:
        return False
    at = facts.expiry.at_ns
    left = -1 if at is None else at - now
    stale_ok = directives.max_stale is not None and (
        directives.max_stale < 0 or -left <= directives.max_stale * NS_PER_SECOND
    )
    if left < 0 and stale_ok:
        return False
    near = left < lead_ns(facts.ttl)
    if directives.no_cache:
        return near
    if directives.max_age is not None:
        return near and (directives.max_age == 0 or age_seconds(facts, now) > directives.max_age)
    if directives.min_fresh is not None:
        return left < directives.min_fresh * NS_PER_SECOND
    return False


def age_seconds(facts: ArchiveFacts, now: int) -> int:
    """Whole seconds since the version's expiry base (its commit, or its creation before any refresh).

    Args:
        facts: The version.
        now: Wall-clock nanoseconds.

    Returns:
        Seconds, never negative.
    """
    at = facts.expiry.at_ns
    base = at - facts.ttl * NS_PER_SECOND if at is not None else int(facts.last_modified * NS_PER_SECOND)
    return max(0, (now - base) // NS_PER_SECOND)


def freshness_headers(facts: ArchiveFacts, now: int, *, missed_wait: bool = False) -> list[tuple[str, str]]:
    """The freshness headers of a response serving ``facts``.

    Args:
        facts: The version served.
        now: Wall-clock nanoseconds.
        missed_wait: The reader asked for fresh data and the wait ran past its bound.

    Returns:
        ``Age``, and unless the archive never expires ``Cache-Control`` and ``Expires``, and ``Sync-Stale``
        when stale.
    """
    age = age_seconds(facts, now)
    headers = [("Age", str(age))]
    expired = facts.expiry.is_expired(now)
    at = facts.expiry.at_ns
    if at is not None and not expired:
        headers.append(("Cache-Control", f"max-age={age + (at - now) // NS_PER_SECOND}"))
        headers.append(("Expires", _http_date(at // NS_PER_SECOND)))
    elif expired:
        headers.append(("Cache-Control", "max-age=0, must-revalidate"))
        headers.append(("Expires", _http_date((at or 0) // NS_PER_SECOND)))
    if expired or missed_wait:
        headers.append((STALE_HEADER, "true"))
    return headers


@lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


class SwapWaiters:
    """Where reads wait for a new generation of an archive: woken by "swapped" notifications (``notify``),
    and looking at the archive's file every ``WAIT_POLL`` seconds so that a lost notification only costs
    that long."""

    def __init__(self, max_waiting: int = MAX_WAITING_READS) -> None:
        self._cond = threading.Condition()
        self._generations: dict[str, int] = {}
        self._slots = threading.BoundedSemaphore(max_waiting)
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Reads waiting right now."""
        with self._cond:
            return self._waiting

    def notify(self, event: SwappedEvent) -> None:
        """A commit was announced: wake the reads waiting for that archive.

        Args:
            event: The notification.
        """
        with self._cond:
            if len(self._generations) >= MAX_REMEMBERED:
                self._generations.clear()
            known = self._generations.get(event.archive, -1)
            self._generations[event.archive] = max(known, event.generation)
            self._cond.notify_all()

    def wait(self, key: str, path: Path, identity: FileIdentity, generation: int, timeout: float) -> bool:
        """Wait until the archive has a generation newer than ``generation``, at most ``timeout`` seconds.

        Args:
            key: The archive key.
            path: The archive file.
            identity: The version read (a new file under ``path`` is a new generation).
            generation: The generation read.
            timeout: Seconds to wait at most.

        Returns:
            True when a newer generation is there (announced, or on disk); False after ``timeout``, or at
            once when ``max_waiting`` reads already wait.
        """
        if not self._slots.acquire(blocking=False):
            return self._newer(key, path, identity, generation)
        with self._cond:
            self._waiting += 1
        try:
            return self._wait(key, path, identity, generation, time.monotonic() + timeout)
        finally:
            with self._cond:
                self._waiting -= 1
            self._slots.release()

    def _newer(self, key: str, path: Path, identity: FileIdentity, generation: int) -> bool:
        with self._cond:
            if self._generations.get(key, -1) > generation:
                return True
        return _replaced(path, identity)

    def _wait(self, key: str, path: Path, identity: FileIdentity, generation: int, deadline: float) -> bool:
        while True:
            if self._newer(key, path, identity, generation):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(min(WAIT_POLL, remaining))


def _replaced(path: Path, identity: FileIdentity) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) != (identity.device, identity.inode)


class FreshnessHeaders:
    """Add ``freshness_headers`` to every GET and HEAD response that served an archive, on either path.

    The provider records the version it served in the environ (``SERVED_FACTS_KEY``); this middleware adds
    the headers when the response starts.

    Args:
        app: The wrapped application.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self.app(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            facts = environ.get(SERVED_FACTS_KEY)
            if facts is not None and status[:3] in FRESHNESS_STATUSES:
                missed = bool(environ.get(MISSED_KEY))
                headers = [*headers, *freshness_headers(facts, now_ns(), missed_wait=missed)]
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
