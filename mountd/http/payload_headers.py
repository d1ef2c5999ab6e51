"""Headers every payload response carries, so that an archive never runs as a page of the WebDAV origin.

Why: a payload served as ``text/html`` or ``image/svg+xml`` would run script with the rights of whoever
views it (an owner, on loopback), and that script could ``fetch`` DELETE on the same origin. Every payload
response (GET and HEAD, 200 and 206, the fast path in ``mountd.http.fast_get``, wsgidav's path and several
ranges in ``mountd.http.byteranges``) therefore gets, from ``payload_safety_headers``:

* ``X-Content-Type-Options: nosniff`` — browsers take the declared type, never a guessed active one;
* ``Content-Security-Policy: sandbox`` — a payload opened as a document gets a unique origin, no script,
  no forms, no plugins, so it cannot act on this origin;
* ``Content-Disposition: attachment`` for the active types in ``ACTIVE_TYPES`` (and any ``+xml`` type) —
  browsers save them instead of rendering them; ``inline_active_content`` (``SYNC_INLINE_ACTIVE_CONTENT``)
  keeps them inline for stores whose every writer is trusted (the first two headers stay).

``PayloadHeaders`` adds them on wsgidav's path (a response for a resource that is not a collection);
``FastGet`` and ``ByteRanges`` call ``payload_safety_headers`` themselves. Folder pages of the browser view
are not payloads and keep their own headers.

Invariants:
    * The headers are added at most once per response (a response that already has
      ``X-Content-Type-Options`` is left alone).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]

from mountd.http.middleware import StartResponse, WSGIEnviron

#: Media types a browser executes or renders with script (HTML, SVG, XML with XSLT, scripts, PDF viewers,
#: legacy plug-in types); any ``+xml`` type counts too (it may carry XHTML or SVG).
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/xslt+xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/javascript",
        "text/ecmascript",
        "application/pdf",
        "application/x-shockwave-flash",
        "multipart/x-mixed-replace",
        "text/vnd.wap.wml",
    }
)
#: Environ/config key under which build_app hands the settings to the middleware wsgidav builds.
SETTINGS_CONFIG_KEY = "sync_settings"
#: Statuses whose body is (part of) a payload.
PAYLOAD_STATUSES = ("200", "206")
_NOSNIFF = "X-Content-Type-Options"


def is_active_type(content_type: str) -> bool:
    """Whether a browser would run or render ``content_type`` actively.

    Args:
        content_type: A Content-Type value (parameters allowed).

    Returns:
        True for ``ACTIVE_TYPES`` and ``+xml`` types.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ACTIVE_TYPES or media.endswith("+xml")


def payload_safety_headers(content_type: str, path: str, *, inline_active: bool) -> list[tuple[str, str]]:
    """The headers of the module docstring for one payload response.

    Args:
        content_type: The payload's Content-Type.
        path: The request path (its last segment names the saved file).
        inline_active: Keep active types inline (no ``Content-Disposition``).

    Returns:
        Header pairs to append.
    """
    headers = [(_NOSNIFF, "nosniff"), ("Content-Security-Policy", "sandbox")]
    if is_active_type(content_type) and not inline_active:
        name = path.rstrip("/").rsplit("/", 1)[-1] or "payload"
        headers.append(("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name, safe='')}"))
    return headers


def inline_active_of(config: dict[str, Any]) -> bool:
    """``inline_active_content`` from the settings build_app put in wsgidav's config (False without)."""
    settings = config.get(SETTINGS_CONFIG_KEY)
    return bool(getattr(settings, "inline_active_content", False))


class PayloadHeaders(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Add ``payload_safety_headers`` to wsgidav's GET/HEAD responses of non-collection resources.

    Args:
        wsgidav_app: The ``WsgiDAVApp``.
        next_app: The next member of the stack.
        config: wsgidav's config (``SETTINGS_CONFIG_KEY`` holds the settings).
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        self.inline_active = inline_active_of(config)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]

        def add_headers(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            done = any(k.lower() == _NOSNIFF.lower() for k, _ in headers)
            if status[:3] in PAYLOAD_STATUSES and not done and not self._is_collection(environ):
                content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
                headers = [
                    *headers,
                    *payload_safety_headers(
                        content_type, environ["PATH_INFO"], inline_active=self.inline_active
                    ),
                ]
            return start_response(status, headers, *exc_info)

        return self.next_app(environ, add_headers)  # type: ignore[no-any-return]

    @staticmethod
    def _is_collection(environ: WSGIEnviron) -> bool:
        provider = environ.get("wsgidav.provider")
        if provider is None:
            return True
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)  # cached for the request
        return resource is None or bool(resource.is_collection)
