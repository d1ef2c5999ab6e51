"""Preconditions of a write to a name that has no resource yet: a PUT of a new name, MKCOL, a LOCK of a new
name; and the lock a LOCK of a new name asks for, checked before its empty archive is made.

Why: wsgidav evaluates ``If-Match`` and ``If`` only for a resource that exists; for a new name it went ahead
whatever they said. A PUT with ``If-Match: "etag"`` (or ``*``), which a client sends to replace a file only
if it is still the version it saw, created the file again after someone else deleted it, and an ``If``
list naming an entity tag, or a lock token that does not cover the name, was ignored. Both are false where
nothing is (RFC 9110 §13.1.1: "the condition is false if ... no current representation"; RFC 4918 §10.4),
so such a request is answered 412 and nothing is created. ``If-None-Match`` holds where nothing is, and
``If-Unmodified-Since`` is ignored (there is no modification date: RFC 9110 §13.1.4).

A LOCK of a new name makes an empty archive there (RFC 4918 §9.10.4); wsgidav made it first and checked the
lock's conflicts afterwards, so a LOCK under a folder someone else had locked (exclusive, Depth infinity)
was answered 423 and left its empty archive in the locked folder: anyone allowed to write could add files
to a folder another client held locked; and a shared lock on a folder, or any lock of Depth 0 (which
protects the folder's membership), let anyone without its token add a member by locking a new name (a PUT
of that name needs the token). ``require_lock_grantable`` checks the
write to the folder (its covering locks' tokens must be submitted, as for a PUT) and runs wsgidav's own
conflict check for the lock asked for (scope from the screened body, depth from the header) before anything
is created.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import quote

from wsgidav.dav_error import HTTP_PRECONDITION_FAILED, DAVError  # type: ignore[import-untyped]
from wsgidav.xml_tools import etree  # type: ignore[import-untyped]

from mountd.http.if_header import holds_where_nothing_is
from mountd.http.middleware import IF_LISTS_KEY
from mountd.http.xml_limits import SCREENED_KEY


def require_preconditions_where_nothing_is(environ: dict[str, Any], path: str, lock_manager: Any) -> None:
    """Raise 412 when the request's conditions are false for ``path``, where no resource is.

    Args:
        environ: The request's environ (``IF_LISTS_KEY`` set by ``ConditionalHeaders`` when it has ``If``).
        path: The new resource's path (wsgidav's, percent-decoded).
        lock_manager: The provider's lock manager, or None: the tokens of the caller's locks that cover
            ``path`` (a Depth infinity lock of a folder above it) are the ones current there.

    Raises:
        DAVError: 412 Precondition Failed.
    """
    if str(environ.get("HTTP_IF_MATCH") or "").strip():
        raise DAVError(HTTP_PRECONDITION_FAILED, "If-Match: no resource is there")
    lists = environ.get(IF_LISTS_KEY)
    if not lists:
        return
    tokens: frozenset[str] = frozenset()
    if lock_manager is not None:
        locks = lock_manager.get_indirect_url_lock_list(
            quote(path), principal=environ.get("wsgidav.user_name")
        )
        tokens = frozenset(str(lock["token"]) for lock in locks)
    if not holds_where_nothing_is(lists, path, tokens):
        raise DAVError(HTTP_PRECONDITION_FAILED, "'If' header condition failed: no resource is there")


def require_lock_grantable(environ: dict[str, Any], path: str, folder_url: str, lock_manager: Any) -> None:
    """Raise 423 when the LOCK this request asks for at the new name ``path`` would conflict with a lock
    that covers it, before anything is made there.

    Args:
        environ: The LOCK request's environ (its body screened and buffered by ``XmlBodyLimit``).
        path: The new resource's path (wsgidav's, percent-decoded).
        folder_url: The folder's reference URL (quoted, with its trailing slash), where the member is made.
        lock_manager: The provider's lock manager, or None (no locks: nothing to check).

    Raises:
        DAVError: 423 Locked, with wsgidav's conflict condition (the conflicting lock's root).
    """
    if lock_manager is None:
        return
    depth = environ.get("HTTP_DEPTH", "infinity")
    if depth not in ("0", "infinity"):
        return  # wsgidav answers 400 for it before creating anything
    url = quote(path)
    tokens = environ.get("wsgidav.ifLockTokenList", [])
    principal = environ.get("wsgidav.user_name")
    # Making a member of a locked folder is a write to it: the token of its lock (a Depth 0 lock on the folder
    # itself, or a Depth infinity one on it or above) is needed, checked as a PUT checks the folder.
    lock_manager.check_write_permission(url=folder_url, depth="0", token_list=tokens, principal=principal)
    # wsgidav's own rule, the one ``acquire`` applies right after (a private method of the pinned version).
    scope = _asked_scope(environ)
    lock_manager._check_lock_permission(url, "write", scope, depth, tokens, principal)


def _asked_scope(environ: dict[str, Any]) -> str:
    """``"exclusive"`` or ``"shared"`` as the LOCK body asks; ``"shared"`` (the scope that conflicts with
    fewer locks: a refusal then is certain) when the body cannot be read here."""
    stream = environ.get("wsgi.input")
    if environ.get(SCREENED_KEY) is not True or not isinstance(stream, io.BytesIO):
        return "shared"
    try:
        root = etree.fromstring(stream.getvalue())
    except Exception:  # noqa: BLE001  (wsgidav answers a body it cannot parse itself)
        return "shared"
    return "exclusive" if root.find("{DAV:}lockscope/{DAV:}exclusive") is not None else "shared"
