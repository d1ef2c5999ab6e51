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
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav import xml_tools
from wsgidav.mw.base_mw import BaseMiddleware  # type: ignore[import-untyped]
from wsgidav.prop_man.property_manager import PropertyManager  # type: ignore[import-untyped]

from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import DirectoryListing
from mountd.dav.integrity import VERDICTS
from mountd.dav.provider import SyncProvider
from mountd.dav.resources import (
    PROP_EXPIRED,
    PROP_INTEGRITY,
    SYNC_NAMESPACE,
    SYNC_PROPERTIES,
    StoreCollection,
    sync_properties,
)
from mountd.http.middleware import StartResponse, WSGIEnviron
from mountd.http.parts import PartsBody, Remembered, still_shown
from mountd.http.propfind_body import ALLPROP, NamedPlan, asked_properties, xml_element
from mountd.http.sendfile import BODY_PARKABLE_KEY
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
#: Bytes per write of a document (pieces are joined up to about this size).
CHUNK_BYTES = 64 * 1024
#: ``<prop>`` lists whose plan and rendered members are remembered (clients send one or two lists each).
MAX_PLANS = 16
#: Bytes of rendered members of ``<prop>`` lists remembered at most; beyond it all are dropped.
MAX_NAMED_BYTES = 32 * 1024 * 1024
#: Characters ``DAVResource.get_href`` leaves unquoted besides letters and digits.
HREF_SAFE = "/" + "!*'()," + "$-_|."

_HEAD = '<?xml version="1.0" encoding="utf-8" ?>\n<ns0:multistatus xmlns:ns0="DAV:"'
_SYNC_NS = f' xmlns:ns1="{SYNC_NAMESPACE}"'
_END = b"</ns0:multistatus>"
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


