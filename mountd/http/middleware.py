"""WSGI middleware around wsgidav: HTTP behaviour we add without forking wsgidav (CONTRIBUTING.md).

``RequestGuard`` refuses requests that must never reach wsgidav:

* a ``Host`` header that does not name this server — the defence against DNS rebinding, where a web page's
  script reaches a loopback server under an attacker's host name. Allowed are the bound host, ``localhost``,
  ``127.0.0.1`` and ``[::1]``, each with the server's port (bare when the port is 80), plus names the
  operator adds; anything else gets 421 Misdirected Request, a missing Host 400;
* a path that is not valid UTF-8 once percent-decoded (wsgidav would raise on it and answer 500), or that
  has a ``.``/``..`` segment or a control character (``path_problem``): 400;
* Basic credentials that are not base64 of UTF-8 ``user:password`` (``credentials_problem``): 400. wsgidav's
  authenticator decodes them without checking and would answer 500.

``ConditionalHeaders`` makes wsgidav's If-Modified-Since handling follow RFC 9110 §13.1.3 for GET and HEAD:
wsgidav answers 304 only when the date is strictly later than Last-Modified (so a client echoing
Last-Modified, the usual case, gets the full body again), and answers 412 when If-None-Match matches while
If-Modified-Since holds. The RFC says to ignore If-Modified-Since when If-None-Match is present, and that
"not modified since D" means ``last_modified <= D``; at wsgidav's whole-second resolution that is
``last_modified < D + 1 s``, so the middleware drops the header in the first case and adds one second to
it in the second.

It also reads the WebDAV ``If`` header once, strictly (``mountd.http.if_header``): a malformed one is answered
400 (wsgidav took ``If: garbage((`` for "no condition" and went ahead); a well-formed one is handed to wsgidav
already parsed (its tagged lists keyed by path, which wsgidav's own parser never matched) and kept in the
environ (``IF_LISTS_KEY``) for a write to a name with no resource (``mountd.writable.conditions``).

``RequestScope`` gives each request a place to register cleanups (``on_request_end``) and runs them when
the response has been sent or abandoned — the provider closes the snapshots it opened there, so a file
descriptor lives exactly as long as its request, whatever wsgidav did with the resource.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]

from mountd.http.if_header import MalformedIf, parse_if, wsgidav_form

log = logging.getLogger(__name__)

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: Environ key of the request's ``ExitStack``.
SCOPE_KEY = "sync.request_scope"
#: Host names that always mean "this machine".
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The authentication scheme as wsgidav's authenticator finds it: the header's leading word.
_AUTH_SCHEME = re.compile(r"^(\w+)")


def on_request_end(environ: WSGIEnviron, callback: Callable[[], object]) -> bool:
    """Run ``callback`` when the current request ends.

    Args:
        environ: The request's environ.
        callback: A cleanup; exceptions it raises propagate to the server at the end of the request.

    Returns:
        False when the app runs without ``RequestScope`` (the caller must clean up otherwise).
    """
    stack = environ.get(SCOPE_KEY)
    if not isinstance(stack, ExitStack):
        return False
    stack.callback(callback)
    return True


def host_names(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names (without port) a Host header may carry.

    Args:
        bound_host: The address the server listens on (an IPv6 literal may come without brackets).
        extra: Further names the operator allows (e.g. the machine's DNS name).

    Returns:
        Lower-case names; IPv6 literals in brackets.
    """
    names = {*LOOPBACK_NAMES, *(_bracketed(n) for n in extra)}
    names.add(_bracketed(bound_host))
    return frozenset(n.lower() for n in names if n)


def _bracketed(host: str) -> str:
    host = host.strip()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


