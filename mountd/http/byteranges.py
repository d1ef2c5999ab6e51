"""Ranges of a GET as RFC 9110 §14 says: several in ``multipart/byteranges`` (wsgidav answers one range),
and a single one checked strictly before wsgidav sees it.

``ByteRanges`` sits in wsgidav's stack after authentication and before ``FastGet``. For a GET of an archive
whose ``Range`` header asks for more than one range it:

* parses ``bytes=`` range sets (``a-b``, ``a-``, ``-n``); a header it cannot parse is ignored (RFC 9110
  §14.2: the whole body, 200), as is one with more than ``max_ranges`` ranges (``SYNC_MAX_RANGES``, default
  16) — a cheap request must not make the server send a payload many times over;
* ignores Range (whole body) when the request has a condition (``If-Match``, ``If-None-Match``,
  ``If-Modified-Since``, ``If-Unmodified-Since``, ``If``) or an ``If-Range`` that does not match the strong
  ETag, so wsgidav evaluates conditions as for a plain GET;
* drops ranges that start past the payload's end; none left: 416 with ``Content-Range: bytes */size``;
* sorts and coalesces overlapping or adjacent ranges; one left: the header is rewritten to that one range and
  wsgidav answers a single-part 206 (sent with ``os.sendfile`` by ``mountd.http.sendfile``);
* otherwise answers 206 ``multipart/byteranges`` with one part per remaining range, each with its
  ``Content-Type`` and ``Content-Range``, read from the snapshot's payload reader (one file version for the
  whole response), with ``payload_safety_headers``.

A single range is parsed by the same strict rules (ASCII digits only; ``first <= last``; the unit
``bytes``), since wsgidav's parser finds a range anywhere in the text: ``bytes=5-2`` answered the last two
bytes, ``items=0-1``, ``bytes=0x10-0x20``, ``bytes=+1-+2`` answered 206, and ``bytes=-0`` a 206 with
``Content-Range: bytes 8-7/8``. An invalid one is ignored (the whole body, 200); a valid one is passed on in
canonical form, and one no byte of the payload satisfies gets 416 here (unless the request has conditions,
which wsgidav evaluates first).

Everything that is not a GET passes through unchanged.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]

from mountd.dav.resources import OpenedArchive
from mountd.http.middleware import StartResponse, WSGIEnviron
from mountd.http.payload_headers import SETTINGS_CONFIG_KEY, inline_active_of, payload_safety_headers
from sync_format import PayloadReader

log = logging.getLogger(__name__)

#: Most ranges answered when no settings are configured.
DEFAULT_MAX_RANGES = 16
#: Bytes per read of a part.
PART_BLOCK = 1024 * 1024
_DIGITS = re.compile(r"[0-9]*")
CONDITIONS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF",
)


def parse_ranges(header: str) -> list[tuple[int | None, int | None]] | None:
    """The ``(first, last)`` specs of a ``bytes=`` range set (``(None, n)``: a suffix); None if invalid."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    specs: list[tuple[int | None, int | None]] = []
    for item in spec.split(","):
        first, dash, last = item.strip().partition("-")
        if not dash or not _DIGITS.fullmatch(first + last or "-"):
            return None  # (``int`` takes signs, blanks, underscores and non-ASCII digits: none is allowed)
        try:
            if not first:
                if not last:
                    return None
                specs.append((None, int(last)))
            else:
                start = int(first)
                end = int(last) if last else None
                if start < 0 or (end is not None and end < start):
                    return None
                specs.append((start, end))
        except ValueError:
            return None
    return specs


def resolve_ranges(specs: list[tuple[int | None, int | None]], size: int) -> list[tuple[int, int]]:
    """Satisfiable ranges as inclusive ``(first, last)`` offsets, sorted, overlapping/adjacent ones merged."""
    spans: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            if not last or size == 0:
                continue
            spans.append((max(0, size - (last or 0)), size - 1))
        elif first < size:
            spans.append((first, size - 1 if last is None else min(last, size - 1)))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


