"""What a PROPFIND body asks for, and how to answer a ``<prop>`` list from an archive's facts.

Why: WebDAV clients other than rclone send a body with their PROPFIND: davfs2, macOS Finder, Windows and
cadaver name the properties they want (``<prop>``), others send an explicit ``<allprop/>``. wsgidav answers
those by building resource objects and an ElementTree per member: a folder of 10,000 archives took 0.6 s
(davfs2's four properties), 0.7 s (Finder's), 1.4 s (``<allprop/>``) and 3.1 s (Windows' 23) warm, against
16 ms for the same listing without a body (``FastPropfind``). This module reads the body, and for a
``<prop>`` list builds a ``NamedPlan``: how each asked-for property of an archive or a folder is written,
so that ``FastPropfind`` writes the members' responses from the listing cache.

Invariants:
    * The answer is byte for byte wsgidav's (tests compare both for many lists): the same properties in
      the same ``propstat`` groups (one per status, in the order of each status's first property), the
      same values, empty elements for properties not found, and ElementTree's namespace prefixes (assigned
      in document order, declared on the root sorted by prefix; ``NamedPlan`` lets ElementTree itself
      serialize the root and the property names to get them).
    * Values that depend on the member are written from its facts exactly as ``ArchiveFile`` and
      ``Folder`` give them to wsgidav (``ARCHIVE_LIVE``, ``FOLDER_LIVE``). Every other property's answer is
      asked of wsgidav once per plan, on a real member of each kind; it must not depend on the member (a
      status and an empty element, as for an unknown or unsupported property), or the request is passed on.
    * Anything this does not fully understand goes on to wsgidav: a body that is not well-formed, a root other
      than ``DAV:propfind``, ``propname``, ``include``, several or no children, an empty list. The body is
      handed on unread (it was buffered by ``XmlBodyLimit``, which bounds it before anything parses it and
      refuses lists longer than clients send: ``MAX_PROPFIND_NAMES``, ``MAX_PROPFIND_NAME_CHARS``).
"""

from __future__ import annotations

import io
from typing import Any
from xml.etree import ElementTree

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.dav_error import HTTP_NOT_FOUND, DAVError, get_http_status_string  # type: ignore[import-untyped]

from mountd.dav.facts import ArchiveFacts
from mountd.dav.resources import PROP_EXPIRED, PROP_INTEGRITY, SYNC_PROPERTIES, sync_properties
from mountd.http.xml_limits import SCREENED_KEY

#: What the body asks for when it is ``<allprop/>`` (or there is none).
ALLPROP = "allprop"
STATUS_OK = "200 OK"
STATUS_NOT_FOUND: str = get_http_status_string(HTTP_NOT_FOUND)

_PROPFIND = "{DAV:}propfind"
_ALLPROP = "{DAV:}allprop"
_PROP = "{DAV:}prop"
_RESOURCETYPE = "{DAV:}resourcetype"
_LENGTH = "{DAV:}getcontentlength"
_TYPE = "{DAV:}getcontenttype"
_MODIFIED = "{DAV:}getlastmodified"
_NAME = "{DAV:}displayname"
_ETAG = "{DAV:}getetag"
_LOCKDISCOVERY = "{DAV:}lockdiscovery"
_SUPPORTEDLOCK = "{DAV:}supportedlock"
#: The supported locks' element content, as wsgidav builds it (``DAV:`` is always ``ns0``: the root's).
_LOCK_ENTRIES = (
    "<ns0:lockentry><ns0:lockscope><ns0:exclusive /></ns0:lockscope>"
    "<ns0:locktype><ns0:write /></ns0:locktype></ns0:lockentry>"
    "<ns0:lockentry><ns0:lockscope><ns0:shared /></ns0:lockscope>"
    "<ns0:locktype><ns0:write /></ns0:locktype></ns0:lockentry>"
)
#: Properties of an archive written from its facts (with a lock manager, the two lock properties too).
ARCHIVE_LIVE = frozenset({_RESOURCETYPE, _LENGTH, _TYPE, _MODIFIED, _NAME, _ETAG, *SYNC_PROPERTIES})
#: Properties of a folder written from the folder (with a lock manager, the two lock properties too).
FOLDER_LIVE = frozenset({_RESOURCETYPE, _MODIFIED, _NAME})
_LOCK_LIVE = frozenset({_LOCKDISCOVERY, _SUPPORTEDLOCK})

#: One property as written: its status and its element.
Answer = tuple[str, str]


