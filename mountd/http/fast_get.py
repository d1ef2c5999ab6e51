"""``FastGet``: plain GETs and HEADs of archives answered without wsgidav's request pipeline.

Why: a 4 KiB GET cost ~620 µs of application time, most of it parsing the archive again (manifest TOML
and ZIP central directory) and wsgidav's pipeline (resource resolution, conditionals, property objects,
three generator layers). cheroot alone leaves ~150 µs per request for the application if mountd is to
reach half of rclone's small-GET rate. This middleware answers the common request — GET or HEAD of an
archive with no conditions, ranges or body — from the facts the ``ArchiveIndex`` already holds for the
opened file's identity (``SyncProvider.open_known``: one ``open``, one ``fstat``, no parse) and offers
the payload reader to the sendfile gateway, as ``ArchiveResource.get_content`` does.

It is a wsgidav middleware (CONTRIBUTING.md) placed after the HTTP authenticator, so credentials and roles
apply exactly as for wsgidav's own path, and before ``BrowserView``, which would otherwise resolve (and
open) every file it is asked for to find out that it is not a folder.

Invariants:
    * It answers only what it fully understands; everything else goes on to wsgidav unchanged: other
      methods, any ``If*`` or ``Range`` header, a request body, a query string, ``Depth`` other than 0,
      and every path ``open_known`` declines (folders, single-archive and writable mode, names resolved
      through the listing, missing, unreadable or just-swapped archives).
    * Its answers are wsgidav's for the same request: status 200, the same headers in the same order
      (Content-Length, Last-Modified, Content-Type, Date, ETag, Accept-Ranges, then the configured
      ``response_headers``) and the same body; HEAD has an empty body.
    * The payload reader holds the descriptor that was opened and checked: a swap during the download
      never mixes old and new bytes; the reader is closed when the response ends, however it ends.
    * An expired archive tells the freshness hook once, before any byte is sent (``open_known``).
    * Freshness directives and headers are the provider's and ``mountd.http.freshness_headers``'s, as on
      wsgidav's
      path: ``open_known`` gets the environ (it may wait for a refresh and records the version served).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]

from mountd.dav.facts import ArchiveFacts
from mountd.dav.integrity import CORRUPT, VERDICTS, corrupt_response
from mountd.dav.provider import SyncProvider
from mountd.http.middleware import StartResponse, WSGIEnviron, on_request_end
from mountd.http.payload_headers import inline_active_of, payload_safety_headers
from mountd.http.sendfile import offer_payload
from sync_format import PayloadReader
from sync_format.media import safe_content_type

log = logging.getLogger(__name__)

#: Methods this middleware may answer.
FAST_METHODS = ("GET", "HEAD")
#: Request headers that make a GET something other than "the whole current payload": wsgidav answers them.
CONDITION_HEADERS = (
    "HTTP_RANGE",
    "HTTP_IF",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE",
    "HTTP_TRANSFER_ENCODING",
)
#: The same, as a set (one C-level ``isdisjoint`` over the environ instead of a generator per header).
_CONDITIONS = frozenset(CONDITION_HEADERS)
#: Response header templates remembered (one per archive version and request path; keys come from clients'
#: paths, so their number and the path's length are bounded), then all dropped.
MAX_TEMPLATES = 4096
MAX_TEMPLATE_PATH = 512
#: Formatted HTTP dates remembered (the current second's and the archives' Last-Modified); then dropped.
MAX_REMEMBERED_DATES = 10_000
#: Bytes per read when the body goes through the iterable (the copy path); wsgidav's ``block_size``
#: setting wins when configured.
DEFAULT_BLOCK = 1024 * 1024


def is_plain_read(environ: WSGIEnviron) -> bool:
    """Tell whether a request is a GET or HEAD this middleware may answer, by its headers alone.

    Args:
        environ: The request's environ.

    Returns:
        True for GET/HEAD without conditions, ranges, body or query string, with ``Depth`` absent or 0.
    """
    if environ.get("REQUEST_METHOD") not in FAST_METHODS:
        return False
    if environ.get("QUERY_STRING") or not _CONDITIONS.isdisjoint(environ):
        return False
    if environ.get("CONTENT_LENGTH", "") not in ("", "0"):
        return False
    return bool(environ.get("HTTP_DEPTH", "0") == "0")


class FastGet(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Answer plain GETs and HEADs of archives from cached facts; pass everything else on.

    wsgidav builds the members of its middleware stack itself, with these arguments.

    Args:
        wsgidav_app: The ``WsgiDAVApp``.
        next_app: The next member of the stack.
        config: wsgidav's config.
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        self.block_size: int = config.get("block_size") or DEFAULT_BLOCK
        self.extra_headers: list[tuple[str, str]] = list(config.get("response_headers") or ())
        self._dates: dict[float, str] = {}
        self._templates: dict[str, tuple[ArchiveFacts, list[tuple[str, str]], list[tuple[str, str]]]] = {}
        self.inline_active = inline_active_of(config)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        provider = environ.get("wsgidav.provider")
        if not isinstance(provider, SyncProvider) or not is_plain_read(environ):
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        known = provider.open_known(environ["PATH_INFO"], environ)
        if known is None:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        reader = known.reader
        if not on_request_end(environ, reader.close):
            log.debug("no request scope: payload reader closes with the response path=%s", known.archive)
        facts = known.facts
        if _known_corrupt(environ, known.archive, facts, reader):
            reader.close()
            return corrupt_response(start_response, environ["PATH_INFO"])
        _, before, after = self._template(facts, environ["PATH_INFO"])
        start_response("200 OK", [*before, ("Date", self._http_date(None)), *after])
        if environ["REQUEST_METHOD"] == "HEAD":
            reader.close()
            return [b""]
        return _Body(offer_payload(environ, reader), self.block_size)

    def _template(
        self, facts: ArchiveFacts, path: str
    ) -> tuple[ArchiveFacts, list[tuple[str, str]], list[tuple[str, str]]]:
        """The headers before and after ``Date`` for this version at this path, built once per pair.

        A template is reused only for the very facts object it was built from (a new version has new
        facts), so it never describes another version.
        """
        found = self._templates.get(path)
        if found is not None and found[0] is facts:
            return found
        before = [
            ("Content-Length", str(facts.payload_size)),
            ("Last-Modified", self._http_date(facts.last_modified)),
            ("Content-Type", safe_content_type(facts.content_type)),  # re-checked before it becomes a header
        ]
        after = [
            ("ETag", f'"{facts.etag}"'),
            ("Accept-Ranges", "bytes"),
            *self.extra_headers,
            *payload_safety_headers(facts.content_type, path, inline_active=self.inline_active),
        ]
        template = (facts, before, after)
        if len(path) <= MAX_TEMPLATE_PATH:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            self._templates[path] = template
        return template

    def _http_date(self, moment: float | None) -> str:
        # Formatting a date costs more than the rest of the headers: the current second's text and each
        # archive's Last-Modified text are formatted once (keyed by the exact value formatted).
        key = int(time.time()) if moment is None else moment
        text = self._dates.get(key)
        if text is None:
            if len(self._dates) >= MAX_REMEMBERED_DATES:
                self._dates.clear()
            text = self._dates[key] = dav_util.get_rfc1123_time(key)
        return text


def _known_corrupt(environ: WSGIEnviron, archive: str, facts: Any, reader: PayloadReader) -> bool:
    # A GET checks the version (mountd.dav.integrity); a HEAD only consults the verdict already known.
    if environ["REQUEST_METHOD"] == "GET":
        return VERDICTS.is_corrupt(archive, facts, reader)
    return VERDICTS.state(facts) == CORRUPT


class _Body:
    """The payload in blocks, closing the reader when the server closes the response."""

    def __init__(self, reader: PayloadReader, block: int) -> None:
        self._reader = reader
        self._block = block

    def __iter__(self) -> Iterator[bytes]:
        reader, block = self._reader, self._block
        while data := reader.read(block):
            yield data

    def close(self) -> None:
        self._reader.close()
