"""Bounded XML request bodies: PROPFIND, PROPPATCH and LOCK bodies are capped before anything parses them.

Why: wsgidav reads and parses these bodies whole, and its work grows with the number of elements (a 2 MB
PROPFIND body took 9.5 s and 800 MB). ``XmlBodyLimit`` runs before authentication and wsgidav:

* a body declared larger than ``max_xml_body`` (``SYNC_MAX_XML_BODY``, default 1 MiB) is refused with 413
  without reading it; a chunked body is read up to the limit and refused past it; LOCK and PROPPATCH
  bodies, whose content is kept after the request, have smaller caps (``METHOD_MAX_BODY``: 4 KiB, 64 KiB);
* a body within the limit is scanned by expat (a streaming parser that builds nothing) and refused with 413
  when it has more than ``max_xml_elements`` elements (``SYNC_MAX_XML_ELEMENTS``, default 1,000 — every
  property asked for is one) or any DOCTYPE (entity expansion); a body that is not well-formed goes on to
  wsgidav, which answers 400 as before;
* the body read is handed on in ``wsgi.input`` with its exact ``CONTENT_LENGTH``.

Invariants:
    * At most ``max_xml_body`` + 1 bytes of such a body are ever held in memory.
    * A refusal closes the connection (the unread body must not be taken for the next request).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import Any
from xml.parsers import expat

from mountd.http.middleware import StartResponse, WSGIApp, WSGIEnviron

log = logging.getLogger(__name__)

#: Environ key set (to True) when the body in ``wsgi.input`` passed these limits: a buffer of exactly
#: ``CONTENT_LENGTH`` bytes, without DOCTYPE, within the element cap (``mountd.http.propfind_body`` parses
#: only such bodies).
SCREENED_KEY = "sync.xml.screened"
#: Properties a PROPFIND may ask for, and characters of their names (as ``{namespace}local``) at most: each
#: member of a listing answers every one (990 names over 1,000 archives took wsgidav 20 s and 180 MB; 60
#: names of 1,000 characters, a 61 MB answer). Clients ask for 4 to 25, in under 1,000 characters; every list
#: within these is answered from the listing cache (``mountd.http.propfind_body``).
MAX_PROPFIND_NAMES = 64
MAX_PROPFIND_NAME_CHARS = 4096
#: Methods whose body is XML that wsgidav parses.
XML_METHODS = frozenset({"PROPFIND", "PROPPATCH", "LOCK"})
#: Smaller caps for bodies whose content is kept after the request: a LOCK's ``<owner>`` is stored with the
#: lock (up to the lock timeout) and sent back in every LOCK answer and lock discovery of the resource, so 40
#: shared locks of 0.9 MB owners held 600 MB and made each LOCK answer carry all the owners before it;
#: a PROPPATCH's values are stored for good as dead properties and rendered into every PROPFIND. Clients send
#: owners of a name or an address and properties of a few hundred bytes.
METHOD_MAX_BODY = {"LOCK": 4096, "PROPPATCH": 64 * 1024}


class _TooMany(Exception):
    pass


def _xml_problem(body: bytes, max_elements: int, *, propfind: bool = False) -> str | None:
    """Why ``body`` must be refused (too many elements, a DOCTYPE, a PROPFIND asking for too many
    properties), or None."""
    count = 0
    path: list[str] = []  # the open elements, as "namespace local" (expat's namespace processing)
    names = chars = 0

    def start(name: str, attrs: Any) -> None:
        nonlocal count, names, chars
        count += 1
        if count > max_elements:
            raise _TooMany
        path.append(name)
        if propfind and len(path) == 3 and path[0] == "DAV: propfind" and path[1] == "DAV: prop":
            names += 1
            chars += len(name) + 1 if " " in name else len(name)  # as ``{namespace}local``
            if names > MAX_PROPFIND_NAMES or chars > MAX_PROPFIND_NAME_CHARS:
                raise _TooMany(
                    f"the PROPFIND asks for more than {MAX_PROPFIND_NAMES} properties or"
                    f" {MAX_PROPFIND_NAME_CHARS} characters of property names"
                )

    def end(name: str) -> None:
        path.pop()

    def doctype(*args: Any) -> None:
        raise _TooMany("doctype")

    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(body, True)
    except _TooMany as exc:
        if not exc.args:
            return f"the XML body has more than {max_elements} elements"
        return "the XML body has a DOCTYPE" if exc.args[0] == "doctype" else str(exc.args[0])
    except (expat.ExpatError, LookupError, ValueError):
        # Not well-formed, or declaring an encoding expat cannot use (``encoding="bogus"`` raises
        # LookupError, ``"utf-32"`` ValueError; both escaped as a 500): wsgidav answers 400.
        return None
    return None


class XmlBodyLimit:
    """Refuse oversized or element-heavy XML bodies with 413 (see the module docstring).

    Args:
        app: The wrapped application.
        max_body: Largest body in bytes.
        max_elements: Most elements in a body.
    """

    def __init__(self, app: WSGIApp, *, max_body: int, max_elements: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_elements = max_elements

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in XML_METHODS:
            return self.app(environ, start_response)
        declared = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if not declared and not chunked:
            return self.app(environ, start_response)
        try:
            length = int(declared) if declared else None
        except ValueError:
            return self.app(environ, start_response)  # wsgidav refuses a bad Content-Length
        limit = min(self.max_body, METHOD_MAX_BODY.get(environ["REQUEST_METHOD"], self.max_body))
        too_large = f"the XML body of a {environ['REQUEST_METHOD']} exceeds {limit} bytes"
        if length is not None and length > limit:
            return self._refuse(environ, start_response, too_large)
        stream = environ["wsgi.input"]
        body = stream.read(length) if length is not None else stream.read(limit + 1)
        if len(body) > limit:
            return self._refuse(environ, start_response, too_large)
        problem = _xml_problem(body, self.max_elements, propfind=environ["REQUEST_METHOD"] == "PROPFIND")
        if problem is not None:
            return self._refuse(environ, start_response, problem)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ[SCREENED_KEY] = True
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(environ: WSGIEnviron, start_response: StartResponse, reason: str) -> list[bytes]:
        log.info(
            "request refused reason=xml-body method=%s detail=%r remote=%s",
            environ.get("REQUEST_METHOD"),
            reason,
            environ.get("REMOTE_ADDR"),
        )
        body = f"413 Content Too Large: {reason}\n".encode()
        start_response(
            "413 Content Too Large",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]