def listing_request(environ: WSGIEnviron) -> str | tuple[str, ...] | None:
    """What a PROPFIND this middleware may answer asks for, by its headers and body.

    Args:
        environ: The request's environ.

    Returns:
        ``propfind_body.ALLPROP`` or the names of a ``<prop>`` list (``propfind_body.asked_properties``) for
        PROPFIND with Depth 0 or 1 and no conditions; None for anything else.
    """
    if environ.get("REQUEST_METHOD") != "PROPFIND" or xml_tools.use_lxml:
        return None
    if environ.get("HTTP_DEPTH") not in FAST_DEPTHS:
        return None
    if any(header in environ for header in CONDITION_HEADERS):
        return None
    return asked_properties(environ)


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
        # Preferred path → (facts, lock properties, ref URL, and the response's parts around the lock
        # properties and the expired flag, encoded: a document is sent as these pieces, never built whole).
        self._fragments: dict[str, _Fragment] = {}
        self._parts: dict[bytes, bytes] = {}
        # What many members share, rendered once (a first listing renders every member): our properties'
        # two parts by the values they show, Last-Modified texts by time, content-type elements by type.
        self._ours: dict[tuple[object, ...], tuple[bytes, bytes]] = {}
        self._dates: dict[float, str] = {}
        self._types: dict[str, str] = {}
        # ``<prop>`` lists: (names, lock manager present) → the plan (None: wsgidav answers) and whether it
        # was made with an archive member; its members' responses by preferred path (``parts.Remembered``).
        self._plans: dict[_ListKey, tuple[NamedPlan | None, bool]] = {}
        self._named: dict[_ListKey, dict[str, Remembered]] = {}
        self._named_bytes = 0
        self._named_lock = threading.Lock()

    def _shared(self, part: bytes) -> bytes:
        # One copy of each distinct part (most archives of a store share their TTL, expiry and generation
        # texts); bounded like the fragments.
        if len(self._parts) > MAX_FRAGMENTS:
            self._parts.clear()
        return self._parts.setdefault(part, part)

    def _head(self, href: str, name: str, facts: ArchiveFacts) -> bytes:
        # A member's own part: its response up to the ETag (the lock properties follow, then
        # ``_our_parts``), with the texts many members share looked up.
        modified = self._dates.get(facts.last_modified)
        if modified is None:
            modified = self._dates[facts.last_modified] = dav_util.get_rfc1123_time(facts.last_modified)
        kind = self._types.get(facts.content_type)
        if kind is None:
            kind = self._types[facts.content_type] = xml_element("ns0:getcontenttype", facts.content_type)
        return (
            f"<ns0:response><ns0:href>{escape(href)}</ns0:href><ns0:propstat><ns0:prop>"
            f"<ns0:resourcetype /><ns0:getcontentlength>{facts.payload_size}</ns0:getcontentlength>"
            f"{kind}<ns0:getlastmodified>{modified}</ns0:getlastmodified>"
            + xml_element("ns0:displayname", name)
            + xml_element("ns0:getetag", f'"{facts.etag}"')
        ).encode()

    def _our_parts(self, facts: ArchiveFacts, state: str) -> tuple[bytes, bytes]:
        # ``_our_parts``, remembered by exactly the values ``sync_properties`` shows besides the expired flag
        # (``state``: the payload verdict's, read before).
        key = (facts.ttl, facts.expiry, facts.generation, facts.updated_at, state)
        parts = self._ours.get(key)
        if parts is None:
            before, after = _our_parts(facts, state)
            parts = self._ours[key] = (self._shared(before.encode()), self._shared(after.encode()))
        return parts

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        provider = environ.get("wsgidav.provider")
        if not isinstance(provider, SyncProvider):
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        asked = listing_request(environ)
        if asked is None:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        collection = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if type(collection) is not StoreCollection:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        if asked == ALLPROP:
            document: _Document | PartsBody | None = self._document(provider, collection, environ)
        else:
            document = self._named_document(provider, collection, environ, tuple(asked))
        if document is None:
            return self.next_app(environ, start_response)  # type: ignore[no-any-return]
        start_response(
            "207 Multi-Status",
            [
                ("Content-Type", "application/xml; charset=utf-8"),
                ("Date", dav_util.get_rfc1123_time()),
                ("Content-Length", str(document.length)),
            ],
        )
        # Its chunks are joins of cached parts: for a reader slower than the socket, the connection loop may
        # make and send them (``mountd.http.handoff.ParkedBody``) instead of a worker thread waiting.
        environ[BODY_PARKABLE_KEY] = True
        return document.chunks()

    def _document(
        self, provider: SyncProvider, collection: StoreCollection, environ: WSGIEnviron
    ) -> _Document | None:
        # The multistatus document; None when a lock or a dead property means wsgidav must answer.
        lock_manager = provider.lock_manager
        prop_manager = provider.prop_manager
        if _holds_nothing(prop_manager):
            prop_manager = None  # no member can have a dead property: skip 10,000 locked look-ups
        if _locked(provider, collection):
            return None
        share = provider.share_path or ""
        href_base = provider.mount_path + share
        path = collection.get_preferred_path()
        lock_props = "" if lock_manager is None else _LOCK_PROPS

        def ref(preferred: str) -> str:
            return quote(share + preferred)

        def dead(preferred: str) -> bool:
            return bool(prop_manager is not None and prop_manager.get_properties(ref(preferred), environ))

        if dead(path):
            return None
        if _holds_nothing(prop_manager):  # wsgidav loads it at its first use (just above): a first listing
            prop_manager = None
        folders = [
            _folder_response(
                quote(href_base + path, safe=HREF_SAFE), collection.name, collection.directory, lock_props
            )
        ]
        members: list[_Fragment] = []
        expired = bytearray()
        lock_bytes = lock_props.encode()
        if environ["HTTP_DEPTH"] == "1":
            listing: DirectoryListing = collection.listing()
            base = path.rstrip("/") + "/"
            for name in listing.folders:
                preferred = base + name + "/"
                if dead(preferred):
                    return None
                href = quote(href_base + preferred, safe=HREF_SAFE)
                folders.append(_folder_response(href, name, collection.directory / name, lock_props))
            fragments = self._fragments
            changes = VERDICTS.changes  # before any state is read: a verdict after it is seen next time
            href_prefix: str | None = None
            now = now_ns()  # one moment for the whole document
            if len(fragments) > MAX_FRAGMENTS:
                fragments.clear()
            for memo in (self._ours, self._dates, self._types):
                if len(memo) > MAX_FRAGMENTS:
                    memo.clear()
            for name, listed in listing.archives.items():
                preferred = base + name
                facts = listed.facts
                cached = fragments.get(preferred)
                if cached is not None and cached[6] != changes and cached[0] is facts:
                    # A payload verdict was recorded since this member was rendered: is it this one's?
                    if VERDICTS.state(facts) == cached[7]:
                        cached = fragments[preferred] = (*cached[:6], changes, cached[7])
                    else:
                        cached = None
                if cached is None or cached[0] is not facts or cached[1] != lock_props:
                    if href_prefix is None:
                        href_prefix = quote(href_base + base, safe=HREF_SAFE)
                    # ``quote`` maps each UTF-8 byte on its own: quoting the prefix once is the same.
                    own = self._head(href_prefix + quote(name, safe=HREF_SAFE), name, facts)
                    state = VERDICTS.state(facts)
                    before, after = self._our_parts(facts, state)
                    size = len(own) + len(lock_bytes) + len(before) + len(after)
                    cached = (facts, lock_props, own, before, after, size, changes, state)
                    fragments[preferred] = cached
                if prop_manager is not None and prop_manager.get_properties(ref(preferred), environ):
                    return None
                members.append(cached)
                expired.append(facts.expiry.is_expired(now))
        head = _HEAD + (_SYNC_NS if members else "") + ">" + "".join(folders)
        return _Document(head.encode(), members, bytes(expired), lock_bytes)

    def _named_document(
        self,
        provider: SyncProvider,
        collection: StoreCollection,
        environ: WSGIEnviron,
        names: tuple[str, ...],
    ) -> PartsBody | None:
        # The document for a ``<prop>`` list (``mountd.http.propfind_body``); None when wsgidav must answer:
        # a lock, a dead property anywhere, or an asked-for property whose answer could depend on the member.
        if _locked(provider, collection):
            return None
        prop_manager = provider.prop_manager
        share = provider.share_path or ""
        href_base = provider.mount_path + share
        path = collection.get_preferred_path()
        if prop_manager is not None and (
            prop_manager.get_properties(quote(share + path), environ)  # (loads it at its first use)
            or not _holds_nothing(prop_manager)
        ):
            return None
        listing = collection.listing() if environ["HTTP_DEPTH"] == "1" else None
        key = (names, provider.lock_manager is not None)
        plan = self._plan(key, collection, listing)
        if plan is None:
            return None
        head = [
            plan.head,
            plan.folder_response(
                quote(href_base + path, safe=HREF_SAFE), collection.name, _mtime(collection.directory)
            ),
        ]
        members: list[bytes] = []
        if listing is not None:
            base = path.rstrip("/") + "/"
            for name in listing.folders:
                href = quote(href_base + base + name + "/", safe=HREF_SAFE)
                head.append(plan.folder_response(href, name, _mtime(collection.directory / name)))
            cache = self._named.get(key) or {}  # (read here; written by ``_remember_named``)
            changes = VERDICTS.changes  # before any verdict is read: one recorded after it is seen next time
            now = now_ns()  # one moment for the whole document
            href_prefix = quote(href_base + base, safe=HREF_SAFE)
            for name, listed in listing.archives.items():
                facts = listed.facts
                expired = facts.expiry.is_expired(now)
                preferred = base + name  # (a hard link in two folders has the same facts, not the same href)
                cached = cache.get(preferred)
                found = still_shown(cached, facts, expired, changes)
                if isinstance(found, str):
                    href = href_prefix + quote(name, safe=HREF_SAFE)
                    response = plan.archive_response(href, name, facts, found, expired).encode()
                    found = (facts, expired, found, changes, response)
                    self._remember_named(key, preferred, found)
                elif found is not cached:
                    self._remember_named(key, preferred, found)
                members.append(found[4])
        return PartsBody("".join(head).encode(), members, _END)

    def _remember_named(self, key: _ListKey, preferred: str, member: Remembered) -> None:
        # Keep a member's response while the remembered ones stay within ``MAX_NAMED_BYTES``; past it, every
        # list's members are dropped first (an answer is whole all the same: it holds its own references).
        size = len(member[4])
        with self._named_lock:  # (the count must stay exact when requests render at once)
            cache = self._named.get(key)
            if cache is None:
                cache = self._named[key] = {}
            old = cache.pop(preferred, None)
            if old is not None:
                self._named_bytes -= len(old[4])
            if self._named_bytes + size > MAX_NAMED_BYTES:
                self._named.clear()
                self._named_bytes = 0
                if size > MAX_NAMED_BYTES:
                    return
                cache = self._named[key] = {}
            cache[preferred] = member
            self._named_bytes += size

    def _plan(
        self, key: _ListKey, collection: StoreCollection, listing: DirectoryListing | None
    ) -> NamedPlan | None:
        # The remembered plan for this list, made again when it was made without an archive to ask.
        has_archives = listing is not None and bool(listing.archives)
        remembered = self._plans.get(key)
        if remembered is not None and (remembered[1] or not has_archives):
            return remembered[0]
        archive = None
        if listing is not None and has_archives:
            name, listed = next(iter(listing.archives.items()))
            archive = collection.member_archive(name, listed)
        plan = NamedPlan.make(key[0], key[1], collection, archive)
        with self._named_lock:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
                self._named.clear()
                self._named_bytes = 0
            self._plans[key] = (plan, archive is not None)
            dropped = self._named.pop(key, None)  # made for the plan this one replaces
            if dropped:
                self._named_bytes -= sum(len(member[4]) for member in dropped.values())
        return plan


