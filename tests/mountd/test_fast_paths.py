"""The fast paths (``FastGet``, ``FastPropfind``, the remembered listing) answer exactly as wsgidav does.

Each comparison sends the same request twice: once in the form a fast path answers, once to wsgidav (a
query string on a GET, which the fast path passes on; a PROPFIND while ``FastPropfind`` is switched off, in
``wsgidav_answer``). The index's counters show which path answered: wsgidav's GET opens the archive through
the provider, which ``learn``s its facts; the fast path finds them cached.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest
from dav_client import PROPFIND_ALL, Response, request
from rewrites import rewrite_in_place
from store_manifests import EXPIRED, csv_manifest

import mountd.http.fast_propfind
from broker import Settings
from mountd import Role, ServerHandle, add_user, load_users, serve_background
from mountd.http.fast_propfind import FastPropfind
from sync_format import BuildResult, commit_payload
from sync_format.testing import make_archive, make_manifest

AddArchive = Callable[..., BuildResult]

#: A lock request body for an exclusive write lock.
LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
    b"<locktype><write/></locktype><owner>tester</owner></lockinfo>"
)


def _without_date(resp: Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return resp.status, [(k, v) for k, v in resp.headers.items() if k not in ("date", "age")], resp.body


def wsgidav_answer(url: str, path: str, depth: str, body: bytes = PROPFIND_ALL) -> Response:
    """A PROPFIND answered by wsgidav itself: ``FastPropfind`` passes everything on meanwhile (the server
    runs in this process)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FastPropfind, "__call__", lambda self, environ, start: self.next_app(environ, start))
        return request(
            url, "PROPFIND", path, headers={"Depth": depth, "Content-Type": "application/xml"}, body=body
        )


def _fast_and_slow_propfind(url: str, path: str, depth: str) -> tuple[Response, Response]:
    fast = request(url, "PROPFIND", path, headers={"Depth": depth})
    return fast, wsgidav_answer(url, path, depth)


@pytest.fixture
def varied_store(add_archive: AddArchive, store: Path) -> Path:
    """A store with fresh, expired, reference-style and oddly named archives and a folder."""
    add_archive("report.csv.sync", b"a,b\n1,2\n", manifest=csv_manifest())
    add_archive("old.txt.sync", b"stale", manifest=EXPIRED)
    add_archive("plain.txt.sync", b"no state", state=False)
    add_archive("odd & <name> 'q' \"d\" é.txt.sync", b"odd")
    add_archive("sub folder/inner.txt.sync", b"inner")
    (store / "empty & <dir>").mkdir()
    return store


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("name", ["report.csv", "old.txt", "plain.txt", "odd & <name> 'q' \"d\" é.txt"])
def test_fast_get_answers_as_wsgidav(
    varied_store: Path, server: ServerHandle, method: str, name: str
) -> None:
    """A plain GET or HEAD answered from cached facts has wsgidav's status, headers (in order) and body."""
    path = "/" + quote(name)
    slow = request(server.mount_url, method, path + "?slow")
    learned = server.provider.index.stats.learned
    fast = request(server.mount_url, method, path)
    assert server.provider.index.stats.learned == learned, "the second read should not open through wsgidav"
    assert slow.status == 200
    assert _without_date(fast) == _without_date(slow)


def test_fast_get_learns_an_unseen_version_with_one_open(
    add_archive: AddArchive, server: ServerHandle
) -> None:
    """The first GET of a version parses it from the descriptor it opened and remembers it for the next."""
    add_archive("new.txt.sync", b"first")
    stats = server.provider.index.stats
    first = request(server.mount_url, "GET", "/new.txt")
    after = server.provider.index.stats
    assert first.status == 200
    assert first.body == b"first"
    assert (after.learned, after.opens) == (stats.learned + 1, stats.opens)
    assert request(server.mount_url, "GET", "/new.txt").body == b"first"
    assert server.provider.index.stats.learned == after.learned


