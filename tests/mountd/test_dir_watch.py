"""Directory watches: a warm listing skips the scan of an unchanged folder, and every change that matters
still shows, whether the watch reports it or the index checks the file itself."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rewrites import rewrite_in_place
from support import wait_for

from mountd.dav import index as index_module
from mountd.dav.dir_watch import REVERIFY_NS, DirectoryWatcher, trusted
from mountd.dav.index import ArchiveIndex, DirectoryListing
from sync_format import commit_payload, open_archive
from sync_format.testing import make_archive, make_manifest

CSV = make_manifest(content_type="text/csv", display_ext="csv")
TSV = make_manifest(content_type="text/tsv", display_ext="tsv")


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories ``ArchiveIndex`` scanned (``lstat`` of every entry), in order."""
    seen: list[Path] = []
    real = index_module._scan

    def counting(
        folder: int, directory: Path
    ) -> tuple[tuple[str, ...], tuple[tuple[str, os.stat_result], ...]]:
        seen.append(directory)
        return real(folder, directory)

    monkeypatch.setattr(index_module, "_scan", counting)
    return seen


@pytest.fixture
def index() -> Iterator[ArchiveIndex]:
    """An index with its own directory watcher."""
    made = ArchiveIndex()
    yield made
    made.close()


def types(listing: DirectoryListing) -> dict[str, str]:
    return {name: a.facts.content_type for name, a in listing.archives.items()}


def write_through(view: mmap.mmap, data: bytes, path: Path) -> None:
    """Write ``data`` through a shared mapping of ``path`` (no watch sees it) until its ctime moved."""
    before = path.stat().st_ctime_ns

    def once() -> bool:
        view[:] = data
        view.flush()
        return path.stat().st_ctime_ns != before

    wait_for(once, 5, what="ctime to move")


def other_bytes(tmp_path: Path, like: Path) -> bytes:
    """An archive of another type with exactly the size of ``like``."""
    make_archive(tmp_path / "other.sync", b"1,2\n", manifest=TSV)
    data = (tmp_path / "other.sync").read_bytes()
    assert len(data) == like.stat().st_size
    return data


def test_an_unchanged_folder_is_not_scanned_again(
    store: Path, index: ArchiveIndex, scans: list[Path]
) -> None:
    """While its watch reports nothing, a folder's remembered listing answers without an ``lstat`` each."""
    for i in range(3):
        make_archive(store / f"r{i}.sync", b"1,2\n", manifest=CSV)
    first = index.list_directory(store)
    assert index.list_directory(store) is first
    assert index.list_directory(store) is first
    assert scans == [store]


def test_a_same_size_same_mtime_rewrite_on_a_new_inode_shows(
    store: Path, tmp_path: Path, index: ArchiveIndex
) -> None:
    """Another archive of the same size renamed over one, its mtime put back, is listed with its own facts."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
    before = path.stat()
    (store / ".new").write_bytes(data)
    os.utime(store / ".new", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(store / ".new", path)
    assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}


def test_an_in_place_rewrite_shows(store: Path, tmp_path: Path, index: ArchiveIndex) -> None:
    """Bytes written over an archive in place, same size, mtime put back, give new facts."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
    rewrite_in_place(path, data)
    assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}


def test_a_commit_renamed_over_an_archive_shows(store: Path, index: ArchiveIndex) -> None:
    """A refresh's commit (temp file, rename over) is listed with the new generation."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    assert index.list_directory(store).archives["r.csv"].facts.generation == 0
    commit_payload(path, 0, b"3,4\n")
    assert index.list_directory(store).archives["r.csv"].facts.generation == 1


def test_new_and_deleted_files_and_folders_show(store: Path, index: ArchiveIndex) -> None:
    """A created archive or folder is listed, a deleted one is gone."""
    make_archive(store / "a.sync", manifest=CSV)
    assert list(index.list_directory(store).archives) == ["a.csv"]
    make_archive(store / "b.sync", manifest=CSV)
    assert list(index.list_directory(store).archives) == ["a.csv", "b.csv"]
    (store / "a.sync").unlink()
    assert list(index.list_directory(store).archives) == ["b.csv"]
    (store / "sub").mkdir()
    assert index.list_directory(store).folders == ("sub",)
    (store / "sub").rmdir()
    assert index.list_directory(store).folders == ()


def test_a_folder_replaced_under_its_path_is_listed_anew(store: Path, index: ArchiveIndex) -> None:
    """A folder renamed away (itself or through a parent) and replaced by another is not answered from the
    listing of the first."""
    make_archive(store / "p" / "a" / "x.sync", manifest=CSV)
    assert list(index.list_directory(store / "p" / "a").archives) == ["x.csv"]
    os.rename(store / "p" / "a", store / "p" / "old")
    make_archive(store / "p" / "a" / "y.sync", manifest=CSV)
    assert list(index.list_directory(store / "p" / "a").archives) == ["y.csv"]
    assert list(index.list_directory(store / "p" / "a").archives) == ["y.csv"]
    os.rename(store / "p", store / "q")  # a parent: no event on the folder's own watch
    make_archive(store / "p" / "a" / "z.sync", manifest=CSV)
    assert list(index.list_directory(store / "p" / "a").archives) == ["z.csv"]


def test_a_write_through_a_hard_link_elsewhere_shows(
    store: Path, tmp_path: Path, index: ArchiveIndex
) -> None:
    """An archive with a second link in another folder (the watch cannot see writes through that one) is
    ``lstat``-ed at every listing, so an in-place rewrite through the other link shows."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    os.link(path, tmp_path / "elsewhere.sync")
    assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
    rewrite_in_place(tmp_path / "elsewhere.sync", data)
    assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}


