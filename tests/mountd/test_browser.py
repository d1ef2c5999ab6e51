"""A browser opening a folder gets a freshness table; WebDAV clients and file reads are left to wsgidav."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from dav_client import Response, get, names, propfind, request
from recording_hook import RecordingHook
from store_manifests import EXPIRED, NEVER_EXPIRES, csv_manifest

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.http.browser import accepts_html, format_duration, format_size
from sync_format import BuildResult, commit_payload
from sync_format.testing import make_archive, make_manifest

AddArchive = Callable[..., BuildResult]
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what Firefox sends
#: When the fresh archives were made: their hour of TTL runs out long after any test.
FRESH_FROM = "2099-01-01T00:00:00Z"
FRESH = make_manifest(created_at=FRESH_FROM, ttl=3600)


@dataclass
class Page:
    """What a folder page shows: its links, and the table's rows as cell texts."""

    links: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._href: str | None = None
        self._text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []
        elif tag == "tr":
            self.page.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.page.links.append((self._href, "".join(self._text)))
            self._href = None
        elif tag == "td" and self._cell is not None:
            self.page.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def page_of(response: Response) -> Page:
    """Parse a folder page (after checking it is one)."""
    assert response.status == 200, (response.status, response.body[:300])
    assert response.header("content-type") == "text/html; charset=utf-8"
    parser = _PageParser()
    parser.feed(response.body.decode())
    parser.page.rows = [row for row in parser.page.rows if row]  # the header row has th cells only
    return parser.page


def test_a_folder_page_shows_each_archive_with_its_freshness(
    add_archive: AddArchive, store: Path, server: ServerHandle, url: str, hook: RecordingHook
) -> None:
    """The page lists folders first, then archives by display name with size, type, last refresh, expiry,
    generation and TTL, from the listing cache: no archive is opened twice and no refresh is asked for."""
    add_archive("reports/2024/old.txt.sync")
    add_archive(
        "reports/daily.csv.sync", b"a,b\n1,2\n", manifest=csv_manifest(ttl=3600, created_at=FRESH_FROM)
    )
    add_archive("reports/stale.txt.sync", b"stale", manifest=EXPIRED)
    add_archive("reports/forever.txt.sync", b"x" * 3000)
    fresh = add_archive("reports/fresh.txt.sync", b"old", manifest=FRESH).path
    commit = commit_payload(fresh, 0, b"refreshed")
    page = page_of(get(url, "/reports/", Accept=HTML))
    rows = {row[0]: row[1:] for row in page.rows}
    assert list(rows) == ["2024/", "daily.csv", "forever.txt", "fresh.txt", "stale.txt"]
    assert rows["2024/"] == ["", "folder", "", "", "", ""]
    assert rows["daily.csv"][:2] == ["8 bytes", "text/csv"]
    assert rows["daily.csv"][3:] == ["2099-01-01T01:00:00Z", "0", "1 h"]
    assert rows["forever.txt"] == ["2.9 KiB", "text/plain", "not yet", "never", "0", "unbounded"]
    assert rows["stale.txt"] == [
        "5 bytes",
        "text/plain",
        "not yet",
        "expired (2020-01-01T00:01:00Z)",
        "0",
        "1 min",
    ]
    assert rows["fresh.txt"][:3] == ["9 bytes", "text/plain", commit.state.updated_at]
    assert rows["fresh.txt"][4:] == ["1", "1 h"]
    assert ("/", "\u2191 Parent folder") in page.links
    opens = server.provider.index.stats.opens
    assert opens == 4  # the folder's own archives, once each; nothing in 2024/
    page_of(get(url, "/reports/", Accept=HTML))
    assert server.provider.index.stats.opens == opens
    assert hook.calls == []


def test_a_row_follows_its_archive_from_one_page_to_the_next(add_archive: AddArchive, url: str) -> None:
    """Rows are rendered once and remembered (``BrowserView``): the next page still shows a refresh that
    committed in between, an expiry that passed in between, and the same rows for what did not change."""

    def rows() -> dict[str, list[str]]:
        return {row[0]: row[1:] for row in page_of(get(url, "/", Accept=HTML)).rows}

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    add_archive("soon.txt.sync", b"soon", manifest=make_manifest(created_at=created, ttl=3))
    add_archive("same.txt.sync", b"same", manifest=FRESH)
    fresh = add_archive("fresh.txt.sync", b"old", manifest=FRESH).path
    first = get(url, "/", Accept=HTML).body.decode()
    before = rows()
    assert before["fresh.txt"][2:] == ["not yet", "2099-01-01T01:00:00Z", "0", "1 h"]
    assert not before["soon.txt"][3].startswith("expired")
    commit = commit_payload(fresh, 0, b"refreshed")
    deadline = time.monotonic() + 10
    while not rows()["soon.txt"][3].startswith("expired") and time.monotonic() < deadline:
        time.sleep(0.2)
    later = get(url, "/", Accept=HTML).body.decode()
    after = rows()
    assert after["soon.txt"][3].startswith("expired (")
    assert after["fresh.txt"][:3] == ["9 bytes", "text/plain", commit.state.updated_at]
    assert after["fresh.txt"][4] == "1"
    same = [line for line in first.splitlines() if "same.txt" in line]
    assert same == [line for line in later.splitlines() if "same.txt" in line]