def test_swapped_archive_is_never_served_from_the_cached_layout(
    add_archive: AddArchive, store: Path, server: ServerHandle
) -> None:
    """After a swap (new inode) the fast path serves the new payload, ETag and length, not the cached ones."""
    add_archive("data.txt.sync", b"old payload")
    before = request(server.mount_url, "GET", "/data.txt")
    commit_payload(store / "data.txt.sync", 0, b"the new, longer payload")
    after = request(server.mount_url, "GET", "/data.txt")
    assert before.body == b"old payload"
    assert after.body == b"the new, longer payload"
    assert after.header("content-length") == str(len(after.body))
    assert after.header("etag") != before.header("etag")


def test_archive_edited_in_place_is_never_served_from_the_cached_layout(
    add_archive: AddArchive, store: Path, tmp_path: Path, server: ServerHandle
) -> None:
    """An archive rewritten in place (same inode, new size and mtime) is parsed again, not read as cached."""
    add_archive("data.txt.sync", b"x" * 100)
    assert request(server.mount_url, "GET", "/data.txt").body == b"x" * 100
    replacement = tmp_path / "replacement.sync"
    make_archive(replacement, b"edited", manifest=make_manifest(content_type="text/x-edited"))
    target = store / "data.txt.sync"
    inode = target.stat().st_ino
    with target.open("r+b") as out:
        out.truncate(0)
        out.write(replacement.read_bytes())
    assert target.stat().st_ino == inode
    resp = request(server.mount_url, "GET", "/data.txt")
    assert resp.status == 200
    assert resp.body == b"edited"
    assert resp.header("content-type") == "text/x-edited"


def test_a_same_size_rewrite_with_the_mtime_put_back_is_seen_by_a_running_server(
    add_archive: AddArchive, store: Path, tmp_path: Path, server: ServerHandle
) -> None:
    """An archive rewritten in place by one of the same size, its mtime put back (only the ctime moved), is
    described by its new facts: the listing, and GET's Content-Type and ETag, not the remembered ones."""
    fixed = {"created_at": "2026-01-01T00:00:00Z", "ttl": 2**62}
    add_archive("data.txt.sync", b"aaaa", manifest=make_manifest(content_type="text/x-aaaa", **fixed))
    size = (store / "data.txt.sync").stat().st_size
    other = tmp_path / "b.sync"
    for n in range(1000):  # compressed members vary in size with their bytes: find a payload that fits
        make_archive(other, b"b%03d" % n, manifest=make_manifest(content_type="text/x-bbbb", **fixed))
        if other.stat().st_size == size:
            break
    before = request(server.mount_url, "GET", "/data.txt")
    listed_before = request(server.mount_url, "PROPFIND", "/", headers={"Depth": "1"})
    assert before.header("content-type") == "text/x-aaaa"
    assert b"text/x-aaaa" in listed_before.body
    rewrite_in_place(store / "data.txt.sync", other.read_bytes())
    after = request(server.mount_url, "GET", "/data.txt")
    head = request(server.mount_url, "HEAD", "/data.txt")
    listed_after = request(server.mount_url, "PROPFIND", "/", headers={"Depth": "1"})
    assert after.body.startswith(b"b")
    assert after.header("content-type") == head.header("content-type") == "text/x-bbbb"
    assert after.header("etag") == head.header("etag") != before.header("etag")
    assert b"text/x-bbbb" in listed_after.body
    assert b"text/x-aaaa" not in listed_after.body
    assert str(after.header("etag")).encode() in listed_after.body


def test_a_new_version_of_another_type_gets_its_own_safety_headers(
    add_archive: AddArchive, store: Path, tmp_path: Path, server: ServerHandle
) -> None:
    """The fast path's remembered headers belong to one version: when a plain-text archive is replaced by an
    HTML one at the same path, the next GET carries the HTML type and the attachment disposition."""
    add_archive("page.txt.sync", b"plain", manifest=make_manifest(content_type="text/plain"))
    first = request(server.mount_url, "GET", "/page.txt")
    assert first.header("content-type") == "text/plain"
    assert first.header("content-disposition") is None
    replacement = tmp_path / "page.sync"
    make_archive(replacement, b"<p>active</p>", manifest=make_manifest(content_type="text/html"))
    replacement.replace(store / "page.txt.sync")
    second = request(server.mount_url, "GET", "/page.txt")
    assert second.body == b"<p>active</p>"
    assert second.header("content-type") == "text/html"
    assert (second.header("content-disposition") or "").startswith("attachment;")
    assert second.header("x-content-type-options") == "nosniff"
    assert second.header("content-security-policy") == "sandbox"