class RequestGuard:
    """Refuse misdirected requests (Host check) and undecodable paths before wsgidav sees them.

    Args:
        app: The wrapped application.
        names: Allowed host names from ``host_names``.
    """

    def __init__(self, app: WSGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if not host:
            return _refuse(start_response, "400 Bad Request", "missing Host header")
        if not self._allowed(host, str(environ.get("SERVER_PORT", ""))):
            # info, not warning: a rebinding page can send these in a loop, and each one is handled here.
            log.info("request refused reason=host host=%r remote=%s", host, environ.get("REMOTE_ADDR"))
            return _refuse(start_response, "421 Misdirected Request", "unknown Host")
        problem = path_problem(environ.get("PATH_INFO", ""))
        if problem is not None:
            log.info(
                "request refused reason=path path=%r remote=%s",
                environ.get("PATH_INFO"),
                environ.get("REMOTE_ADDR"),
            )
            return _refuse(start_response, "400 Bad Request", problem)
        problem = credentials_problem(environ.get("HTTP_AUTHORIZATION"))
        if problem is not None:
            log.info("request refused reason=credentials remote=%s", environ.get("REMOTE_ADDR"))
            return _refuse(start_response, "400 Bad Request", problem)
        return self.app(environ, start_response)

    def _allowed(self, host: str, port: str) -> bool:
        host = host.strip().lower()
        if host.startswith("["):  # an IPv6 literal, RFC 3986 "IP-literal"
            end = host.find("]")
            name, rest = host[: end + 1], host[end + 1 :]
            if end < 0 or (rest and not rest.startswith(":")):
                return False
            given_port = rest[1:]
        else:
            name, _, given_port = host.partition(":")
            if ":" in given_port:
                return False
        if name not in self.names:
            return False
        return given_port == port or (given_port == "" and port == "80")


def path_problem(path: str) -> str | None:
    """Why a (percent-decoded) request path must be refused, or None when it may go on.

    Clients remove ``.`` and ``..`` segments before sending (RFC 3986 §5.2.4), so a path that still has
    them — literally or percent-encoded — is an attempt to climb out of the store. wsgidav would resolve
    harmless ones and refuse the rest with a 400 whose body it loses (its ``__call__`` is a generator that
    ``return``s the page), leaving a keep-alive client waiting for bytes that never come; answering here
    avoids both. Control characters (NUL among them) are never part of a store name.

    Args:
        path: ``PATH_INFO`` as the server decoded it (latin-1 code points, PEP 3333).

    Returns:
        The reason, or None.
    """
    try:
        text = path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return "path is not valid UTF-8"
    if any(segment in (".", "..") for segment in text.split("/")):
        return "path has a dot segment"
    if _CONTROL.search(text):
        return "path has a control character"
    return None


def credentials_problem(authorization: str | None) -> str | None:
    """Why an ``Authorization`` header must be refused before wsgidav parses it, or None.

    Only the Basic scheme is checked, the way wsgidav's authenticator reads it (scheme = leading word,
    credentials = everything after the first six characters, decoded leniently as base64, then as UTF-8,
    then split at the first ``:``): where wsgidav would raise and answer 500, this answers 400. Digest
    headers are parsed leniently by wsgidav and answered 401 when wrong.

    Args:
        authorization: The header's value, or None.

    Returns:
        The reason, or None.
    """
    if authorization is None:
        return None
    scheme = _AUTH_SCHEME.match(authorization)
    if scheme is None or scheme.group(1).lower() != "basic":
        return None
    try:
        decoded = base64.decodebytes(authorization[len("Basic ") :].strip().encode("utf-8")).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "Basic credentials are not base64 of UTF-8 text"
    if ":" not in decoded:
        return "Basic credentials have no ':' between user and password"
    return None


def _refuse(start_response: StartResponse, status: str, message: str) -> list[bytes]:
    body = f"{status}: {message}\n".encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


#: Environ key of the request's parsed ``If`` header (``if_header.parse_if``), when it has one.
IF_LISTS_KEY = "sync.if.lists"
#: Longest excerpt of a parse error shown in a 400 (the header is the client's text).
_IF_ERROR_SHOWN = 200


class ConditionalHeaders:
    """Make the conditions wsgidav reads safe and right for every method.

    * A malformed ``If`` header (RFC 4918 §10.4.2) is answered 400; a well-formed one is parsed here for
      wsgidav (``wsgidav.conditions.if``, ``wsgidav.ifLockTokenList``) and kept under ``IF_LISTS_KEY``.

    * A date wsgidav's own parser cannot turn into a time (``If-Modified-Since``, ``If-Unmodified-Since``
      or a date ``If-Range`` in year 10000: ``calendar.timegm`` raises ``ValueError``) answered 500 for any
      method. Such a header is removed: an invalid date is ignored (RFC 9110 §13.1.3, §13.1.4, §13.1.5).
    * If-Modified-Since of GET and HEAD is rewritten so that wsgidav's check gives RFC 9110's answer.

    Args:
        app: The wrapped application.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        text = environ.get("HTTP_IF")
        if text is not None:
            try:
                lists = parse_if(str(text))
            except MalformedIf as exc:
                message = f"malformed If header: {exc}"
                return _refuse(start_response, "400 Bad Request", message[:_IF_ERROR_SHOWN])
            environ[IF_LISTS_KEY] = lists
            environ["wsgidav.conditions.if"], environ["wsgidav.ifLockTokenList"] = wsgidav_form(lists)
        for key in _DATE_CONDITIONS:
            value = environ.get(key)
            if value is not None and not _parses(value, key):
                del environ[key]
                if key == "HTTP_IF_RANGE":
                    # An If-Range that does not match means the whole body (RFC 9110 §13.1.5): without
                    # it, the Range alone would be answered.
                    environ.pop("HTTP_RANGE", None)
        since = environ.get("HTTP_IF_MODIFIED_SINCE")
        if since is not None and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            if "HTTP_IF_NONE_MATCH" in environ:
                del environ["HTTP_IF_MODIFIED_SINCE"]
            else:
                try:
                    moment = parsedate_to_datetime(since)
                except (TypeError, ValueError):
                    moment = None  # an invalid date is ignored, by wsgidav as by the RFC
                if moment is not None and moment.tzinfo is not None:
                    environ["HTTP_IF_MODIFIED_SINCE"] = format_datetime(
                        moment + timedelta(seconds=1), usegmt=True
                    )
        return self.app(environ, start_response)


#: The request headers whose value wsgidav parses as a date (``If-Range`` only when it is not an ETag).
_DATE_CONDITIONS = ("HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF_RANGE")


def _parses(value: str, key: str) -> bool:
    # Whether wsgidav's date parser survives ``value`` (None, "not a date", is an answer it handles).
    if key == "HTTP_IF_RANGE" and value.lstrip().startswith(('"', "W/")):
        return True  # an ETag
    try:
        dav_util.parse_time_string(value)
    except (ValueError, OverflowError, TypeError):
        return False
    return True


class RequestScope:
    """Give each request an ``ExitStack`` in its environ and close it when the response ends.

    Args:
        app: The wrapped application.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        stack = ExitStack()
        environ[SCOPE_KEY] = stack
        try:
            result = self.app(environ, start_response)
        except BaseException:
            stack.close()
            raise
        return _ClosingResponse(result, stack)


class _ClosingResponse:
    """A response iterable that closes the request's scope after the wrapped response is closed."""

    def __init__(self, result: Iterable[bytes], stack: ExitStack) -> None:
        self._result = result
        self._stack = stack

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._stack.close()