#: A member's cached response: facts and lock properties it was made for, its own part (href to ETag), our
#: properties up to the expired flag's text, the rest after it, the three parts' length with the lock
#: properties, and the payload verdict shown with ``PayloadVerdicts.changes`` when it was last confirmed.
_Fragment = tuple[ArchiveFacts, str, bytes, bytes, bytes, int, int, str]
#: A ``<prop>`` list's key: its names, and whether a lock manager answers the lock properties.
_ListKey = tuple[tuple[str, ...], bool]


class _Document:
    """A multistatus document as references to cached parts, written in chunks.

    Never joined whole: a 10 MB body per request, freed in whichever thread's malloc arena built it, kept
    the server's RSS tens of MB higher after a few listings; a list of every part was half a MB per request.
    The length is counted from the same parts and flags that ``chunks`` writes.
    """

    __slots__ = ("expired", "head", "length", "lock", "members")

    def __init__(self, head: bytes, members: list[_Fragment], expired: bytes, lock: bytes) -> None:
        self.head = head
        self.members = members
        self.expired = expired
        self.lock = lock
        flags = sum(expired)
        self.length = (
            len(head)
            + sum(member[5] for member in members)
            + 4 * flags  # "true"
            + 5 * (len(members) - flags)  # "false"
            + len(_END)
        )

    def chunks(self) -> Iterator[bytes]:
        """The document in writes of about ``CHUNK_BYTES``."""
        batch = [self.head]
        size = len(self.head)
        lock = self.lock
        for member, flag in zip(self.members, self.expired, strict=True):
            batch += (member[2], lock, member[3], b"true" if flag else b"false", member[4])
            size += member[5]
            if size >= CHUNK_BYTES:
                yield b"".join(batch)
                batch, size = [], 0
        batch.append(_END)
        yield b"".join(batch)


