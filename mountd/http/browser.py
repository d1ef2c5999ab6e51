"""``BrowserView``: the HTML page a web browser gets for a folder, with each archive's freshness.

A browser opening a folder (GET or HEAD of a collection, HTML acceptable by its ``Accept`` header, no
WebDAV client header) gets a table: folders first, then archives by display name, each with its size,
content type, last refresh, expiry ("expired", a time, or "never"), generation and TTL. ``?davmount`` on a
folder answers the RFC 4709 mount document, as wsgidav's own browser did. Everything else goes on to wsgidav
unchanged, including a GET of a collection that does not accept HTML or comes from a WebDAV client.

It is a wsgidav middleware (CONTRIBUTING.md) in the slot of wsgidav's own browser, which it replaces
(``middleware_stack``): after the HTTP authenticator, so a folder is shown only to whom may list it, and
after wsgidav normalized the path, so the path it resolves is the one wsgidav resolves.

Invariants:
    * Paths are resolved by the request's provider (``SyncProvider.get_resource_inst``): path rules, hidden
      names and display-name collisions live there only. The resource is cached in the request, so a request
      passed on to wsgidav (a file) is not opened a second time.
    * The page is built from the folder's listing (``ArchiveIndex``): no archive is opened for it beyond
      what a PROPFIND opens (CONTRIBUTING.md).
    * A row is rendered once per URL, archive version, expired flag and payload verdict, and the page is
      sent as references to those rows (``mountd.http.parts.PartsBody``): a reader slower than the socket
      is parked in the connection loop (``BODY_PARKABLE_KEY``) holding no thread and no copy of the page.
    * Every name and value is HTML-escaped and every link percent-encoded; a Content-Security-Policy allows
      no script, so a hostile file name can only ever show as text.
    * No product or version banner.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.default_conf import DEFAULT_CONFIG  # type: ignore[import-untyped]
from wsgidav.dir_browser import WsgiDavDirBrowser  # type: ignore[import-untyped]
from wsgidav.http_authenticator import HTTPAuthenticator  # type: ignore[import-untyped]
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]

from mountd.auth.digest_nonces import NonceCheckingAuthenticator
from mountd.auth.lock_policy import LockPolicy
from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import DirectoryListing
from mountd.dav.integrity import CORRUPT, VERDICTS
from mountd.dav.provider import SyncProvider
from mountd.dav.resources import Folder
from mountd.http.byteranges import ByteRanges
from mountd.http.fast_get import FastGet
from mountd.http.fast_propfind import FastPropfind
from mountd.http.middleware import StartResponse, WSGIEnviron
from mountd.http.parts import PartsBody, Remembered, still_shown
from mountd.http.payload_headers import PayloadHeaders
from mountd.http.sendfile import BODY_PARKABLE_KEY
from sync_format.freshness import now_ns

log = logging.getLogger(__name__)

#: Request headers only WebDAV clients send; a GET carrying one is left to wsgidav.
DAV_CLIENT_HEADERS = (
    "HTTP_DEPTH",
    "HTTP_TRANSLATE",
    "HTTP_IF",
    "HTTP_LOCK_TOKEN",
    "HTTP_DESTINATION",
    "HTTP_OVERWRITE",
)
#: Media ranges that match text/html, by specificity (RFC 9110 §12.5.1: the most specific one applies).
HTML_RANGES = {"text/html": 3, "text/*": 2, "*/*": 1}
#: The query parameter asking for an RFC 4709 mount document.
DAVMOUNT = "davmount"
#: What the page may load: its own inline style, nothing else (no script, no frames, no forms).
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
#: Shown instead of a TTL that never runs out (it saturates past year 9999).
UNBOUNDED = "unbounded"
#: Distinct TTLs whose text is remembered (a store has few; a folder page formats one per archive).
FORMAT_CACHE_SIZE = 1024
#: Archive rows whose HTML is remembered (about half a KiB each); beyond it all are dropped.
MAX_ROWS = 100_000
#: Size units for people, each 1024 times the one before.
SIZE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd;white-space:nowrap}
th{background:#f4f4f4}
td.num{text-align:right}
tr.expired td.expires{color:#b00;font-weight:bold}
tr.corrupt td{color:#b00;text-decoration:line-through}
.summary{color:#666}
"""


