"""The WebDAV ``If`` request header (RFC 4918 §10.4): parsed strictly, once, for wsgidav and for us.

Why: wsgidav reads ``If`` with two regular expressions that accept anything (``If: garbage((`` was taken as
"no condition", and the request went ahead), key tagged lists by their raw text (so ``<http://host/a>``
never matched the resource ``/a`` it names, and its conditions were skipped), and never evaluates the
header for a resource that does not exist yet (a PUT of a new name, MKCOL). ``ConditionalHeaders``
(``mountd.http.middleware``) parses the header here first: a malformed one is answered 400 (as Apache's
mod_dav does), and a well-formed one is handed to wsgidav already parsed, in the form its own parser caches
(``wsgidav_form``), so wsgidav evaluates exactly what was read here. ``holds_where_nothing_is`` evaluates
it for a name with no resource (``mountd.writable.conditions``).

Grammar (RFC 4918 §10.4.2; whitespace allowed between tokens, names of ``Not`` in any case)::

    If           = 1*No-tag-list | 1*Tagged-list      (one kind or the other, not both)
    No-tag-list  = List
    Tagged-list  = Resource-Tag 1*List
    List         = "(" 1*Condition ")"
    Condition    = ["Not"] (State-token | "[" entity-tag "]")
    State-token  = "<" URI ">"         Resource-Tag = "<" URI ">"

A URI here is one or more characters other than whitespace, ``<`` and ``>``; an entity tag is a quoted
string (``"..."``, optionally ``W/``-prefixed) or, as some clients send, a bare tag without whitespace or
brackets.

One leniency: a header that ends inside its last list, after at least one complete list, is taken without
that list. litmus builds ``(<token> ["etag"]) (Not <DAV:no-lock> ["etag"])`` in a 200-byte buffer and cuts
it off there when the entity tags are as long as ours (64 hex digits); a client with such a buffer means the
lists it finished. Leaving such a list out can only make the header stricter (one alternative fewer for
the same resource, and its tokens not submitted), so it is done only where that holds: in an untagged
header, or after a complete list of the same tag; a tag whose only list is cut off is malformed (dropping
it would drop every condition on its resource).

The value is decoded as UTF-8 where cheroot gave it as Latin-1 (raw non-ASCII bytes in a tag, as
``PATH_INFO`` is re-decoded), so a tag naming ``/ä.txt`` unencoded matches that resource.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

#: Longest ``If`` header parsed, in characters (the connection guard bounds a head to 64 KiB anyway).
MAX_IF_LENGTH = 16 * 1024


class MalformedIf(ValueError):
    """The ``If`` header does not follow RFC 4918 §10.4.2; the message says where."""


class _CutOff(MalformedIf):
    """The header ended inside a list, a URI or an entity tag."""


class Condition(NamedTuple):
    """One condition of a list.

    Attributes:
        negated: Preceded by ``Not``.
        kind: ``"locktoken"`` (a state token) or ``"entity"`` (an entity tag).
        value: The token's URI, or the entity tag without brackets and quotes (``W/`` kept for a weak one,
            which never equals a strong tag).
    """

    negated: bool
    kind: str
    value: str


class IfList(NamedTuple):
    """One list: the resource it is about (a path, or None for the request's own) and its conditions."""

    resource: str | None
    conditions: tuple[Condition, ...]


def parse_if(text: str) -> tuple[IfList, ...]:
    """Parse an ``If`` header value.

    Args:
        text: The header's value.

    Returns:
        Its lists, in order; each tagged list carries its tag's path (percent-decoded, from an absolute URI
        or an absolute path).

    Raises:
        MalformedIf: The value is not an ``If`` header.
    """
    if len(text) > MAX_IF_LENGTH:
        raise MalformedIf(f"longer than {MAX_IF_LENGTH} characters")
    if not text.isascii():
        # (not bytes cheroot decoded, or not UTF-8: read as it is)
        with contextlib.suppress(UnicodeError):
            text = text.encode("latin-1").decode("utf-8")
    lists: list[IfList] = []
    tagged: bool | None = None
    resource: str | None = None
    tag_has_list = True
    at = _skip(text, 0)
    if at == len(text):
        raise MalformedIf("empty")
    while at < len(text):
        if text[at] == "<":
            if tagged is False:
                raise MalformedIf("a resource tag after an untagged list")
            if not tag_has_list:
                raise MalformedIf("a resource tag without a list")
            uri, at = _uri(text, at)
            resource, tagged, tag_has_list = _tag_path(uri), True, False
        elif text[at] == "(":
            if tagged is None:
                tagged = False
            try:
                conditions, at = _list(text, at)
            except _CutOff:
                if lists and (not tagged or tag_has_list):
                    return tuple(lists)  # the lists before the one cut off (see the module's docstring)
                raise
            lists.append(IfList(resource if tagged else None, conditions))
            tag_has_list = True
        else:
            raise MalformedIf(f"unexpected {text[at]!r} at {at}")
        at = _skip(text, at)
    if not tag_has_list:
        raise MalformedIf("a resource tag without a list")
    return tuple(lists)


def wsgidav_form(lists: tuple[IfList, ...]) -> tuple[dict[str, list[list[tuple[bool, str, str]]]], list[str]]:
    """The parsed header as wsgidav's ``util.parse_if_header_dict`` caches it in the environ.

    Args:
        lists: From ``parse_if``.

    Returns:
        ``(environ["wsgidav.conditions.if"], environ["wsgidav.ifLockTokenList"])``: lists by resource (``"*"``
        for untagged ones; a tagged one under the quoted path wsgidav's ``get_ref_url`` gives, with and
        without a trailing slash, since a collection's ends with one), and every state token named.
    """
    by_resource: dict[str, list[list[tuple[bool, str, str]]]] = {}
    tokens: list[str] = []
    for entry in lists:
        tests = [(not c.negated, c.kind, c.value) for c in entry.conditions]
        tokens.extend(c.value for c in entry.conditions if c.kind == "locktoken")
        if entry.resource is None:
            keys = ["*"]
        else:
            bare = quote(_bare(entry.resource))
            keys = [bare] if bare == "/" else [bare, bare + "/"]
        for key in keys:
            by_resource.setdefault(key, []).append(tests)
    return by_resource, tokens


def holds_where_nothing_is(lists: tuple[IfList, ...], path: str, tokens: frozenset[str]) -> bool:
    """Whether the header holds for ``path`` when no resource is there (RFC 4918 §10.4.3-4).

    The lists about ``path`` (untagged ones, and those tagged with it) are evaluated; the header holds when
    none is about it or one of them holds. An entity tag is never current there; a state token is when it
    is one of ``tokens`` (the locks that cover the name: a Depth infinity lock of a folder above it).

    Args:
        lists: From ``parse_if``.
        path: The request's path, percent-decoded.
        tokens: Tokens of the locks covering ``path``.

    Returns:
        True when the request may go ahead.
    """
    wanted = _bare(path)
    about = [entry.conditions for entry in lists if entry.resource is None or _bare(entry.resource) == wanted]
    if not about:
        return True
    return any(all(_holds(condition, tokens) for condition in conditions) for conditions in about)


def _bare(path: str) -> str:
    """A path without its trailing slash (a folder's tag names it with or without one); ``/`` stays."""
    return path.rstrip("/") or "/"


def _holds(condition: Condition, tokens: frozenset[str]) -> bool:
    current = condition.kind == "locktoken" and condition.value in tokens
    return current != condition.negated


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t":
        at += 1
    return at


def _uri(text: str, at: int) -> tuple[str, int]:
    """``<URI>`` at ``at``: the URI and the index after ``>``."""
    end = at + 1
    while end < len(text) and text[end] not in "<> \t":
        end += 1
    if end == len(text):
        raise _CutOff(f"unclosed '<' at {at}")
    if text[end] != ">":
        raise MalformedIf(f"unclosed '<' at {at}")
    if end == at + 1:
        raise MalformedIf(f"empty '<>' at {at}")
    return text[at + 1 : end], end + 1


def _list(text: str, at: int) -> tuple[tuple[Condition, ...], int]:
    """``( Condition+ )`` at ``at``: the conditions and the index after ``)``."""
    conditions: list[Condition] = []
    at = _skip(text, at + 1)
    while True:
        if at == len(text):
            raise _CutOff("unclosed '('")
        if text[at] == ")":
            if not conditions:
                raise MalformedIf(f"empty list at {at}")
            return tuple(conditions), at + 1
        negated = False
        if text[at : at + 3].lower() == "not":
            negated = True
            at = _skip(text, at + 3)
            if at == len(text):
                raise _CutOff("unclosed '('")
        if text[at] == "<":
            uri, at = _uri(text, at)
            conditions.append(Condition(negated, "locktoken", uri))
        elif text[at] == "[":
            value, at = _entity_tag(text, at)
            conditions.append(Condition(negated, "entity", value))
        else:
            raise MalformedIf(f"unexpected {text[at]!r} in a list at {at}")
        at = _skip(text, at)


def _entity_tag(text: str, at: int) -> tuple[str, int]:
    """``[entity-tag]`` at ``at``: the tag without brackets and quotes, and the index after ``]``."""
    start = at + 1
    weak = text.startswith("W/", start)
    inner = start + 2 if weak else start
    if inner < len(text) and text[inner] == '"':
        close = text.find('"', inner + 1)
        if close < 0 or close + 1 == len(text):
            raise _CutOff(f"unclosed entity tag at {at}")
        if text[close + 1] != "]":
            raise MalformedIf(f"unclosed entity tag at {at}")
        value = text[inner + 1 : close]
        end = close + 1
    else:
        end = start
        while end < len(text) and text[end] not in '[]<>() \t"':
            end += 1
        if end == len(text):
            raise _CutOff(f"unclosed entity tag at {at}")
        if text[end] != "]" or end == start:
            raise MalformedIf(f"unclosed entity tag at {at}")
        value = text[start:end]
        weak = False
    return ("W/" + value if weak else value), end + 1


def _tag_path(uri: str) -> str:
    """A resource tag's path, percent-decoded: from an absolute URI (``http://host/a/b``) or a path."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # "Invalid IPv6 URL", say
        raise MalformedIf(f"resource tag {uri!r}: {exc}") from exc
    path = parts.path if parts.scheme or parts.netloc else uri
    if not path.startswith("/"):
        raise MalformedIf(f"resource tag {uri!r} names no absolute path")
    return unquote(path)