def test_a_name_that_becomes_a_folder_is_not_read_as_the_archive(
    add_archive: AddArchive, store: Path, server: ServerHandle
) -> None:
    """What the fast path remembers of a path is its text only: once a folder of the same name appears, a
    GET of the name no longer answers with the archive's payload."""
    add_archive("both.txt.sync", b"archive bytes")
    assert request(server.mount_url, "GET", "/both.txt").body == b"archive bytes"
    (store / "both.txt").mkdir()
    resp = request(server.mount_url, "GET", "/both.txt")
    assert resp.body != b"archive bytes"
    assert not (resp.header("content-type") or "").startswith("application/octet-stream")


def test_fast_get_passes_ranges_and_conditions_to_wsgidav(
    add_archive: AddArchive, server: ServerHandle
) -> None:
    """Range and conditional GETs keep wsgidav's answers: 206, 304 and 412."""
    add_archive("data.txt.sync", b"0123456789")
    etag = request(server.mount_url, "GET", "/data.txt").header("etag") or ""
    ranged = request(server.mount_url, "GET", "/data.txt", headers={"Range": "bytes=2-4"})
    assert (ranged.status, ranged.body) == (206, b"234")
    assert request(server.mount_url, "GET", "/data.txt", headers={"If-None-Match": etag}).status == 304
    assert request(server.mount_url, "GET", "/data.txt", headers={"If-Match": '"other"'}).status == 412


