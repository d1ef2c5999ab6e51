"""The facts index on disk: restarts list without opening, changed files never get stale facts, and a
foreign, corrupt or shared index file is refused, rebuilt or shared safely."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import wait_for

from broker import Settings
from mountd.app import open_facts_store
from mountd.dav import facts as facts_module
from mountd.dav import facts_store
from mountd.dav.facts_store import DB_NAME, DIR_NAME, FactsStore
from mountd.dav.index import ArchiveIndex, DirectoryListing
from sync_format.testing import make_archive, make_manifest

LATER_NS = 10 * 1_000_000_000
CSV = make_manifest(content_type="text/csv", display_ext="csv", created_at="2026-01-01T00:00:00Z", ttl=2**62)
TSV = make_manifest(content_type="text/tsv", display_ext="tsv", created_at="2026-01-01T00:00:00Z", ttl=2**62)


def later() -> int:
    """A clock 10 s ahead: every file written by the test counts as old enough to record."""
    return time.time_ns() + LATER_NS


def listed(
    cache: Path, directory: Path, clock: Callable[[], int] = later
) -> tuple[DirectoryListing, ArchiveIndex]:
    """List ``directory`` with a new index over the store in ``cache`` (a restarted mountd), then close it."""
    index = ArchiveIndex(store=FactsStore.open(cache), clock=clock)
    try:
        return index.list_directory(directory), index
    finally:
        index.close()


def types(listing: DirectoryListing) -> dict[str, str]:
    return {name: a.facts.content_type for name, a in listing.archives.items()}


def rows(cache: Path) -> int:
    with sqlite3.connect(cache / DIR_NAME / DB_NAME) as db:
        (count,) = db.execute("SELECT count(*) FROM facts").fetchone()
    return int(count)


def rewrite(path: Path, data: bytes, *, in_place: bool) -> None:
    """Replace ``path``'s bytes keeping its size and mtime (``os.utime`` back), in place or as a new inode;
    returns once its ctime moved (a coarse clock can leave it unchanged within one tick)."""
    before = os.stat(path)

    def once() -> bool:
        if in_place:
            with path.open("r+b") as out:
                out.write(data)
        else:
            tmp = path.with_name(".tmp-rewrite")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return os.stat(path).st_ctime_ns != before.st_ctime_ns

    wait_for(once, 5, what="ctime to move")
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if in_place:
        assert after.st_ino == before.st_ino


def test_a_restart_lists_from_the_index_without_opening(store: Path, tmp_path: Path) -> None:
    """A second index over the same cache dir answers every unchanged archive from disk: nothing is opened."""
    for i in range(5):
        make_archive(store / f"r{i}.csv.sync", b"1,2\n", manifest=CSV)
    first, index = listed(tmp_path / "cache", store)
    assert index.stats.opens == 5
    second, index = listed(tmp_path / "cache", store)
    assert (index.stats.opens, index.stats.restored) == (0, 5)
    assert [a.facts for a in second.archives.values()] == [a.facts for a in first.archives.values()]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "new-inode"])
def test_a_same_size_same_mtime_rewrite_is_never_described_by_old_facts(
    store: Path, tmp_path: Path, in_place: bool
) -> None:
    """Rewriting an archive with another of the same size and putting its mtime back changes its facts."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    make_archive(tmp_path / "other.sync", b"1,2\n", manifest=TSV)
    other = (tmp_path / "other.sync").read_bytes()
    assert len(other) == path.stat().st_size
    assert types(listed(tmp_path / "cache", store)[0]) == {"r.csv": "text/csv"}
    rewrite(path, other, in_place=in_place)
    after, index = listed(tmp_path / "cache", store)
    assert types(after) == {"r.tsv": "text/tsv"}
    assert index.stats.opens == 1


