"""A small WebDAV client for the mountd tests: raw requests over ``http.client`` and PROPFIND parsing.

``http.client`` sends the path exactly as given (no dot-segment removal), so the tests can send what a
hostile client would. Imported by the tests as ``dav_client`` (``tests/mountd`` is on ``sys.path``).
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from defusedxml import ElementTree

DAV = "{DAV:}"


@dataclass(frozen=True)
class Response:
    """One response, read completely."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower())


def request(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Response:
    """Send one request on a fresh connection and read the whole response."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def get(url: str, path: str, **headers: str) -> Response:
    """GET ``path`` with extra headers (underscores in names become dashes)."""
    return request(url, "GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})


PROPFIND_ALL = b'<?xml version="1.0" encoding="utf-8"?><propfind xmlns="DAV:"><allprop/></propfind>'


def propfind(url: str, path: str, depth: str = "1", body: bytes = PROPFIND_ALL) -> dict[str, dict[str, str]]:
    """PROPFIND ``path``: href (unquoted) → {property Clark name: text} of the properties found (200)."""
    resp = request(
        url,
        "PROPFIND",
        path,
        headers={"Depth": depth, "Content-Type": "application/xml"},
        body=body,
    )
    assert resp.status == 207, (resp.status, resp.body[:500])
    result: dict[str, dict[str, str]] = {}
    root = ElementTree.fromstring(resp.body)
    for response in root.iter(f"{DAV}response"):
        href = unquote(response.findtext(f"{DAV}href") or "")
        props: dict[str, str] = {}
        for propstat in response.iter(f"{DAV}propstat"):
            if "200" not in (propstat.findtext(f"{DAV}status") or ""):
                continue
            for prop in propstat.iter(f"{DAV}prop"):
                for child in prop:
                    props[child.tag] = "".join(child.itertext()) or (
                        "collection" if child.find(f"{DAV}collection") is not None else ""
                    )
        result[href] = props
    return result


def names(listing: dict[str, dict[str, str]], folder: str = "/") -> list[str]:
    """The member names of ``folder`` in a Depth-1 listing (folders with a trailing slash), sorted."""
    out = []
    for href in listing:
        if href.rstrip("/") == folder.rstrip("/"):
            continue
        name = href.rstrip("/").rsplit("/", 1)[-1]
        out.append(name + "/" if href.endswith("/") else name)
    return sorted(out)


def lock_body(scope: str = "exclusive", owner: str = "me") -> bytes:
    """A LOCK request body: a write lock of ``scope`` (``exclusive`` or ``shared``) held by ``owner``."""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:{scope}/>'
        f"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>{owner}</D:owner></D:lockinfo>"
    ).encode()
