"""The listing cache and the facts it holds, without a server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from rewrites import rewrite_in_place
from store_manifests import csv_manifest

from mountd import ArchiveFacts, ArchiveIndex, derive_etag
from mountd.dav import index as index_module
from mountd.dav.index import _child_paths
from sync_format import BuildResult, FileIdentity, open_archive
from sync_format.testing import make_archive, make_manifest

AddArchive = Callable[..., BuildResult]


def test_facts_come_from_the_snapshot(add_archive: AddArchive) -> None:
    """Facts carry the manifest's type and extension, the payload size and BLAKE3, and the generation."""
    built = add_archive("report.csv.sync", b"1,2\n", manifest=csv_manifest())
    with open_archive(built.path) as snapshot:
        facts = ArchiveFacts.from_snapshot(snapshot)
    assert (facts.content_type, facts.display_ext, facts.payload_size) == ("text/csv", "csv", 4)
    assert facts.etag == built.payload.blake3
    assert facts.generation == 0
    assert facts.last_modified == 1767225600.0  # created_at 2026-01-01T00:00:00Z
    assert not facts.is_expired()


def test_last_modified_is_never_later_than_the_file(add_archive: AddArchive) -> None:
    """A manifest dated in the future gives the file's mtime as Last-Modified, not the future date."""
    built = add_archive("future.txt.sync", manifest=make_manifest(created_at="2099-01-01T00:00:00Z"))
    with open_archive(built.path) as snapshot:
        facts = ArchiveFacts.from_snapshot(snapshot)
    assert facts.last_modified == os.stat(built.path).st_mtime_ns / 1_000_000_000


def test_derived_etag_changes_with_identity_and_crc() -> None:
    """The fallback ETag changes with inode, mtime, size or payload CRC-32, and never looks like BLAKE3."""
    base = FileIdentity(1, 2, 3, 4, 5)
    tags = {
        derive_etag(base, 5),
        derive_etag(FileIdentity(1, 9, 3, 4, 5), 5),
        derive_etag(FileIdentity(1, 2, 9, 4, 5), 5),
        derive_etag(FileIdentity(1, 2, 3, 9, 5), 5),
        derive_etag(base, 6),
    }
    assert len(tags) == 5
    assert all(len(tag) != 64 and '"' not in tag for tag in tags)


def test_a_renamed_archive_lists_under_its_new_name(add_archive: AddArchive, store: Path) -> None:
    """A rename keeps inode, mtime and size; the listing shows the new display name, at the cost of at most
    one more open (the rename moves the ctime on most file systems, and the ctime is part of the identity)."""
    add_archive("old.txt.sync")
    index = ArchiveIndex()
    assert list(index.list_directory(store).archives) == ["old.txt"]
    os.rename(store / "old.txt.sync", store / "new.txt.sync")
    assert list(index.list_directory(store).archives) == ["new.txt"]
    assert index.stats.opens <= 2


def test_a_same_size_rewrite_with_the_mtime_put_back_is_opened_again(store: Path, tmp_path: Path) -> None:
    """An archive rewritten in place with another of the same size, its mtime restored, is described by the
    new facts in the same index (only its ctime moved), not by the ones remembered for the old bytes."""
    csv = make_manifest(content_type="text/csv", display_ext="csv")
    tsv = make_manifest(content_type="text/tsv", display_ext="tsv")
    make_archive(store / "r.sync", b"1,2\n", manifest=csv)
    make_archive(tmp_path / "o.sync", b"1,2\n", manifest=tsv)
    index = ArchiveIndex()
    assert {n: a.facts.content_type for n, a in index.list_directory(store).archives.items()} == {
        "r.csv": "text/csv"
    }
    rewrite_in_place(store / "r.sync", (tmp_path / "o.sync").read_bytes())
    listing = index.list_directory(store)
    assert {n: a.facts.content_type for n, a in listing.archives.items()} == {"r.tsv": "text/tsv"}
    identity = listing.archives["r.tsv"].facts.identity
    assert index.cached(identity) is listing.archives["r.tsv"].facts
    assert index.stats.opens == 2