def test_a_torn_rewrite_is_never_described_by_old_facts(store: Path, tmp_path: Path) -> None:
    """Half of another archive written over one (mtime put back) is opened again, never answered from disk."""
    path = store / "r.sync"
    make_archive(path, b"1,2\n", manifest=CSV)
    make_archive(tmp_path / "other.sync", b"1,2\n", manifest=TSV)
    other = (tmp_path / "other.sync").read_bytes()
    listed(tmp_path / "cache", store)
    rewrite(path, other[: len(other) // 2], in_place=True)
    after, index = listed(tmp_path / "cache", store)
    assert "text/csv" not in types(after).values()
    assert index.stats.opens + index.stats.unreadable >= 1
    assert index.stats.restored == 0


def test_a_version_younger_than_the_racy_window_is_recorded_only_later(store: Path, tmp_path: Path) -> None:
    """Facts of a file changed within ``RACY_NS`` of the listing are not recorded then, but by a later listing
    once the version is old enough, and only if it was not written since."""
    make_archive(store / "r.sync", manifest=CSV)
    now = [time.time_ns()]
    index = ArchiveIndex(store=FactsStore.open(tmp_path / "cache"), clock=lambda: now[0])
    try:
        index.list_directory(store)
        assert index.store is not None
        index.store.flush()
        assert rows(tmp_path / "cache") == 0
        now[0] += LATER_NS
        index.list_directory(store)
        index.store.flush()
        assert rows(tmp_path / "cache") == 1
    finally:
        index.close()


def test_garbage_in_place_of_the_database_is_rebuilt(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database file of random bytes is logged, replaced by an empty index, and listings stay right."""
    make_archive(store / "r.sync", manifest=CSV)
    directory = tmp_path / "cache" / DIR_NAME
    directory.mkdir(parents=True, mode=0o700)
    (directory / DB_NAME).write_bytes(os.urandom(8192))
    (directory / DB_NAME).chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="mountd.dav.facts_store"):
        listing, _ = listed(tmp_path / "cache", store)
    assert "facts index corrupt" in caplog.text
    assert types(listing) == {"r.csv": "text/csv"}
    assert rows(tmp_path / "cache") == 1


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload_size", -1),
        ("ctype", "text/csv\r\nX-Evil: 1"),
        ("ext", "csv/../x"),
        ("etag", '"x'),
        ("etag", "x\x00y"),
        ("etag", ""),
        ("logic", 2),
        ("payload_size", 99999),
        ("ext", b"csv"),
        ("modified", "yesterday"),
        ("modified", float("inf")),
        ("generation", 1.5),
        ("at_ns", "soon"),
        ("crc", 2**32),
        ("updated_at", 7),
    ],
    ids=[
        "negative",
        "header-injection",
        "path-in-extension",
        "quote-in-etag",
        "nul-in-etag",
        "empty-etag",
        "int-as-bool",
        "past-eof",
        "blob-as-text",
        "text-as-time",
        "infinite-time",
        "real-as-int",
        "text-as-expiry",
        "crc-too-big",
        "int-as-text",
    ],
)
def test_a_bad_row_under_the_right_key_is_a_miss(
    store: Path, tmp_path: Path, column: str, value: object
) -> None:
    """A row under the file's key with a value the writer never writes is ignored: the archive is opened."""
    assert column in facts_store.FACT_COLUMNS
    path = store / "r.sync"
    make_archive(path, manifest=CSV)
    listed(tmp_path / "cache", store)
    with sqlite3.connect(tmp_path / "cache" / DIR_NAME / DB_NAME) as db:
        assert db.execute(f"UPDATE facts SET {column} = ?", (value,)).rowcount == 1  # noqa: S608  (a fixed name)
    listing, index = listed(tmp_path / "cache", store)
    assert (index.stats.opens, index.stats.restored) == (1, 0)
    assert types(listing) == {"r.csv": "text/csv"}


def test_a_good_row_is_restored_exactly(store: Path, tmp_path: Path) -> None:
    """What a restart reads back from the index equals what opening the archive gives, field by field."""
    assert facts_module._SETTERS is not None  # restored by setting the slots, not through the constructor
    make_archive(store / "r.sync", manifest=make_manifest(content_type="text/csv", display_ext="csv", ttl=60))
    first, _ = listed(tmp_path / "cache", store)
    second, index = listed(tmp_path / "cache", store)
    assert index.stats.restored == 1
    assert second.archives["r.csv"].facts == first.archives["r.csv"].facts


def test_a_directory_writable_by_others_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An index directory that group or others may write is not used (anyone could plant facts)."""
    directory = tmp_path / "cache" / DIR_NAME
    directory.mkdir(parents=True)
    directory.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="mountd.dav.facts_store"):
        assert FactsStore.open(tmp_path / "cache") is None
    assert "writable by group or others" in caplog.text


def test_a_database_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An index directory or file owned by another uid is not used."""
    store = FactsStore.open(tmp_path / "cache")
    assert store is not None
    store.close()
    monkeypatch.setattr(facts_store.os, "geteuid", lambda: os.getuid() + 1)
    with caplog.at_level(logging.WARNING, logger="mountd.dav.facts_store"):
        assert FactsStore.open(tmp_path / "cache") is None
    assert "not by us" in caplog.text


def test_a_world_writable_database_file_is_refused(tmp_path: Path) -> None:
    """The database file itself must not be writable by others either."""
    store = FactsStore.open(tmp_path / "cache")
    assert store is not None
    store.close()
    (tmp_path / "cache" / DIR_NAME / DB_NAME).chmod(0o666)
    assert FactsStore.open(tmp_path / "cache") is None


def test_the_index_is_bounded(store: Path, tmp_path: Path) -> None:
    """No more than ``max_rows`` rows are kept."""
    for i in range(8):
        make_archive(store / f"r{i}.sync", manifest=CSV)
    index = ArchiveIndex(store=FactsStore.open(tmp_path / "cache", max_rows=3), clock=later)
    index.list_directory(store)
    index.close()
    assert rows(tmp_path / "cache") == 3


WRITER = """
import sys, time
from pathlib import Path
from mountd.dav.facts_store import FactsStore
from mountd.dav.index import ArchiveIndex
index = ArchiveIndex(store=FactsStore.open(Path(sys.argv[1])), clock=lambda: time.time_ns() + 10**10)
for _ in range(3):
    for directory in sys.argv[2:]:
        index.list_directory(Path(directory))
        index.store.flush()
        ArchiveIndex(store=index.store).list_directory(Path(directory))
index.close()
"""


def test_mountd_processes_share_one_index(store: Path, tmp_path: Path) -> None:
    """Several processes listing (and recording into) the same index at once leave it whole and right."""
    for part in ("a", "b", "c"):
        for i in range(30):
            make_archive(store / part / f"r{i}.sync", manifest=CSV if part != "b" else TSV)
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(cache), *(str(store / p) for p in order)])
        for order in ("abc", "cba", "bca")
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    assert rows(cache) == 90
    for part in ("a", "b", "c"):
        listing, index = listed(cache, store / part)
        assert (index.stats.opens, index.stats.restored) == (0, 30)
        assert set(types(listing).values()) == {"text/tsv" if part == "b" else "text/csv"}


def test_settings_decide_whether_facts_persist(tmp_path: Path) -> None:
    """``facts_index=False`` and settings without a cache dir keep facts in memory only."""
    assert open_facts_store(Settings(cache_dir=tmp_path, facts_index=False)) is None
    assert open_facts_store(Settings()) is None
    store = open_facts_store(Settings(cache_dir=tmp_path))
    assert store is not None
    store.close()
    assert (tmp_path / DIR_NAME / DB_NAME).is_file()
    assert Settings.from_env(env={"SYNC_FACTS_INDEX": "0"}).facts_index is False


def test_two_names_of_one_inode_are_both_restored(store: Path, tmp_path: Path) -> None:
    """An archive hard-linked under a second name in the same folder is answered from disk under both."""
    make_archive(store / "a.sync", manifest=CSV)
    os.link(store / "a.sync", store / "b.sync")
    first, _ = listed(tmp_path / "cache", store)
    second, index = listed(tmp_path / "cache", store)
    assert (index.stats.opens, index.stats.restored) == (0, 2)
    assert sorted(second.archives) == ["a.csv", "b.csv"]
    assert [a.facts for a in second.archives.values()] == [a.facts for a in first.archives.values()]
