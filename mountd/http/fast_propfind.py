"""``FastPropfind``: PROPFIND allprop of a store folder written straight from the listing cache.

Why: wsgidav answers a PROPFIND by building resource objects, asking each for every property through
several layers, and an ElementTree of ~30 elements per member: ~190 µs per archive, 2.6 s warm for a
folder of 10,000 archives where rclone takes 0.5 s. The facts it reports all come from the
``ArchiveIndex`` already (CONTRIBUTING.md), so this middleware writes the same multistatus document directly
from the folder's ``DirectoryListing``.

It is a wsgidav middleware (CONTRIBUTING.md) placed after the HTTP authenticator, so credentials apply as for
wsgidav's own path.

Invariants:
    * It answers only what it fully understands, and passes everything else on to wsgidav unchanged:
      methods other than PROPFIND, a request body (``prop``/``propname`` requests, and ``allprop`` bodies),
      ``Depth`` other than 0 or 1, any ``If*`` header, a path that is not a read-only store folder
      (``StoreCollection`` exactly: not writable, not single-archive mode, not an archive), a folder or
      member with a lock or a dead property (wsgidav renders those), and wsgidav running on lxml (whose
      serialization differs).
    * Its document is byte for byte wsgidav's for the same request and moment (ElementTree's
      serialization: ``ns0`` for ``DAV:``, ``ns1`` for ``urn:sync``, the same property order and values,
      text escaped as ElementTree escapes it, hrefs quoted as ``DAVResource.get_href`` quotes them), with
      the same status and headers (``send_multi_status_response``). Tests compare both answers.
    * Nothing is opened beyond what a listing opens: archives of unseen identity are opened once by the
      index; known ones never.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav import xml_tools
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]
from wsgidav.prop_man.property_manager import PropertyManager  # type: ignore[import-untyped]

from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import DirectoryListing
from mountd.dav.provider import SyncProvider
from mountd.dav.resources import (
    PROP_EXPIRED,
    SYNC_NAMESPACE,
    SYNC_PROPERTIES,
    StoreCollection,
    sync_properties,
)
from mountd.http.middleware import StartResponse, WSGIEnviron
from sync_format.freshness import now_ns

#: Depths answered here (wsgidav refuses infinity, and answers it itself).
FAST_DEPTHS = ("0", "1")
#: Request headers that make wsgidav evaluate conditions before listing.
CONDITION_HEADERS = (
    "HTTP_IF",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_TRANSFER_ENCODING",
)
#: Archive members whose rendered response is remembered (about 1 KiB each); beyond it all are dropped.
MAX_FRAGMENTS = 100_000
#: Characters ``DAVResource.get_href`` leaves unquoted besides letters and digits.
HREF_SAFE = "/" + "!*'()," + "$-_|."

_HEAD = '<?xml version="1.0" encoding="utf-8" ?>\n<ns0:multistatus xmlns:ns0="DAV:"'
_SYNC_NS = f' xmlns:ns1="{SYNC_NAMESPACE}"'
_OK = "</ns0:prop><ns0:status>HTTP/1.1 200 OK</ns0:status></ns0:propstat></ns0:response>"
_LOCK_PROPS = (
    "<ns0:lockdiscovery /><ns0:supportedlock>"
    "<ns0:lockentry><ns0:lockscope><ns0:exclusive /></ns0:lockscope>"
    "<ns0:locktype><ns0:write /></ns0:locktype></ns0:lockentry>"
    "<ns0:lockentry><ns0:lockscope><ns0:shared /></ns0:lockscope>"
    "<ns0:locktype><ns0:write /></ns0:locktype></ns0:lockentry>"
    "</ns0:supportedlock>"
)
#: Our live properties' local names in ``ns1``, by Clark name.
_SYNC_LOCAL = {name: name[len(SYNC_NAMESPACE) + 2 :] for name in SYNC_PROPERTIES}


def is_plain_listing(environ: WSGIEnviron) -> bool:
    """Tell whether a request is a PROPFIND this middleware may answer, by its headers alone.

    Args:
        environ: The request's environ.

    Returns:
        True for PROPFIND with Depth 0 or 1, no body (allprop) and no conditions.
    """
    if environ.get("REQUEST_METHOD") != "PROPFIND" or xml_tools.use_lxml:
        return False
    if environ.get("HTTP_DEPTH") not in FAST_DEPTHS:
        return False
    if any(header in environ for header in CONDITION_HEADERS):
        return False
    return environ.get("CONTENT_LENGTH", "") in ("", "0")


def _element(tag: str, text: str) -> str:
    # ElementTree writes an element without text as an empty element, and escapes &, < and > in text.
    if not text:
        return f"<{tag} />"
    return f"<{tag}>{escape(text)}</{tag}>"


class FastPropfind(BaseMiddleware):  # type: ignore[misc]  # wsgidav is untyped
    """Answer PROPFIND allprop of store folders from the listing cache; pass everything else on.

    wsgidav builds the members of its middleware stack itself, with these arguments.

    Args:
        wsgidav_app: The ``WsgiDAVApp``.
        next_app: The next member of the stack.
        config: wsgidav's config.
    """

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        # Preferred path → (facts, lock properties, ref URL, response before and after the expired flag).
        self._fragments: dict[str, tuple[ArchiveFacts, str, str, str, str]] = {}

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        provider = environ.get("wsgidav.provider")
        if not isinstance(provider, SyncProvider) or not is_plain_listing(environ):
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        collection = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if type(collection) is not StoreCollection:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        body = self._document(provider, collection, environ)
        if body is None:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        start_response(
            "207 Multi-Status",
            [
                ("Content-Type", "application/xml; charset=utf-8"),
                ("Date", dav_util.get_rfc1123_time()),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def _document(
        self, provider: SyncProvider, collection: StoreCollection, environ: WSGIEnviron
    ) -> bytes | None:
        # The multistatus document, or None when a lock or a dead property means wsgidav must answer.
        lock_manager = provider.lock_manager
        prop_manager = provider.prop_manager
        if _holds_nothing(prop_manager):
            prop_manager = None  # no member can have a dead property: skip 10,000 locked look-ups
        share = provider.share_path or ""
        href_base = provider.mount_path + share
        path = collection.get_preferred_path()
        if lock_manager is not None and lock_manager.get_url_lock_list(
            collection.get_ref_url(), recursive=True
        ):
            return None
        lock_props = "" if lock_manager is None else _LOCK_PROPS

        def dead(preferred: str) -> bool:
            return bool(
                prop_manager is not None and prop_manager.get_properties(quote(share + preferred), environ)
            )

        if dead(path):
            return None
        parts = [
            _folder_response(
                quote(href_base + path, safe=HREF_SAFE), collection.name, collection.directory, lock_props
            )
        ]
        has_archives = False
        if environ["HTTP_DEPTH"] == "1":
            listing: DirectoryListing = collection.listing()
            base = path.rstrip("/") + "/"
            for name in listing.folders:
                preferred = base + name + "/"
                if dead(preferred):
                    return None
                href = quote(href_base + preferred, safe=HREF_SAFE)
                parts.append(_folder_response(href, name, collection.directory / name, lock_props))
            fragments = self._fragments
            now = now_ns()  # one moment for the whole document
            if len(fragments) > MAX_FRAGMENTS:
                fragments.clear()
            for name, listed in listing.archives.items():
                preferred = base + name
                facts = listed.facts
                cached = fragments.get(preferred)
                if cached is None or cached[0] is not facts or cached[1] != lock_props:
                    href = quote(href_base + preferred, safe=HREF_SAFE)
                    cached = (
                        facts,
                        lock_props,
                        quote(share + preferred),
                        *_archive_parts(href, name, facts, lock_props),
                    )
                    fragments[preferred] = cached
                if prop_manager is not None and prop_manager.get_properties(cached[2], environ):
                    return None
                parts.append(cached[3])
                parts.append("true" if facts.expiry.is_expired(now) else "false")
                parts.append(cached[4])
                has_archives = True
        head = _HEAD + (_SYNC_NS if has_archives else "") + ">"
        return (head + "".join(parts) + "</ns0:multistatus>").encode("utf-8")


def _holds_nothing(prop_manager: Any) -> bool:
    # wsgidav's in-memory manager (exactly that class: subclasses keep their data elsewhere) holding no
    # property at all. Each look-up takes its lock and formats a debug line; a read-only store refuses
    # PROPPATCH, so this is its usual state. Read without the lock, like the look-ups' answer it is a
    # moment's view: a property written after it is shown by the next request.
    return (
        type(prop_manager) is PropertyManager
        and getattr(prop_manager, "_loaded", False)
        and not getattr(prop_manager, "_dict", None)
    )


def _folder_response(href: str, name: str, directory: os.PathLike[str], lock_props: str) -> str:
    try:
        modified: str | None = dav_util.get_rfc1123_time(os.stat(directory).st_mtime)
    except OSError:
        modified = None
    return (
        f"<ns0:response><ns0:href>{escape(href)}</ns0:href><ns0:propstat><ns0:prop>"
        "<ns0:resourcetype><ns0:collection /></ns0:resourcetype>"
        + ("" if modified is None else f"<ns0:getlastmodified>{modified}</ns0:getlastmodified>")
        + _element("ns0:displayname", name)
        + lock_props
        + _OK
    )


def _archive_parts(href: str, name: str, facts: ArchiveFacts, lock_props: str) -> tuple[str, str]:
    # The member's response around the text of ``urn:sync:expired``, the one value that moves with time.
    ours = list(sync_properties(facts).items())
    at = [prop for prop, _ in ours].index(PROP_EXPIRED)
    tag = "ns1:" + _SYNC_LOCAL[PROP_EXPIRED]
    before = (
        f"<ns0:response><ns0:href>{escape(href)}</ns0:href><ns0:propstat><ns0:prop>"
        f"<ns0:resourcetype /><ns0:getcontentlength>{facts.payload_size}</ns0:getcontentlength>"
        + _element("ns0:getcontenttype", facts.content_type)
        + f"<ns0:getlastmodified>{dav_util.get_rfc1123_time(facts.last_modified)}</ns0:getlastmodified>"
        + _element("ns0:displayname", name)
        + _element("ns0:getetag", f'"{facts.etag}"')
        + lock_props
        + "".join(_element("ns1:" + _SYNC_LOCAL[prop], value) for prop, value in ours[:at])
        + f"<{tag}>"
    )
    after = (
        f"</{tag}>"
        + "".join(_element("ns1:" + _SYNC_LOCAL[prop], value) for prop, value in ours[at + 1 :])
        + _OK
    )
    return before, after