@pytest.mark.parametrize(
    ("path", "depth"),
    [
        ("/", "1"),
        ("/", "0"),
        ("/sub%20folder/", "1"),
        ("/sub%20folder", "1"),
        ("/empty%20%26%20%3Cdir%3E/", "1"),
    ],
)
def test_fast_propfind_answers_as_wsgidav(
    varied_store: Path, url: str, path: str, depth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROPFIND without a body answers byte for byte what wsgidav answers for an explicit allprop."""
    documents: list[str] = []
    original = mountd.http.fast_propfind._folder_response

    def spy(*args: Any) -> str:
        documents.append(args[0])
        return original(*args)

    monkeypatch.setattr(mountd.http.fast_propfind, "_folder_response", spy)
    fast, slow = _fast_and_slow_propfind(url, path, depth)
    assert documents, "the request without a body should be answered by FastPropfind"
    assert len(documents) == len(set(documents))
    assert slow.status == 207
    assert _without_date(fast) == _without_date(slow)


#: What clients send: davfs2, macOS Finder, Windows' mini-redirector, cadaver (allprop), and lists that ask
#: for our properties, the lock properties, quota properties, a repeat, a name without namespace, a
#: namespace ElementTree knows by prefix (``dc``) and several unknown ones.
NAMED_BODIES = {
    "davfs2": b'<?xml version="1.0" encoding="utf-8" ?><propfind xmlns="DAV:"><prop><getlastmodified/>'
    b"<getcontentlength/><resourcetype/><getetag/></prop></propfind>",
    "finder": b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:getlastmodified/>'
    b"<D:getcontentlength/><D:creationdate/><D:resourcetype/></D:prop></D:propfind>",
    "windows": b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop'
    b' xmlns:Z="urn:schemas-microsoft-com:"><D:name/><D:parentname/><D:href/><D:ishidden/><D:isroot/>'
    b"<D:iscollection/><D:isreadonly/><D:getcontenttype/><D:contentclass/><D:getcontentlanguage/>"
    b"<D:creationdate/><D:lastaccessed/><D:getlastmodified/><D:getcontentlength/><D:resourcetype/>"
    b"<D:isstructureddocument/><D:defaultdocument/><D:displayname/><D:isreadonly/><Z:Win32FileAttributes/>"
    b"<Z:Win32CreationTime/><Z:Win32LastAccessTime/><Z:Win32LastModifiedTime/></D:prop></D:propfind>",
    "cadaver": b'<?xml version="1.0" encoding="utf-8"?>\n<propfind xmlns="DAV:"><allprop/></propfind>\n',
    "ours": b'<propfind xmlns="DAV:" xmlns:s="urn:sync"><prop><s:ttl/><s:expired/><s:last-refresh/>'
    b"<s:integrity/><s:generation/><s:expires-at/><displayname/><getcontenttype/></prop></propfind>",
    "odd": b'<propfind xmlns="DAV:" xmlns:s="urn:sync"><prop><b:x xmlns:b="urn:b"/><quota-used-bytes/>'
    b'<quota-available-bytes/><lockdiscovery/><supportedlock/><x xmlns=""/><getetag/><getetag/>'
    b'<dc:title xmlns:dc="http://purl.org/dc/elements/1.1/"/><a:y xmlns:a="urn:a&amp;&quot;q"/><s:ttl/>'
    b'<b:z xmlns:b="urn:b"/></prop></propfind>',
}


def _named_paths() -> list[tuple[str, str, str]]:
    return [
        (kind, path, depth)
        for kind in NAMED_BODIES
        for path, depth in (
            ("/", "1"),
            ("/", "0"),
            ("/sub%20folder/", "1"),
            ("/empty%20%26%20%3Cdir%3E/", "1"),
        )
    ]


@pytest.mark.parametrize(("kind", "path", "depth"), _named_paths())
def test_fast_propfind_answers_property_lists_as_wsgidav(
    varied_store: Path, url: str, kind: str, path: str, depth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROPFIND with a body, as davfs2, Finder, Windows and cadaver send it, is answered from the listing
    cache (``propfind_body``) byte for byte as wsgidav answers it."""
    answered: list[str] = []
    original = mountd.http.fast_propfind.quote

    def spy(text: str, safe: str = "/") -> str:
        answered.append(text)
        return original(text, safe=safe)

    monkeypatch.setattr(mountd.http.fast_propfind, "quote", spy)
    body = NAMED_BODIES[kind]
    fast = request(url, "PROPFIND", path, headers={"Depth": depth, "Content-Type": "text/xml"}, body=body)
    assert answered, "FastPropfind should have answered"
    slow = wsgidav_answer(url, path, depth, body)
    assert slow.status == 207
    assert _without_date(fast) == _without_date(slow)


def test_random_property_lists_are_answered_as_wsgidav(varied_store: Path, url: str) -> None:
    """Lists drawn at random (fixed seed) from every property wsgidav knows, ours, and unknown ones in
    several namespaces, with repeats: the same bytes as wsgidav's, at Depth 1 and 0."""
    pool = [
        *(
            f"D:{name}"
            for name in (
                "getetag",
                "getlastmodified",
                "getcontentlength",
                "getcontenttype",
                "displayname",
                "resourcetype",
                "creationdate",
                "lockdiscovery",
                "supportedlock",
                "quota-used-bytes",
                "quota-available-bytes",
                "getcontentlanguage",
                "href",
                "iscollection",
            )
        ),
        *(
            f"s:{name}"
            for name in ("ttl", "expired", "expires-at", "generation", "last-refresh", "integrity", "unknown")
        ),
        "a:one",
        "a:two",
        "b:one",
        "c:three",
    ]
    chosen = random.Random(15)
    for _ in range(40):
        names = [chosen.choice(pool) for _ in range(chosen.randint(1, 12))]
        props = "".join(f"<{name}/>" for name in names)
        body = (
            '<D:propfind xmlns:D="DAV:" xmlns:s="urn:sync" xmlns:a="urn:a" xmlns:b="http://b.example/"'
            f' xmlns:c="urn:c"><D:prop>{props}</D:prop></D:propfind>'
        ).encode()
        for depth in ("1", "0"):
            fast = request(url, "PROPFIND", "/", headers={"Depth": depth}, body=body)
            slow = wsgidav_answer(url, "/", depth, body)
            assert _without_date(fast) == _without_date(slow), names


@pytest.mark.parametrize(
    "body",
    [
        b'<propfind xmlns="DAV:"><propname/></propfind>',
        b'<propfind xmlns="DAV:"><allprop/><include><getetag/></include></propfind>',
        b'<propfind xmlns="DAV:"><prop/></propfind>',
        b'<propfind xmlns="DAV:"><prop><getetag/></prop><prop><displayname/></prop></propfind>',
        b'<propfind xmlns="DAV:"><prop><getetag/></prop>',
        b'<prop xmlns="DAV:"><getetag/></prop>',
        b"not xml at all",
        b'<?xml version="1.0" encoding="bogus"?><propfind xmlns="DAV:"><prop><getetag/></prop></propfind>',
    ],
)
def test_bodies_fast_propfind_does_not_understand_go_to_wsgidav(
    varied_store: Path, url: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``propname``, ``include``, an empty or repeated ``prop``, a wrong root, a malformed body and an
    encoding nothing knows are wsgidav's to answer, with their body intact (lists longer than
    ``xml_limits.MAX_PROPFIND_NAMES`` never reach it: ``test_hostile_requests``)."""
    calls: list[tuple[object, bytes]] = []
    original = FastPropfind.__call__

    def passing(self: Any, environ: Any, start: Any) -> Any:
        asked = mountd.http.fast_propfind.listing_request(environ)
        result = original(self, environ, start)  # (wsgidav's app reads the body once iterated)
        calls.append((asked, environ["wsgi.input"].read()))
        environ["wsgi.input"].seek(0)
        return result

    monkeypatch.setattr(FastPropfind, "__call__", passing)
    fast = request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=body)
    assert calls == [(None, body)]  # not understood, passed on with the whole body still to read
    monkeypatch.undo()
    slow = wsgidav_answer(url, "/", "1", body)
    stamp = re.compile(rb"WsgiDAV</a> - [0-9: .-]+")  # the moment on wsgidav's error pages
    assert fast.status == slow.status
    assert stamp.sub(b"", fast.body) == stamp.sub(b"", slow.body)


def test_property_list_answers_follow_swaps_expiry_and_verdicts(add_archive: AddArchive, url: str) -> None:
    """Members' responses to a list are remembered (``FastPropfind._named``): a swap, a payload verdict
    and an expiry in between are all in the next answer, which is still wsgidav's."""
    body = NAMED_BODIES["ours"]
    for name in ("a.csv.sync", "b.csv.sync"):
        add_archive(name, b"same,bytes\n", manifest=csv_manifest())
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    soon = add_archive("soon.txt.sync", b"soon", manifest=make_manifest(created_at=created, ttl=3)).path
    first = request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=body)
    assert first.body.count(b"<ns1:integrity>unverified</ns1:integrity>") == 3
    assert first.body.count(b"<ns1:expired>true</ns1:expired>") == 0
    assert request(url, "GET", "/b.csv").status == 200
    commit_payload(soon.parent / "a.csv.sync", 0, b"new,bytes\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        later = request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=body)
        if b"<ns1:expired>true</ns1:expired>" in later.body:
            break
        time.sleep(0.2)
    assert later.body.count(b"<ns1:expired>true</ns1:expired>") == 1
    assert later.body.count(b"<ns1:integrity>verified</ns1:integrity>") == 1
    assert b"<ns1:generation>1</ns1:generation>" in later.body
    slow = wsgidav_answer(url, "/", "1", body)
    assert _without_date(later) == _without_date(slow)


def test_an_archive_linked_into_two_folders_is_listed_under_each_href(
    add_archive: AddArchive, store: Path, url: str
) -> None:
    """A hard link shares its facts (the same file version) but not its href: each folder's answer to a
    ``<prop>`` list names its own member, as wsgidav's does."""
    first = add_archive("one/same.txt.sync", b"linked").path
    (store / "two").mkdir()
    (store / "two" / "same.txt.sync").hardlink_to(first)
    body = NAMED_BODIES["davfs2"]
    for folder in ("/one/", "/two/", "/one/"):
        fast = request(url, "PROPFIND", folder, headers={"Depth": "1"}, body=body)
        assert f"<ns0:href>{folder}same.txt</ns0:href>".encode() in fast.body
        assert _without_date(fast) == _without_date(wsgidav_answer(url, folder, "1", body))


def test_remembered_property_list_answers_stay_within_their_bound(
    add_archive: AddArchive, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members' responses to lists are remembered up to ``MAX_NAMED_BYTES`` (a few responses here), counted
    exactly as lists come and go; answers past the bound are whole and still wsgidav's."""
    monkeypatch.setattr(mountd.http.fast_propfind, "MAX_NAMED_BYTES", 3000)
    monkeypatch.setattr(mountd.http.fast_propfind, "MAX_PLANS", 2)
    for i in range(12):
        add_archive(f"m{i:02d}.txt.sync", b"member")
    seen: list[Any] = []
    remember = FastPropfind._remember_named

    def spy(self: Any, *args: Any) -> None:
        seen.append(self)
        remember(self, *args)

    monkeypatch.setattr(FastPropfind, "_remember_named", spy)
    for kind in ("davfs2", "windows", "ours", "davfs2", "finder", "windows"):
        body = NAMED_BODIES[kind]
        fast = request(url, "PROPFIND", "/", headers={"Depth": "1"}, body=body)
        assert fast.body.count(b"<ns0:response>") == 13
        assert _without_date(fast) == _without_date(wsgidav_answer(url, "/", "1", body))
        (propfind,) = set(seen)
        kept = sum(len(member[4]) for members in propfind._named.values() for member in members.values())
        assert propfind._named_bytes == kept <= 3000
        assert len(propfind._plans) <= 2


def test_fast_propfind_written_in_chunks_is_wsgidavs_document(
    varied_store: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document sent in many writes (tiny chunks here) has wsgidav's bytes and an exact Content-Length,
    with expired and fresh members (flags of different lengths)."""
    monkeypatch.setattr(mountd.http.fast_propfind, "CHUNK_BYTES", 100)
    writes: list[int] = []
    original = mountd.http.fast_propfind._Document.chunks

    def spy(self: Any) -> Iterator[bytes]:
        for chunk in original(self):
            writes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(mountd.http.fast_propfind._Document, "chunks", spy)
    fast, slow = _fast_and_slow_propfind(url, "/", "1")
    assert len(writes) > 2, "FastPropfind should have answered in several writes"
    assert b"<ns1:expired>true</ns1:expired>" in fast.body
    assert b"<ns1:expired>false</ns1:expired>" in fast.body
    assert _without_date(fast) == _without_date(slow)
    assert int(fast.headers["content-length"]) == len(fast.body) == sum(writes)


def test_fast_propfind_shares_parts_only_between_members_that_show_the_same(
    add_archive: AddArchive, url: str
) -> None:
    """Members with the same TTL, expiry, generation and refresh time share their rendered properties,
    yet one whose payload a GET verified meanwhile shows its own verdict, as wsgidav does."""
    for name in ("a.csv.sync", "b.csv.sync", "c.csv.sync"):
        add_archive(name, b"same,bytes\n", manifest=csv_manifest())
    first, _ = _fast_and_slow_propfind(url, "/", "1")
    assert first.body.count(b"<ns1:integrity>unverified</ns1:integrity>") == 3
    assert request(url, "GET", "/b.csv").status == 200
    fast, slow = _fast_and_slow_propfind(url, "/", "1")
    assert fast.body.count(b"<ns1:integrity>verified</ns1:integrity>") == 1
    assert _without_date(fast) == _without_date(slow)


@pytest.mark.parametrize("setup", ["lock", "dead-property"])
def test_fast_propfind_shows_locks_and_dead_properties(
    varied_store: Path, server: ServerHandle, setup: str
) -> None:
    """A member with a lock or a dead property (e.g. from a shared property store) is listed with it."""
    url = server.mount_url
    if setup == "lock":
        resp = request(url, "LOCK", "/report.csv", headers={"Timeout": "Second-600"}, body=LOCK_BODY)
        assert resp.status == 200, resp.body
        marker = b"opaquelocktoken"
    else:
        # A read-only store refuses PROPPATCH; dead properties come from a property store written elsewhere.
        colour = ElementTree.Element("{urn:test}colour")
        colour.text = "blue"
        value = ElementTree.tostring(colour)
        server.provider.prop_manager.write_property("/sub%20folder/", "{urn:test}colour", value)
        marker = b"blue"
    fast, slow = _fast_and_slow_propfind(url, "/", "1")
    assert marker in fast.body
    assert _without_date(fast) == _without_date(slow)


def test_listing_is_rebuilt_when_an_entry_changes(add_archive: AddArchive, store: Path, url: str) -> None:
    """A remembered listing is not reused after a swap, an addition or a removal in its folder."""
    add_archive("a.txt.sync", b"a")
    add_archive("b.txt.sync", b"b")
    first, _ = _fast_and_slow_propfind(url, "/", "1")
    commit_payload(store / "a.txt.sync", 0, b"swapped a")
    add_archive("c.txt.sync", b"c")
    (store / "b.txt.sync").unlink()
    fast, slow = _fast_and_slow_propfind(url, "/", "1")
    assert b"/b.txt<" in first.body
    assert b"/b.txt<" not in fast.body
    assert b"/c.txt<" in fast.body
    assert b"<ns0:getcontentlength>9</ns0:getcontentlength>" in fast.body
    assert _without_date(fast) == _without_date(slow)


@pytest.fixture
def consumer_server(store: Path, add_archive: AddArchive, tmp_path: Path) -> Iterator[ServerHandle]:
    """mountd with a users file holding one consumer, serving ``data.txt``."""
    users = tmp_path / "users.toml"
    add_user(users, "reader", Role.CONSUMER, "reader-secret")
    add_archive("data.txt.sync", b"secret payload")
    with serve_background(Settings(host="127.0.0.1", port=0), store, users=load_users(users)) as handle:
        yield handle


def test_fast_paths_still_require_credentials(consumer_server: ServerHandle) -> None:
    """Wrong or missing credentials get 401 on GET and PROPFIND; a consumer's own get the payload."""

    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"reader:{password}".encode()).decode()}

    url = consumer_server.mount_url
    good = request(url, "GET", "/data.txt", headers=basic("reader-secret"))
    assert (good.status, good.body) == (200, b"secret payload")
    learned = consumer_server.provider.index.stats.learned
    again = request(url, "GET", "/data.txt", headers=basic("reader-secret"))
    assert (again.status, again.body) == (200, b"secret payload")
    assert consumer_server.provider.index.stats.learned == learned  # answered by the fast path
    for headers in ({}, basic("wrong")):
        for method in ("GET", "HEAD", "PROPFIND"):
            path = "/" if method == "PROPFIND" else "/data.txt"
            resp = request(url, method, path, headers={**headers, "Depth": "1"})
            assert resp.status == 401, (method, headers)
            assert b"secret payload" not in resp.body


def test_a_first_listing_looks_up_no_dead_property_per_member(
    add_archive: AddArchive, server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first PROPFIND of a process, while wsgidav's empty property manager is not yet loaded, asks it
    about the folder once, not about each of its members (that was 10,000 locked look-ups after a restart)."""
    for i in range(5):
        add_archive(f"r{i}.txt.sync", b"x")
    manager = server.provider.prop_manager
    assert not getattr(manager, "_loaded", True), "the server should not have used its property manager yet"
    asked: list[str] = []
    real = manager.get_properties

    def counting(norm_url: str, environ: Any = None) -> Any:
        asked.append(norm_url)
        return real(norm_url, environ)

    monkeypatch.setattr(manager, "get_properties", counting)
    fast = request(server.mount_url, "PROPFIND", "/", headers={"Depth": "1"})
    assert fast.status == 207
    assert b"/r4.txt<" in fast.body
    assert asked == ["/"]
