"""``ownership.write_allowed = false`` against every way a WebDAV client could replace or remove an archive,
on a real writable mountd on 127.0.0.1 (the loopback caller is an owner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dav_client import request
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import serve_background
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, open_archive

AddArchive = Callable[..., BuildResult]
PROTECTED = b"published,figures\n1,2\n"


@pytest.fixture
def wurl(store: Path, hook: RecordingHook, add_archive: AddArchive) -> Iterator[str]:
    """A writable mountd whose store holds ``a.csv`` and ``dir/b.csv``, both write-protected."""
    add_archive("a.csv.sync", PROTECTED, manifest=csv_manifest())
    add_archive("dir/b.csv.sync", PROTECTED, manifest=csv_manifest())
    policy = WritePolicy(store, max_upload=1 << 20)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        yield handle.mount_url


def _payload(archive: Path) -> bytes:
    with open_archive(archive) as snapshot:
        return snapshot.read_payload()


def _destination(url: str, path: str) -> dict[str, str]:
    return {"Destination": url + path, "Overwrite": "T"}


def test_put_move_and_copy_onto_a_protected_archive_are_refused(wurl: str, store: Path) -> None:
    """PUT over it, and MOVE/COPY of another file onto it with Overwrite: T, answer 403; bytes unchanged."""
    assert request(wurl, "PUT", "/draft.csv", body=b"evil\n").status == 201
    assert request(wurl, "PUT", "/a.csv", body=b"evil\n").status == 403
    assert request(wurl, "MOVE", "/draft.csv", headers=_destination(wurl, "/a.csv")).status in (403, 207)
    assert request(wurl, "COPY", "/draft.csv", headers=_destination(wurl, "/a.csv")).status in (403, 207)
    assert _payload(store / "a.csv.sync") == PROTECTED
    assert (store / "draft.csv.sync").exists()


def test_delete_and_move_away_of_a_protected_archive_are_refused(wurl: str, store: Path) -> None:
    """DELETE (then PUT) and MOVE of the archive to another name are refused; COPY from it is allowed."""
    assert request(wurl, "DELETE", "/a.csv").status == 403
    assert request(wurl, "PUT", "/a.csv", body=b"evil\n").status == 403
    assert request(wurl, "MOVE", "/a.csv", headers=_destination(wurl, "/moved.csv")).status == 403
    assert _payload(store / "a.csv.sync") == PROTECTED
    assert not (store / "moved.csv.sync").exists()
    assert request(wurl, "COPY", "/a.csv", headers=_destination(wurl, "/copy.csv")).status == 201
    assert _payload(store / "copy.csv.sync") == PROTECTED


def test_folders_holding_a_protected_archive_are_neither_deleted_nor_moved(wurl: str, store: Path) -> None:
    """DELETE of the folder leaves the protected archive (207 or 403); MOVE of the folder is refused."""
    assert request(wurl, "PUT", "/dir/free.csv", body=b"x\n").status == 201
    assert request(wurl, "MOVE", "/dir/", headers=_destination(wurl, "/elsewhere/")).status == 403
    assert request(wurl, "DELETE", "/dir/").status in (207, 403)
    assert _payload(store / "dir" / "b.csv.sync") == PROTECTED
    assert not (store / "elsewhere").exists()
