"""``sync_format.beneath``: files below a root named through a descriptor of their folder, opened from the
root without following a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sync_format import ArchiveError, FolderChanged, commit_payload, open_archive
from sync_format.beneath import Pin, pinned
from sync_format.errors import display_path
from sync_format.testing import make_archive


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """``store/a/b/x.sync`` at generation 0, and beside the store ``elsewhere/x.sync`` (the same name)."""
    make_archive(tmp_path / "store" / "a" / "b" / "x.sync", b"store's")
    make_archive(tmp_path / "elsewhere" / "x.sync", b"elsewhere's")
    return tmp_path / "store"


def payload(path: Path) -> tuple[int, bytes]:
    with open_archive(path) as snap:
        return snap.generation, snap.read_payload()


def test_a_pinned_path_keeps_reaching_its_folder_whatever_is_put_in_its_place(store: Path) -> None:
    """Pinned, then the folder is renamed and a symlink to another folder put in its place: a commit through
    the pinned path replaces the archive in the folder that was opened (under its new name), never the one
    the symlink leads to; errors and the commit's path show where the folder is now."""
    elsewhere = store.parent / "elsewhere"
    with pinned(store, store / "a" / "b" / "x.sync") as path:
        (store / "a" / "b").rename(store / "a" / "moved")
        (store / "a" / "b").symlink_to(elsewhere, target_is_directory=True)
        committed = commit_payload(path, 0, b"new")
        assert display_path(path) == str(store / "a" / "moved" / "x.sync")
        with pytest.raises(ArchiveError) as missing:
            open_archive(path.parent / "none.sync")
        assert str(store / "a" / "moved" / "none.sync") in str(missing.value)
    assert committed.generation == 1
    assert payload(store / "a" / "moved" / "x.sync") == (1, b"new")
    assert payload(elsewhere / "x.sync") == (0, b"elsewhere's")


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_anything_but_a_folder_on_the_way_is_refused(store: Path, kind: str) -> None:
    """A symlink (even to a folder inside the store) or a file where a folder is expected: FolderChanged,
    whose cause is the kernel's refusal."""
    (store / "a" / "b").rename(store / "a" / "real")
    if kind == "symlink":
        (store / "a" / "b").symlink_to(store / "a" / "real", target_is_directory=True)
    else:
        (store / "a" / "b").write_bytes(b"")
    with pytest.raises(FolderChanged) as refused:
        Pin(store, store / "a" / "b" / "x.sync")
    assert refused.value.code == "folder_changed"
    assert isinstance(refused.value.__cause__, OSError)


def test_a_missing_folder_fails_as_the_plain_path_would(store: Path) -> None:
    with pytest.raises(ArchiveError) as missing:
        Pin(store, store / "a" / "gone" / "x.sync")
    assert not isinstance(missing.value, FolderChanged)
    assert isinstance(missing.value.__cause__, FileNotFoundError)


def test_the_root_may_be_a_symlink_and_a_file_directly_in_it_is_pinned_too(
    store: Path, tmp_path: Path
) -> None:
    """The root is the operator's: a symlink there is followed. A name right below the root needs no walk."""
    (tmp_path / "link").symlink_to(store, target_is_directory=True)
    with pinned(tmp_path / "link", tmp_path / "link" / "a") as path:
        assert path.is_dir()
        assert display_path(path) == str(store / "a")


@pytest.mark.parametrize("below", ["", "../elsewhere/x.sync", "a/../../elsewhere/x.sync"])
def test_only_paths_below_the_root_are_pinned(store: Path, below: str) -> None:
    with pytest.raises(ValueError, match="below"):
        Pin(store, os.path.join(store, below) if below else store)


def test_no_descriptor_outlives_its_pin(store: Path) -> None:
    """The folder's descriptor (and every one opened on the way) is closed with the pin, also when the walk
    fails; closing twice is fine."""
    before = len(os.listdir("/proc/self/fd"))
    pin = Pin(store, store / "a" / "b" / "x.sync")
    assert pin.path.exists()
    pin.close()
    pin.close()
    with pinned(store, store / "a" / "b" / "x.sync") as path:
        assert path.exists()
    with pytest.raises(ArchiveError):
        Pin(store, store / "a" / "b" / "gone" / "x.sync")
    assert len(os.listdir("/proc/self/fd")) == before