def asked_properties(environ: dict[str, Any]) -> str | tuple[str, ...] | None:
    """What a PROPFIND's body asks for, when this module understands it.

    Args:
        environ: The request's environ (its body buffered in ``wsgi.input`` by ``XmlBodyLimit``).

    Returns:
        ``ALLPROP`` (no body, or ``<allprop/>``), the Clark names of a ``<prop>`` list in request order
        (repeats kept), or None: let wsgidav answer. The body stays readable for wsgidav either way.
    """
    declared = str(environ.get("CONTENT_LENGTH") or "").strip()
    if declared in ("", "0"):
        return ALLPROP
    stream = environ.get("wsgi.input")
    if environ.get(SCREENED_KEY) is not True or not isinstance(stream, io.BytesIO):
        return None  # not buffered and screened by XmlBodyLimit: never read here
    body = stream.getvalue()
    if str(len(body)) != declared or stream.tell() != 0:
        return None
    try:
        # What wsgidav parses it with (without lxml); screened: no DOCTYPE (no entity), a bounded count of
        # elements and bytes.
        root = ElementTree.fromstring(body)  # noqa: S314
    except (ElementTree.ParseError, LookupError, ValueError):  # (an unusable declared encoding)
        return None
    if root.tag != _PROPFIND or len(root) != 1:
        return None
    (asked,) = root
    if asked.tag == _ALLPROP:
        return ALLPROP
    if asked.tag != _PROP or not len(asked):  # (longer lists than clients send were refused: 413)
        return None
    names = tuple(child.tag for child in asked)
    if not all(isinstance(name, str) for name in names):  # comments and processing instructions
        return None
    return names


def _fixed(resource: Any, name: str) -> Answer | None:
    # wsgidav's answer for ``name`` on ``resource``, when it cannot depend on the member: a status with an
    # empty element. None otherwise.
    ((_, value),) = resource.get_properties("named", name_list=[name])
    if isinstance(value, DAVError):
        return get_http_status_string(value), ""
    if value is None or value == "":
        return STATUS_OK, ""
    return None