def middleware_stack() -> list[Any]:
    """wsgidav's default middleware stack with ours in the place of wsgidav's own browser.

    That place is after the HTTP authenticator and before the request resolver: ``FastGet`` (plain reads
    of archives), ``BrowserView`` (folder pages), ``FastPropfind`` (listings), each passing on what it
    does not answer.

    Returns:
        The ``middleware_stack`` value for wsgidav's config.
    """
    stack: list[Any] = []
    for mw in DEFAULT_CONFIG["middleware_stack"]:
        if mw is HTTPAuthenticator:
            stack.append(NonceCheckingAuthenticator)  # digest nonces verified (mountd.auth.digest_nonces)
            continue
        # LockPolicy, PayloadHeaders and ByteRanges (issue 12) run before the fast paths.
        ours = [LockPolicy, PayloadHeaders, ByteRanges, FastGet, BrowserView, FastPropfind]
        stack.extend(ours if mw is WsgiDavDirBrowser else [mw])
    return stack


def accepts_html(accept: str | None) -> bool:
    """Tell whether an ``Accept`` header lets the answer be HTML.

    Args:
        accept: The header, or None when the request has none (then anything is acceptable).

    Returns:
        True when the most specific range matching text/html has a non-zero quality.
    """
    if accept is None or not accept.strip():
        return True
    best: tuple[int, float] | None = None
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        specificity = HTML_RANGES.get(media.lower())
        if specificity is None or (best is not None and best[0] >= specificity):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # an unreadable weight accepts nothing rather than everything
        best = (specificity, quality)
    return best is not None and best[1] > 0


class BrowserView(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Answer browsers' requests for folders with a freshness table; pass everything else on.

    wsgidav builds the members of its middleware stack itself, with these arguments.

    Args:
        wsgidav_app: The ``WsgiDAVApp``.
        next_app: The next member of the stack.
        config: wsgidav's config.
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        self.clock = now_ns
        # Base URL + display name → the row last rendered there (``parts.Remembered``: its HTML).
        self._rows: dict[str, Remembered] = {}

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        collection = self._browsed_collection(environ)
        if collection is None:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        is_head = environ["REQUEST_METHOD"] == "HEAD"
        if _asks_davmount(environ):
            return _davmount(environ, start_response, is_head=is_head)
        started = time.monotonic()
        listing = collection.listing()
        page = self._page(listing, _href_base(environ), now=self.clock())
        log.debug(
            "folder page path=%s folders=%d archives=%d bytes=%d duration_ms=%.1f",
            environ.get("PATH_INFO"),
            len(listing.folders),
            len(listing.archives),
            page.length,
            (time.monotonic() - started) * 1000,
        )
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(page.length)),
                ("Cache-Control", "no-cache"),
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
                ("Date", dav_util.get_rfc1123_time()),
            ],
        )
        if is_head:
            return [b""]
        # Its chunks are joins of remembered rows: for a reader slower than the socket, the connection loop
        # may make and send them (``mountd.http.handoff.ParkedBody``) instead of a worker thread waiting.
        environ[BODY_PARKABLE_KEY] = True
        return page.chunks()

    def _page(self, listing: DirectoryListing, base: str, *, now: int) -> PartsBody:
        # The page as references to rows rendered once per (URL, archive version, expired, verdict): a
        # page of 10,000 archives is about 5 MB, and 256 readers parked on one page share one copy of it.
        rows = self._rows
        if len(rows) > MAX_ROWS:
            rows.clear()
        changes = VERDICTS.changes  # before any verdict is read: one recorded after it is seen next time
        out: list[bytes] = []
        archives = listing.archives
        for name in sorted(archives):
            facts = archives[name].facts
            expired = facts.expiry.is_expired(now)
            key = base + name
            cached = rows.get(key)
            found = still_shown(cached, facts, expired, changes)
            if isinstance(found, str):
                row = _archive_row(name, base, facts, expired=expired, state=found).encode()
                found = rows[key] = (facts, expired, found, changes, row)
            elif found is not cached:
                rows[key] = found
            out.append(found[4])
        return PartsBody(_page_head(listing, base).encode(), out, _page_tail(listing).encode())

    def _browsed_collection(self, environ: WSGIEnviron) -> Folder | None:
        # The collection a browser asks for, or None when the request is not one for this view.
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return None
        if any(header in environ for header in DAV_CLIENT_HEADERS):
            return None
        if dav_util.get_content_length(environ) != 0:
            return None
        if not (_asks_davmount(environ) or accepts_html(environ.get("HTTP_ACCEPT"))):
            return None
        provider = environ.get("wsgidav.provider")
        if not isinstance(provider, SyncProvider):
            return None
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        return resource if isinstance(resource, Folder) else None