def test_a_hostile_file_name_shows_as_text(add_archive: AddArchive, url: str) -> None:
    """An archive called ``<script>.csv.sync`` is listed as the text ``<script>.csv`` with an encoded link
    that serves its payload, and the page may not run scripts at all."""
    add_archive("<script>.csv.sync", b"a,b\n", manifest=csv_manifest())
    add_archive("a&b\"'.txt.sync", b"amp")
    response = get(url, "/", Accept=HTML)
    body = response.body.decode()
    assert "<script>" not in body
    assert "&lt;script&gt;.csv" in body
    page = page_of(response)
    assert ("/%3Cscript%3E.csv", "<script>.csv") in page.links
    assert ("/a%26b%22%27.txt", "a&b\"'.txt") in page.links
    assert get(url, "/%3Cscript%3E.csv").body == b"a,b\n"
    assert get(url, "/a%26b%22%27.txt").body == b"amp"
    assert "script-src" not in (response.header("content-security-policy") or "")
    assert (response.header("content-security-policy") or "").startswith("default-src 'none'")


def test_links_lead_through_nested_folders_and_back(add_archive: AddArchive, url: str) -> None:
    """Following the folder links from the root reaches a nested archive, whose link serves it; each page
    links to its parent, with or without a trailing slash in the request."""
    add_archive("a/b/c/deep.txt.sync", b"deep bytes")
    path = "/"
    for folder in ("a", "b", "c"):
        page = page_of(get(url, path, Accept=HTML))
        path = {text: href for href, text in page.links}[folder + "/"]
    assert path == "/a/b/c/"
    page = page_of(get(url, "/a/b/c", Accept=HTML))  # no trailing slash: links are absolute all the same
    links = {text: href for href, text in page.links}
    assert links["\u2191 Parent folder"] == "/a/b/"
    assert get(url, links["deep.txt"]).body == b"deep bytes"


def test_webdav_requests_and_file_reads_are_left_to_wsgidav(add_archive: AddArchive, url: str) -> None:
    """PROPFIND, GETs of files (even from a browser), and GETs of folders that do not accept HTML or carry a
    WebDAV header reach wsgidav as before; ``?davmount`` and HEAD still answer for folders."""
    add_archive("docs/readme.txt.sync", b"read me")
    assert names(propfind(url, "/docs/"), "/docs/") == ["readme.txt"]
    file_read = get(url, "/docs/readme.txt", Accept=HTML)
    assert (file_read.status, file_read.body, file_read.header("content-type")) == (
        200,
        b"read me",
        "text/plain",
    )
    for headers in ({"Accept": "application/json"}, {"Accept": HTML, "Translate": "f"}):
        passed = request(url, "GET", "/docs/", headers=headers)
        assert passed.status == 403  # wsgidav without its browser: a collection has no GET
        assert b"<table>" not in passed.body
    mount = get(url, "/docs/?davmount")
    assert mount.header("content-type") == "application/davmount+xml"
    assert f"<dm:url>{url}/docs/</dm:url>".encode() in mount.body
    page = get(url, "/docs/", Accept=HTML)
    head = request(url, "HEAD", "/docs/", headers={"Accept": HTML})
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(page.body)))
    assert get(url, "/missing/", Accept=HTML).status == 404


def test_a_folder_page_has_no_version_banner(add_archive: AddArchive, url: str) -> None:
    """Neither the page nor its headers name wsgidav, cheroot or Python."""
    add_archive("x.txt.sync")
    response = get(url, "/", Accept=HTML)
    text = response.body.decode().lower() + " ".join(response.headers.values()).lower()
    assert not any(word in text for word in ("wsgidav", "cheroot", "python"))


def test_single_archive_mode_lists_the_one_archive(tmp_path: Path, hook: RecordingHook) -> None:
    """Serving one archive file, the root page lists just it, by display name, without a parent link."""
    archive = tmp_path / "report.csv.sync"
    make_archive(archive, b"a,b\n", manifest=csv_manifest())
    make_archive(tmp_path / "other.txt.sync", manifest=NEVER_EXPIRES)
    with serve_background(Settings(host="127.0.0.1", port=0), archive, hook) as handle:
        page = page_of(get(handle.mount_url, "/", Accept=HTML))
    assert [row[0] for row in page.rows] == ["report.csv"]
    assert [text for _, text in page.links] == ["report.csv"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, True),
        ("", True),
        ("text/html", True),
        (HTML, True),
        ("*/*", True),
        ("text/*;q=0.5", True),
        ("application/json, */*;q=0.1", True),
        ("application/json", False),
        ("application/xml, text/plain", False),
        ("text/html;q=0, */*", False),
        ("*/*;q=0", False),
        ("text/html;q=oops", False),
    ],
)
def test_accept_decides_whether_html_may_answer(accept: str | None, expected: bool) -> None:
    """HTML answers when the most specific Accept range matching text/html has a non-zero weight, or when
    there is no Accept header."""
    assert accepts_html(accept) is expected


def test_sizes_and_durations_read_like_people_write_them() -> None:
    """Sizes use binary units with one decimal; durations show their two largest units."""
    assert [format_size(n) for n in (0, 1023, 1536, 3 * 2**20, 2**50 * 5)] == [
        "0 bytes",
        "1023 bytes",
        "1.5 KiB",
        "3.0 MiB",
        "5120.0 TiB",
    ]
    assert [format_duration(s) for s in (0, 45, 60, 3600, 5400, 90_061, 86_400 * 2)] == [
        "0 s",
        "45 s",
        "1 min",
        "1 h",
        "1 h 30 min",
        "1 d 1 h",
        "2 d",
    ]