def _locked(provider: SyncProvider, collection: StoreCollection) -> bool:
    # A lock on the folder or anything in it: wsgidav renders locks.
    lock_manager = provider.lock_manager
    return lock_manager is not None and bool(
        lock_manager.get_url_lock_list(collection.get_ref_url(), recursive=True)
    )


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


def _mtime(directory: os.PathLike[str]) -> float | None:
    # A folder's last-modified as wsgidav shows it (``Folder.get_last_modified``).
    try:
        return os.stat(directory).st_mtime
    except OSError:
        return None


def _folder_response(href: str, name: str, directory: os.PathLike[str], lock_props: str) -> str:
    mtime = _mtime(directory)
    modified = None if mtime is None else dav_util.get_rfc1123_time(mtime)
    return (
        f"<ns0:response><ns0:href>{escape(href)}</ns0:href><ns0:propstat><ns0:prop>"
        "<ns0:resourcetype><ns0:collection /></ns0:resourcetype>"
        + ("" if modified is None else f"<ns0:getlastmodified>{modified}</ns0:getlastmodified>")
        + xml_element("ns0:displayname", name)
        + lock_props
        + _OK
    )


def _our_parts(facts: ArchiveFacts, state: str) -> tuple[str, str]:
    # Our properties up to the text of ``urn:sync:expired`` (the one value that moves with time), and the
    # rest after it; most archives of a store share both. ``state`` is the payload verdict shown (read once
    # by the caller: a verdict recorded meanwhile must not be rendered under the older one's key).
    props = sync_properties(facts)
    props[PROP_INTEGRITY] = state
    ours = list(props.items())
    at = [prop for prop, _ in ours].index(PROP_EXPIRED)
    tag = "ns1:" + _SYNC_LOCAL[PROP_EXPIRED]
    before = "".join(xml_element("ns1:" + _SYNC_LOCAL[prop], value) for prop, value in ours[:at]) + f"<{tag}>"
    after = (
        f"</{tag}>"
        + "".join(xml_element("ns1:" + _SYNC_LOCAL[prop], value) for prop, value in ours[at + 1 :])
        + _OK
    )
    return before, after