def test_unreadable_archive_is_opened_and_logged_once_per_version(
    store: Path, add_archive: AddArchive, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed archive is opened and logged once; when it is replaced by a valid one it shows up."""
    (store / "bad.txt.sync").write_bytes(b"PK\x03\x04 but not really")
    index = ArchiveIndex()
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        for _ in range(3):
            assert dict(index.list_directory(store).archives) == {}
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    assert index.stats.unreadable == 1
    add_archive("bad.txt.sync", b"fixed")
    assert list(index.list_directory(store).archives) == ["bad.txt"]


def test_an_unexpected_error_opening_one_archive_leaves_it_out_not_its_folder(
    store: Path, add_archive: AddArchive, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader bug met by one file (any exception that is not an ``ArchiveError``) leaves that archive out
    of the listing, remembered as unreadable for its version and logged with its traceback, and lists the
    rest; before, the exception failed the whole listing."""
    add_archive("good.txt.sync", b"fine")
    add_archive("trips.txt.sync", b"a bug")
    real_open = index_module.open_archive_at

    def buggy_open(folder: int, name: str, path: object) -> object:
        if name == "trips.txt.sync":
            raise RecursionError("maximum recursion depth exceeded")
        return real_open(folder, name, path)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module, "open_archive_at", buggy_open)
    index = ArchiveIndex(parallel_min=10**9)
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        assert list(index.list_directory(store).archives) == ["good.txt"]
        assert list(index.list_directory(store).archives) == ["good.txt"]
    failed = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert index.stats.unreadable == 1


def test_an_unreadable_directory_lists_as_empty(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory that cannot be scanned (here: gone) lists as empty instead of failing the request."""
    index = ArchiveIndex()
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        listing = index.list_directory(store / "missing")
    assert (listing.folders, dict(listing.archives)) == ((), {})
    assert any("directory unreadable" in r.getMessage() for r in caplog.records)


def test_the_cache_is_bounded(add_archive: AddArchive, store: Path) -> None:
    """Beyond its bound the index forgets the least recently used versions and opens them again."""
    for name in ("a", "b", "c"):
        add_archive(f"{name}.txt.sync")
    index = ArchiveIndex(max_entries=2)
    index.list_directory(store)
    index.list_directory(store)
    # The first listing keeps b and c; the second looks all three up first and opens only a again.
    assert index.stats.opens == 4
    with pytest.raises(ValueError, match="max_entries"):
        ArchiveIndex(max_entries=0)


@pytest.mark.parametrize(
    "name", ["a.sync", "odd & <name> 'q' \"d\" é.txt.sync", "-x.sync", "sp ace.sync", "ü" * 40]
)
def test_child_paths_are_the_joined_paths(tmp_path: Path, name: str) -> None:
    """The listing's cheap ``directory / name`` gives the same path, text and name as the operator."""
    for directory in (tmp_path, tmp_path / "sub dir", Path("relative/dir"), Path("/")):
        made = _child_paths(directory)(name)
        joined = directory / name
        assert (made, str(made), made.name, made.parent, type(made)) == (
            joined,
            str(joined),
            joined.name,
            joined.parent,
            type(joined),
        )


def test_a_folder_alone_hides_the_archive_of_its_name(
    add_archive: AddArchive, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no two archives sharing a name, an archive whose display name is a subdirectory's is still left
    out (and logged), and every other archive is listed under its own name."""
    add_archive("dir.sync")  # display_ext txt: dir.txt
    add_archive("other.sync")
    (store / "dir.txt").mkdir()
    with caplog.at_level("WARNING", logger="mountd.dav.index"):
        listing = ArchiveIndex().list_directory(store)
    assert listing.folders == ("dir.txt",)
    assert list(listing.archives) == ["other.txt"]
    assert listing.archives["other.txt"].path == store / "other.sync"
    assert any("collision" in r.getMessage() and "dir.txt" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["r.sync", "a b.sync", "ü-x.sync", "a\\b.sync", "-.sync", "x..sync"])
def test_listed_paths_are_the_joined_paths(store: Path, name: str) -> None:
    """Each listed archive's path equals ``directory / file name`` (built without re-parsing the name)."""
    make_archive(store / name, manifest=csv_manifest())
    [listed] = ArchiveIndex().list_directory(store).archives.values()
    assert listed.path == store / name
    assert str(listed.path) == str(store / name)
    assert listed.path.name == name
    assert type(listed.path) is type(store / name)