class ByteRanges(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Answer GETs with several ranges of an archive (see the module docstring).

    Args:
        wsgidav_app: The ``WsgiDAVApp``.
        next_app: The next member of the stack.
        config: wsgidav's config (``SETTINGS_CONFIG_KEY`` holds the settings).
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        settings = config.get(SETTINGS_CONFIG_KEY)
        self.max_ranges = int(getattr(settings, "max_ranges", DEFAULT_MAX_RANGES))
        self.inline_active = inline_active_of(config)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_RANGE")
        if environ.get("REQUEST_METHOD") != "GET" or not header:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        specs = parse_ranges(header)
        if "," not in header:
            return self._single(environ, start_response, specs)
        provider = environ.get("wsgidav.provider")
        if specs is None or len(specs) > self.max_ranges or provider is None:
            if specs is not None and len(specs) > self.max_ranges:
                log.info("ranges ignored reason=count count=%d path=%s", len(specs), environ.get("PATH_INFO"))
            return self._whole(environ, start_response)
        if any(name in environ for name in CONDITIONS):
            return self._whole(environ, start_response)
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if not isinstance(resource, OpenedArchive):
            return self._whole(environ, start_response)
        facts = resource.facts
        if_range = environ.get("HTTP_IF_RANGE")
        if if_range is not None and if_range.strip() != f'"{facts.etag}"':
            return self._whole(environ, start_response)
        size = facts.payload_size
        spans = resolve_ranges(specs, size)
        if not spans:
            return _unsatisfiable(start_response, size)
        if len(spans) == 1:
            environ["HTTP_RANGE"] = f"bytes={spans[0][0]}-{spans[0][1]}"
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        boundary = secrets.token_hex(16)
        heads = [
            (
                f"--{boundary}\r\nContent-Type: {facts.content_type}\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
            ).encode("latin-1")
            for first, last in spans
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + (last - first + 1) + 2 for h, (first, last) in zip(heads, spans, strict=True))
        length += len(tail)
        headers = [
            ("Content-Type", f"multipart/byteranges; boundary={boundary}"),
            ("Content-Length", str(length)),
            ("ETag", f'"{facts.etag}"'),
            ("Last-Modified", dav_util.get_rfc1123_time(facts.last_modified)),
            ("Date", dav_util.get_rfc1123_time()),
            ("Accept-Ranges", "bytes"),
            *payload_safety_headers(
                facts.content_type, environ["PATH_INFO"], inline_active=self.inline_active
            ),
        ]
        reader = resource.get_content()
        start_response("206 Partial Content", headers)
        return _Parts(reader, heads, spans, tail)

    def _single(
        self,
        environ: WSGIEnviron,
        start_response: StartResponse,
        specs: list[tuple[int | None, int | None]] | None,
    ) -> Iterable[bytes]:
        # One range: ignored when invalid, canonical for wsgidav when valid, 416 when nothing satisfies it.
        if specs is None:
            return self._whole(environ, start_response)
        first, last = specs[0]
        if first is None:
            environ["HTTP_RANGE"] = f"bytes=-{last}"
        else:
            environ["HTTP_RANGE"] = f"bytes={first}-{'' if last is None else last}"
        provider = environ.get("wsgidav.provider")
        if provider is None or any(name in environ for name in CONDITIONS) or "HTTP_IF_RANGE" in environ:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if isinstance(resource, OpenedArchive) and not resolve_ranges(specs, resource.facts.payload_size):
            return _unsatisfiable(start_response, resource.facts.payload_size)
        return self.next_app(environ, start_response)  # type: ignore[no-any-return]

    def _whole(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        del environ["HTTP_RANGE"]
        environ.pop("HTTP_IF_RANGE", None)
        return self.next_app(environ, start_response)  # type: ignore[no-any-return]


def _unsatisfiable(start_response: StartResponse, size: int) -> list[bytes]:
    body = b"416 Range Not Satisfiable\n"
    start_response(
        "416 Range Not Satisfiable",
        [
            ("Content-Range", f"bytes */{size}"),
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


class _Parts:
    """The multipart body, read part by part from one payload reader; closing it closes the reader."""

    def __init__(
        self, reader: PayloadReader, heads: list[bytes], spans: list[tuple[int, int]], tail: bytes
    ) -> None:
        self._reader = reader
        self._heads = heads
        self._spans = spans
        self._tail = tail

    def __iter__(self) -> Iterator[bytes]:
        for head, (first, last) in zip(self._heads, self._spans, strict=True):
            yield head
            self._reader.seek(first)
            left = last - first + 1
            while left > 0:
                data = self._reader.read(min(PART_BLOCK, left))
                if not data:
                    return  # the payload ended early (never for an intact snapshot): a short body
                left -= len(data)
                yield data
            yield b"\r\n"
        yield self._tail

    def close(self) -> None:
        self._reader.close()
