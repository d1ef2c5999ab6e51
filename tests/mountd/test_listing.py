"""Listings: display names, nested folders, our live properties, collisions, and no re-opening of archives."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from dav_client import get, names, propfind, request
from store_manifests import EXPIRED, csv_manifest

import mountd.dav.resources
from mountd import PROP_EXPIRED, PROP_EXPIRES_AT, PROP_GENERATION, PROP_TTL, ArchiveIndex, ServerHandle
from mountd.errors import dav_error
from sync_format import ArchiveError, BuildResult, FileIdentity, commit_payload, open_archive
from sync_format.testing import make_archive, make_manifest

AddArchive = Callable[..., BuildResult]


def test_propfind_lists_display_names_and_nested_folders(add_archive: AddArchive, url: str) -> None:
    """Depth 1 lists archives by display name (report.csv.sync → report.csv), folders as collections."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    add_archive("data.sync", b"x", manifest=make_manifest(display_ext="xlsx", ttl=2**62))
    add_archive("sub/deeper/inner.txt.sync", b"inner")
    root = propfind(url, "/")
    assert names(root) == ["data.xlsx", "report.csv", "sub/"]
    assert root["/sub/"]["{DAV:}resourcetype"] == "collection"
    report = root["/report.csv"]
    assert report["{DAV:}getcontentlength"] == "4"
    assert report["{DAV:}getcontenttype"] == "text/csv"
    assert names(propfind(url, "/sub/"), "/sub/") == ["deeper/"]
    assert names(propfind(url, "/sub/deeper/"), "/sub/deeper/") == ["inner.txt"]
    assert get(url, "/sub/deeper/inner.txt").body == b"inner"


def test_listing_carries_our_live_properties(add_archive: AddArchive, store: Path, url: str) -> None:
    """Archives in a listing carry ttl, expires-at, expired and generation in the urn:sync namespace."""
    add_archive("old.txt.sync", manifest=EXPIRED)
    add_archive("fresh.txt.sync")
    commit_payload(store / "old.txt.sync", 0, b"newer")
    listing = propfind(url, "/")
    old, fresh = listing["/old.txt"], listing["/fresh.txt"]
    assert (old[PROP_TTL], old[PROP_EXPIRED], old[PROP_GENERATION]) == ("60", "false", "1")
    assert old["{urn:sync}last-refresh"].endswith("Z")
    assert old[PROP_EXPIRES_AT].endswith("Z")
    assert (fresh[PROP_EXPIRES_AT], fresh[PROP_EXPIRED], fresh[PROP_GENERATION]) == ("never", "false", "0")
    assert "{urn:sync}last-refresh" not in fresh


def test_depth_zero_propfind_of_an_archive_answers_from_its_snapshot(
    add_archive: AddArchive, url: str
) -> None:
    """PROPFIND Depth 0 of one archive reports its size, type, strong ETag and generation."""
    built = add_archive("report.csv.sync", b"1,2,3\n", manifest=csv_manifest())
    listing = propfind(url, "/report.csv", depth="0")
    props = listing["/report.csv"]
    assert props["{DAV:}getcontentlength"] == "6"
    assert props["{DAV:}getetag"] == f'"{built.payload.blake3}"'
    assert props[PROP_GENERATION] == "0"