class NamedPlan:
    """How the members of a listing answer one ``<prop>`` list (see the module docstring).

    Use ``NamedPlan.make``.

    Attributes:
        names: The Clark names asked for, in request order.
        head: The document up to and with the root's start tag (its namespace declarations).
        tags: Clark name → the element name written (``ns1:ttl``).
    """

    __slots__ = ("_archive_fixed", "_folder_fixed", "head", "names", "tags")

    def __init__(
        self,
        names: tuple[str, ...],
        archive_fixed: dict[str, Answer],
        folder_fixed: dict[str, Answer],
        first: list[str],
    ) -> None:
        self.names = names
        self._archive_fixed = archive_fixed
        self._folder_fixed = folder_fixed
        # ElementTree names namespaces in document order; the first response (the folder itself) has every
        # asked-for name, in the order its propstat groups put them.
        root = ElementTree.Element("{DAV:}multistatus")
        for name in first:
            ElementTree.SubElement(root, name)
        text = ElementTree.tostring(root, encoding="unicode")
        start = text[: text.index(">") + 1]
        written = text[len(start) : -len("</ns0:multistatus>")].split(" />")[:-1]
        self.head = '<?xml version="1.0" encoding="utf-8" ?>\n' + start
        self.tags = {name: tag[1:] for name, tag in zip(first, written, strict=True)}

    @classmethod
    def make(cls, names: tuple[str, ...], locks: bool, folder: Any, archive: Any | None) -> NamedPlan | None:
        """The plan for ``names``, or None when a property's answer could depend on the member.

        Args:
            names: The Clark names asked for.
            locks: Whether the provider has a lock manager.
            folder: A folder resource of the listing (the collection itself), asked for the fixed answers.
            archive: An archive member's resource, or None when the listing has no archive.

        Returns:
            The plan, or None (let wsgidav answer).
        """
        archive_live = ARCHIVE_LIVE | _LOCK_LIVE if locks else ARCHIVE_LIVE
        folder_live = FOLDER_LIVE | _LOCK_LIVE if locks else FOLDER_LIVE
        archive_fixed: dict[str, Answer] = {}
        folder_fixed: dict[str, Answer] = {}
        for name in dict.fromkeys(names):
            if name not in folder_live:
                answer = _fixed(folder, name)
                if answer is None:
                    return None
                folder_fixed[name] = answer
            if archive is not None and name not in archive_live:
                answer = _fixed(archive, name)
                if answer is None:
                    return None
                archive_fixed[name] = answer
        # The first response's order: the folder's own statuses, grouped. (A folder that cannot be stat'ed
        # answers 404 for its last-modified, which moves a ``DAV:`` name only: ``ns0`` is the root's.)
        groups: dict[str, list[str]] = {}
        for name in names:
            status = STATUS_OK if name in folder_live else folder_fixed[name][0]
            groups.setdefault(status, []).append(name)
        first = [name for group in groups.values() for name in group]
        return cls(names, archive_fixed, folder_fixed, first)

    def archive_response(self, href: str, name: str, facts: ArchiveFacts, state: str, expired: bool) -> str:
        """One archive's ``response`` element.

        Args:
            href: The member's href, quoted as wsgidav quotes it.
            name: Its display name.
            facts: Its facts.
            state: Its payload verdict (``mountd.dav.integrity``).
            expired: Whether it is expired at the document's moment.

        Returns:
            The element, as text.
        """
        ours: dict[str, str] | None = None
        groups: dict[str, list[str]] = {}
        tags = self.tags
        for prop in self.names:
            tag = tags[prop]
            fixed = self._archive_fixed.get(prop)
            if fixed is not None:
                status, element = fixed[0], f"<{tag} />"
            elif prop in SYNC_PROPERTIES:
                if ours is None:
                    ours = sync_properties(facts)
                    ours[PROP_EXPIRED] = "true" if expired else "false"  # the document's moment
                    ours[PROP_INTEGRITY] = state
                value = ours.get(prop)
                if value is None:
                    status, element = STATUS_NOT_FOUND, f"<{tag} />"
                else:
                    status, element = STATUS_OK, xml_element(tag, value)
            else:
                status, element = STATUS_OK, self._archive_live(prop, tag, name, facts)
            groups.setdefault(status, []).append(element)
        return _response(href, groups)

    def _archive_live(self, prop: str, tag: str, name: str, facts: ArchiveFacts) -> str:
        if prop == _RESOURCETYPE:
            return f"<{tag} />"
        if prop == _LENGTH:
            return f"<{tag}>{facts.payload_size}</{tag}>"
        if prop == _TYPE:
            return xml_element(tag, facts.content_type)
        if prop == _MODIFIED:
            return f"<{tag}>{dav_util.get_rfc1123_time(facts.last_modified)}</{tag}>"
        if prop == _NAME:
            return xml_element(tag, name)
        if prop == _ETAG:
            return xml_element(tag, f'"{facts.etag}"')
        return _lock_element(prop, tag)

    def folder_response(self, href: str, name: str, modified: float | None) -> str:
        """One folder's ``response`` element (the collection itself, or a subfolder).

        Args:
            href: The folder's href, quoted as wsgidav quotes it.
            name: Its name.
            modified: Its ``st_mtime``, None when it cannot be stat'ed.

        Returns:
            The element, as text.
        """
        groups: dict[str, list[str]] = {}
        for prop in self.names:
            tag = self.tags[prop]
            fixed = self._folder_fixed.get(prop)
            if fixed is not None:
                status, element = fixed[0], f"<{tag} />"
            elif prop == _RESOURCETYPE:
                status, element = STATUS_OK, f"<{tag}><ns0:collection /></{tag}>"
            elif prop == _MODIFIED:
                if modified is None:
                    status, element = STATUS_NOT_FOUND, f"<{tag} />"
                else:
                    status, element = STATUS_OK, f"<{tag}>{dav_util.get_rfc1123_time(modified)}</{tag}>"
            elif prop == _NAME:
                status, element = STATUS_OK, xml_element(tag, name)
            else:
                status, element = STATUS_OK, _lock_element(prop, tag)
            groups.setdefault(status, []).append(element)
        return _response(href, groups)


def _lock_element(prop: str, tag: str) -> str:
    # No lock exists when a listing is answered here (``FastPropfind`` passes on otherwise).
    if prop == _LOCKDISCOVERY:
        return f"<{tag} />"
    return f"<{tag}>{_LOCK_ENTRIES}</{tag}>"


def xml_element(tag: str, text: str) -> str:
    """An element with text as ElementTree writes it: empty without text, ``&``, ``<`` and ``>`` escaped."""
    if not text:
        return f"<{tag} />"
    return f"<{tag}>{_escape(text)}</{tag}>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _response(href: str, groups: dict[str, list[str]]) -> str:
    parts = [f"<ns0:response><ns0:href>{_escape(href)}</ns0:href>"]
    for status, elements in groups.items():
        parts.append("<ns0:propstat><ns0:prop>")
        parts.extend(elements)
        parts.append(f"</ns0:prop><ns0:status>HTTP/1.1 {status}</ns0:status></ns0:propstat>")
    parts.append("</ns0:response>")
    return "".join(parts)