def _page_head(listing: DirectoryListing, base: str) -> str:
    # Everything before the archives' rows: the title, the parent link, the table's head, the folders.
    title = html.escape(f"Index of {base}")
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{_STYLE}</style></head>\n<body>\n<h1>{title}</h1>\n",
    ]
    if base != "/":
        parent = base.rstrip("/").rsplit("/", 1)[0] + "/"
        parts.append(f'<p><a href="{_href(parent)}">&uarr; Parent folder</a></p>\n')
    parts.append(
        "<table>\n<thead><tr><th>Name</th><th>Size</th><th>Type</th><th>Last refresh</th><th>Expires</th>"
        "<th>Generation</th><th>TTL</th></tr></thead>\n<tbody>\n"
    )
    for name in listing.folders:
        parts.append(
            f'<tr class="folder"><td><a href="{_href(base + name + "/")}">{html.escape(name)}/</a></td>'
            "<td></td><td>folder</td><td></td><td></td><td></td><td></td></tr>\n"
        )
    return "".join(parts)


def _page_tail(listing: DirectoryListing) -> str:
    folders = _count(len(listing.folders), "folder")
    files = _count(len(listing.archives), "file")
    return f'</tbody>\n</table>\n<p class="summary">{folders}, {files}</p>\n</body></html>\n'


def _archive_row(name: str, base: str, facts: ArchiveFacts, *, expired: bool, state: str) -> str:
    # One archive's row; ``expired`` and ``state`` (the payload verdict) are read by the caller, once.
    if facts.expiry.never:
        expires, ttl = "never", UNBOUNDED
    else:
        at = facts.expiry.at_text()
        expires = "expired" if expired else (at or "")
        if expired and at is not None:
            expires += f" ({at})"
        ttl = format_duration(facts.ttl)
    cells = (
        f'<td><a href="{_href(base + name)}">{html.escape(name)}</a></td>',
        f'<td class="num" title="{facts.payload_size} bytes">{format_size(facts.payload_size)}</td>',
        f"<td>{html.escape(facts.content_type)}</td>",
        f"<td>{html.escape(facts.updated_at or 'not yet')}</td>",
        f'<td class="expires">{html.escape(expires)}</td>',
        f'<td class="num">{facts.generation}</td>',
        f'<td class="num" title="{facts.ttl} s">{ttl}</td>',
    )
    css = "expired" if expired else "fresh"
    if state == CORRUPT:  # mountd.dav.integrity: the payload failed its CRC-32 check
        css += ' corrupt" title="corrupt payload: not served'
        cells = (cells[0].replace("</a></td>", "</a> (corrupt)</td>"), *cells[1:])
    return f'<tr class="{css}">{"".join(cells)}</tr>\n'


def format_size(size: int) -> str:
    """A byte count for people: ``512 bytes``, ``1.5 KiB``, ``3.0 MiB``.

    Args:
        size: Bytes.

    Returns:
        The text.
    """
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in SIZE_UNITS[1:]:
        value /= 1024
        if value < 1024 or unit == SIZE_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


@functools.lru_cache(maxsize=FORMAT_CACHE_SIZE)
def format_duration(seconds: int) -> str:
    """A TTL for people: ``45 s``, ``5 min``, ``1 h 30 min``, ``2 d 3 h``.

    Args:
        seconds: The duration.

    Returns:
        The text, in at most two units.
    """
    units = (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1))
    shown: list[tuple[int, str]] = []
    remaining = seconds
    for unit, length in units:
        count, remaining = divmod(remaining, length)
        if count or shown:
            shown.append((count, unit))
        if len(shown) == 2:
            break
    text = " ".join(f"{count} {unit}" for count, unit in shown if count)
    return text or "0 s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _href(path: str) -> str:
    return html.escape(quote(path, safe="/"), quote=True)


def _href_base(environ: WSGIEnviron) -> str:
    path = str(environ.get("SCRIPT_NAME", "")).rstrip("/") + str(environ.get("PATH_INFO", "/"))
    return path if path.endswith("/") else path + "/"


def _asks_davmount(environ: WSGIEnviron) -> bool:
    query = environ.get("QUERY_STRING", "")
    return any(part.partition("=")[0] == DAVMOUNT for part in query.split("&"))


def _davmount(environ: WSGIEnviron, start_response: StartResponse, *, is_head: bool) -> list[bytes]:
    # RFC 4709: tells a client to mount the folder; the URL is the folder's own, without the query.
    url = str(dav_util.make_complete_url(environ)).split("?", 1)[0]
    body = (
        '<dm:mount xmlns:dm="http://purl.org/NET/webdav/mount">\n'
        f"  <dm:url>{html.escape(url, quote=False)}</dm:url>\n</dm:mount>"
    ).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/davmount+xml"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "private"),
            ("Date", dav_util.get_rfc1123_time()),
        ],
    )
    return [b""] if is_head else [body]