def test_a_file_others_may_write_is_checked_at_every_listing(
    store: Path, tmp_path: Path, index: ArchiveIndex
) -> None:
    """An archive writable by others is ``lstat``-ed at every listing: a write through a shared mapping,
    which no watch reports, still shows."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    path.chmod(0o666)
    assert not trusted(path.stat())
    assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
    index.list_directory(store)  # remembered with the chmod seen
    mapped = path.open("r+b")
    try:
        with mmap.mmap(mapped.fileno(), len(data)) as view:
            mapped.close()  # the close is reported; the writes through the mapping after it are not
            assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
            write_through(view, data, path)
            assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}
    finally:
        mapped.close()


def test_a_folder_is_scanned_again_after_the_reverify_interval(store: Path, tmp_path: Path) -> None:
    """Even a change no watch reports on a file it vouches for (a shared mapping kept from before) shows once
    ``REVERIFY_NS`` passed since the folder's last scan."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    now = [time.time_ns()]
    index = ArchiveIndex(clock=lambda: now[0])
    try:
        mapped_before = path.read_bytes()
        mapped = path.open("r+b")
        with mmap.mmap(mapped.fileno(), len(data)) as view:
            mapped.close()
            assert trusted(path.stat())
            assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
            write_through(view, data, path)
            now[0] += REVERIFY_NS
            assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}
            view[:] = mapped_before
            view.flush()
            now[0] -= 1  # a wall clock set back does not extend the remembered listing's life either
            assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
    finally:
        index.close()


def test_a_full_event_queue_makes_every_folder_scan_again(
    store: Path, tmp_path: Path, index: ArchiveIndex, scans: list[Path]
) -> None:
    """When the kernel's event queue overflows (the change's own event is lost), every watched folder is
    scanned again, so a rewrite made while the queue was full still shows."""
    path = store / "a" / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    busy = store / "b"
    busy.mkdir()
    assert types(index.list_directory(store / "a")) == {"r.csv": "text/csv"}
    index.list_directory(busy)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with (busy / ".x").open("wb") as x, (busy / ".y").open("wb") as y:
        for _ in range(limit // 2 + 10):  # alternating, so the kernel cannot merge them
            x.write(b"1")
            x.flush()
            y.write(b"1")
            y.flush()
    rewrite_in_place(path, data)  # its events find the queue full
    del scans[:]
    assert types(index.list_directory(store / "a")) == {"r.tsv": "text/tsv"}
    assert scans == [store / "a"]


def test_hidden_names_do_not_cost_a_scan(store: Path, index: ArchiveIndex, scans: list[Path]) -> None:
    """Writes to names listings never show (temp files of commits) leave the remembered listing in use."""
    make_archive(store / "r.sync", manifest=CSV)
    index.list_directory(store)
    (store / ".r.sync.123.sync-tmp").write_bytes(b"x")
    index.list_directory(store)
    assert scans == [store]


@pytest.mark.parametrize(
    "watcher",
    [lambda: DirectoryWatcher(filesystems=frozenset()), lambda: False],
    ids=["file-system-not-watched", "no-watcher"],
)
def test_without_a_watch_every_listing_scans_and_stays_exact(
    store: Path, tmp_path: Path, scans: list[Path], watcher: Callable[[], DirectoryWatcher | bool]
) -> None:
    """A folder that cannot be watched (another file system type, no watcher) is scanned at every listing,
    and a same-size rewrite still shows."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    index = ArchiveIndex(watcher=watcher())
    try:
        assert types(index.list_directory(store)) == {"r.csv": "text/csv"}
        index.list_directory(store)
        rewrite_in_place(path, data)
        assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}
        assert len(scans) == 3
    finally:
        index.close()


def test_watches_are_bounded(store: Path, tmp_path: Path, scans: list[Path]) -> None:
    """No more than ``max_watches`` folders are watched; the others are scanned, and stay exact."""
    for name in ("a", "b", "c"):
        make_archive(store / name / "r.sync", b"1,2\n", manifest=CSV)
    watcher = DirectoryWatcher(max_watches=2)
    index = ArchiveIndex(watcher=watcher)
    try:
        for _ in range(2):
            for name in ("a", "b", "c"):
                index.list_directory(store / name)
        assert watcher.watched == 2
        assert len(scans) == 6  # round robin over three folders with room for two: each one scanned
        data = other_bytes(tmp_path, store / "a" / "r.sync")
        rewrite_in_place(store / "a" / "r.sync", data)
        assert types(index.list_directory(store / "a")) == {"r.tsv": "text/tsv"}
    finally:
        index.close()
    with pytest.raises(ValueError, match="max_watches"):
        DirectoryWatcher(max_watches=0)


def test_a_closed_index_scans_and_stays_exact(store: Path, tmp_path: Path) -> None:
    """After ``close`` the watches are gone; listings scan again and see changes."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    data = other_bytes(tmp_path, path)
    index = ArchiveIndex()
    index.list_directory(store)
    index.close()
    rewrite_in_place(path, data)
    assert types(index.list_directory(store)) == {"r.tsv": "text/tsv"}
    with open_archive(path) as snapshot:
        assert snapshot.manifest.sync.content_type == "text/tsv"