def test_colliding_display_names_show_one_archive_deterministically(
    add_archive: AddArchive, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When two archives share a display name, the one named name.sync wins (else the first by file name),
    a folder beats both, every GET agrees with the listing, and the collision is logged once."""
    add_archive("data.txt.sync", b"direct")  # display_ext txt: data.txt
    add_archive("data.sync", b"indirect")  # display_ext txt: data.txt too, sorts first
    add_archive("x.sync", b"first", manifest=make_manifest(display_ext="tar.gz", ttl=2**62))  # x.tar.gz
    add_archive("x.tar.sync", b"second", manifest=make_manifest(display_ext="gz", ttl=2**62))  # x.tar.gz
    add_archive("dir.txt/inside.txt.sync")
    add_archive("dir.sync", b"hidden by the folder")  # dir.txt, same as the folder
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        first = names(propfind(url, "/"))
        second = names(propfind(url, "/"))
    assert first == second == ["data.txt", "dir.txt/", "x.tar.gz"]
    assert get(url, "/data.txt").body == b"direct"
    assert get(url, "/x.tar.gz").body == b"first"
    folder = get(url, "/dir.txt/")  # the folder (HTML browser), not the archive
    assert folder.headers["content-type"].startswith("text/html")
    collisions = [r for r in caplog.records if "collision" in r.getMessage()]
    assert len(collisions) == 3


def test_propfind_twice_over_200_archives_opens_each_once(
    add_archive: AddArchive, server: ServerHandle, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Depth-1 PROPFINDs over 200 archives open each archive once in all (by the index)."""
    for i in range(200):
        add_archive(f"a{i:03d}.txt.sync", f"payload {i}".encode())
    resource_opens: list[Path] = []
    original = mountd.dav.resources.open_archive

    def counting(path: Path) -> object:
        resource_opens.append(path)
        return original(path)

    monkeypatch.setattr(mountd.dav.resources, "open_archive", counting)
    assert len(names(propfind(url, "/"))) == 200
    assert server.provider.index.stats.opens == 200
    assert len(names(propfind(url, "/"))) == 200
    stats = server.provider.index.stats
    assert stats.opens == 200
    assert stats.hits >= 200
    assert resource_opens == []


def test_a_swapped_archive_is_reopened_once_and_relisted(
    add_archive: AddArchive, server: ServerHandle, store: Path, url: str
) -> None:
    """After a swap the next listing opens that one archive again and shows its new size and generation."""
    add_archive("a.txt.sync", b"one")
    add_archive("b.txt.sync", b"two")
    propfind(url, "/")
    commit_payload(store / "a.txt.sync", 0, b"three!")
    listing = propfind(url, "/")
    assert listing["/a.txt"]["{DAV:}getcontentlength"] == "6"
    assert listing["/a.txt"][PROP_GENERATION] == "1"
    assert server.provider.index.stats.opens == 3


def test_hidden_and_temp_files_and_symlinks_are_not_listed(
    add_archive: AddArchive, store: Path, url: str
) -> None:
    """Hidden names, non-archive files and symlinks (even to valid archives) are neither listed nor served."""
    add_archive("shown.txt.sync")
    add_archive(".hidden.txt.sync")
    (store / "notes.txt").write_text("not an archive")
    (store / "link.txt.sync").symlink_to(store / "shown.txt.sync")
    (store / "linkdir").symlink_to(store)
    assert names(propfind(url, "/")) == ["shown.txt"]
    assert get(url, "/link.txt").status == 404
    assert get(url, "/linkdir/shown.txt").status == 404
    assert request(url, "PROPFIND", "/linkdir/", headers={"Depth": "1"}).status == 404


def test_a_symlink_swapped_in_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    """A listing opens the regular files its scan found; a local user may rename a symlink to an archive
    elsewhere (one they cannot read) over such a name in between: the open refuses the symlink instead of
    describing, in the listing, the archive it points to. So does the resolution of a request."""
    store, elsewhere = tmp_path / "store", tmp_path / "private"
    store.mkdir()
    elsewhere.mkdir()
    hidden = make_archive(elsewhere / "secret.csv.sync", b"private,rows\n", manifest=csv_manifest()).path
    name = store / "report.csv.sync"
    make_archive(name, b"a,b\n", manifest=csv_manifest())
    identity = FileIdentity.from_stat(os.lstat(name))
    name.unlink()
    name.symlink_to(hidden)
    index = ArchiveIndex(watcher=False)
    with pytest.raises(ArchiveError, match="cannot open"):
        open_archive(name, follow_symlinks=False)
    assert index.facts_of(name, identity) is None  # opened through the symlink, it would be the hidden one
    with pytest.raises(ArchiveError, match="cannot open") as refused:
        mountd.dav.resources.ArchiveResource("/report.csv", {"wsgidav.provider": None}, name, "report.csv")
    assert dav_error(refused.value, "report.csv").value == 404  # what the request gets: not a 500


def test_a_name_that_is_not_utf8_is_skipped_not_fatal_to_its_folder(
    add_archive: AddArchive, store: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file or folder whose name is not UTF-8 (a local user's ``b"bad\\xff"``) cannot be named by a URL; it
    is left out of listings, pages and walks with one log line, and its folder lists as before (every
    listing of that folder was a 500)."""
    shown = add_archive("sub/shown.txt.sync").path
    os.link(shown, os.fsencode(shown.parent) + b"/bad\xff.txt.sync")
    os.mkdir(os.fsencode(shown.parent) + b"/dir\xfe")
    with caplog.at_level(logging.WARNING, logger="mountd.dav.index"):
        for _ in range(2):
            assert names(propfind(url, "/sub/")) == ["shown.txt", "sub/"]  # (and the folder itself)
            fast = request(url, "PROPFIND", "/sub/", headers={"Depth": "1"})
            assert fast.status == 207
            assert b"bad" not in fast.body
            page = get(url, "/sub/", Accept="text/html")
            assert page.status == 200
            assert b"shown.txt" in page.body
    skipped = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(skipped) == 2  # once per name
    assert any("bad\\xff.txt.sync" in line for line in skipped)
