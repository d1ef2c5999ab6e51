"""A store folder replaced by a symlink while a write to it is under way, on a real writable mountd on
127.0.0.1: the write happens in the folder the request resolved, or not at all (409); never in the folder the
symlink leads to (``sync_format.beneath``).

Someone who may write to a store folder (a local user, or a store shared with another service) renames it
away and puts a symlink to another folder in its place. Before, every write resolved the folder again by
name when it acted, so an upload was committed, an archive deleted or moved, a folder made or removed, in the
folder the symlink leads to, as the server's user. The folder here is ``dir``; the symlink leads to
``elsewhere``, which holds an archive of the same name (another store's, say: ``VICTIM``).

Uploads are swapped for real in the middle of their body; the other methods have no body to wait in, so the
swap is made at the moment their write rule is checked (the policy's check is wrapped: everything the
server does is its own).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dav_client import request
from recording_hook import RecordingHook
from redis_server import wait_for
from store_manifests import csv_manifest

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.dav import provider
from mountd.dav.index import ArchiveIndex
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, OwnershipSection, open_archive
from sync_format.testing import make_archive

AddArchive = Callable[..., BuildResult]

ORIGINAL = b"store,figures\n1,2\n"
PROTECTED = b"published,figures\n5,6\n"
VICTIM = b"another store's,figures\n3,4\n"


def editable() -> Any:
    """A CSV manifest whose payload clients may overwrite."""
    return dataclasses.replace(csv_manifest(), ownership=OwnershipSection(write_allowed=True))


@pytest.fixture
def elsewhere(tmp_path: Path, store: Path, add_archive: AddArchive) -> Path:
    """``store/dir/b.csv.sync`` and, outside the store, ``elsewhere/b.csv.sync`` (``VICTIM``) beside a folder
    ``sub``: the same names, so that a write that followed the symlink would find what it looks for."""
    add_archive("dir/b.csv.sync", ORIGINAL, manifest=editable())
    (store / "dir" / "sub").mkdir()
    outside = tmp_path / "elsewhere"
    (outside / "sub").mkdir(parents=True)
    make_archive(outside / "b.csv.sync", VICTIM, manifest=editable())
    return outside


@pytest.fixture
def server(store: Path, hook: RecordingHook, elsewhere: Path) -> Iterator[ServerHandle]:
    """A writable mountd over ``store``."""
    policy = WritePolicy(store, max_upload=1 << 20)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        yield handle


def swap(store: Path, elsewhere: Path) -> None:
    """What the other user does: ``dir`` renamed to ``moved``, a symlink to ``elsewhere`` in its place."""
    (store / "dir").rename(store / "moved")
    (store / "dir").symlink_to(elsewhere, target_is_directory=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (names relative to it) and its bytes; folders as empty entries."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b""
        for p in sorted(folder.rglob("*"))
    }


def payload(archive: Path) -> tuple[int, bytes]:
    with open_archive(archive) as snap:
        return snap.generation, snap.read_payload()


@pytest.mark.parametrize("name", ["new.csv", "b.csv"], ids=["create", "overwrite"])
def test_an_upload_whose_folder_is_replaced_by_a_symlink_meanwhile_changes_nothing_outside(
    server: ServerHandle, store: Path, elsewhere: Path, name: str
) -> None:
    """Half the body is sent, the folder is swapped, then the rest: 409, nothing was written where the
    symlink leads (before, the new archive was written there, or ``VICTIM`` overwritten), and the folder
    the request resolved is as it was (its upload's temp file removed)."""
    outside = snapshot(elsewhere)
    body = b"evil,figures\n9,9\n"
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        host = f"{server.host}:{server.port}"
        head = f"PUT /dir/{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[:5])
        wait_for(
            lambda: any(p.name.endswith(".sync-tmp") for p in (store / "dir").iterdir()), 10, what="temp"
        )
        swap(store, elsewhere)
        sock.sendall(body[5:])
        status = sock.makefile("rb").readline()
    assert status.split()[1] == b"409", status
    assert snapshot(elsewhere) == outside
    assert sorted(p.name for p in (store / "moved").iterdir()) == ["b.csv.sync", "sub"]
    assert payload(store / "moved" / "b.csv.sync") == (0, ORIGINAL)


#: Each method with a target in ``dir`` and its headers' Destination (a path, or None). The folder is swapped
#: when the method's handler starts (its first ``require_writer``), after the request was resolved.
WRITES = {
    "delete": ("DELETE", "/dir/b.csv", None),
    "move-out": ("MOVE", "/dir/b.csv", "/kept.csv"),
    "move-in": ("MOVE", "/top.csv", "/dir/b.csv"),
    "copy-in": ("COPY", "/top.csv", "/dir/b.csv"),
    "delete-folder": ("DELETE", "/dir/sub/", None),
    "move-folder": ("MOVE", "/dir/sub/", "/sub2/"),
    "mkcol": ("MKCOL", "/dir/made/", None),
    "copy-folder-in": ("COPY", "/top/", "/dir/made/"),
}


def after_first_call(monkeypatch: pytest.MonkeyPatch, name: str, act: Callable[[], None]) -> list[bool]:
    """Wrap ``WritePolicy.<name>`` so that ``act`` runs once, right after its first call returned (what
    another user does at that moment); the list says whether it ran."""
    checked = getattr(WritePolicy, name)
    done: list[bool] = []

    def check_then_act(policy: WritePolicy, *args: Any, **kwargs: Any) -> Any:
        answer = checked(policy, *args, **kwargs)
        if not done:
            done.append(True)
            act()
        return answer

    monkeypatch.setattr(WritePolicy, name, check_then_act)
    return done


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_writes_whose_folder_is_replaced_by_a_symlink_meanwhile_change_nothing_outside(
    server: ServerHandle,
    store: Path,
    elsewhere: Path,
    add_archive: AddArchive,
    monkeypatch: pytest.MonkeyPatch,
    write: tuple[str, str, str | None],
) -> None:
    """The folder is swapped when the method's handler starts, after the request resolved it:
    409, and nothing changed where the symlink leads (before: ``VICTIM`` deleted, moved away or replaced,
    ``elsewhere/sub`` deleted or moved, ``elsewhere/made`` created by MKCOL or a folder's COPY)."""
    method, path, destination = write
    add_archive("top.csv.sync", ORIGINAL, manifest=editable())
    (store / "top").mkdir()
    outside = snapshot(elsewhere)
    swapped = after_first_call(monkeypatch, "require_writer", lambda: swap(store, elsewhere))
    headers = {} if destination is None else {"Destination": server.mount_url + destination, "Overwrite": "T"}
    answer = request(server.mount_url, method, path, headers=headers)
    assert swapped
    assert answer.status == 409, (answer.status, answer.body[:300])
    assert snapshot(elsewhere) == outside
    assert payload(store / "moved" / "b.csv.sync") == (0, ORIGINAL)
    assert (store / "moved" / "sub").is_dir()


def exchange(store: Path, one: str, other: str) -> None:
    """Two store folders trade names (what ``renameat2(RENAME_EXCHANGE)`` does at once): no symlink at all."""
    (store / one).rename(store / "trading")
    (store / other).rename(store / one)
    (store / "trading").rename(store / other)


#: Each write on the decoy's side and the protected archive it would reach after the exchange (``dir/`` is
#: ``decoy/`` afterwards). A folder's move is of ``inner/``: what is pinned is the folder holding the target.
EXCHANGED = {
    "delete": ("DELETE", "/decoy/b.csv", None, "b.csv.sync"),
    "move-out": ("MOVE", "/decoy/b.csv", "/kept.csv", "b.csv.sync"),
    "copy-onto": ("COPY", "/top.csv", "/decoy/b.csv", "b.csv.sync"),
    "move-folder": ("MOVE", "/decoy/inner/", "/moved/", "inner/p.csv.sync"),
}


@pytest.mark.parametrize("write", EXCHANGED.values(), ids=EXCHANGED.keys())
def test_a_folder_exchanged_after_the_write_rule_was_checked_does_not_expose_a_protected_archive(
    server: ServerHandle,
    store: Path,
    add_archive: AddArchive,
    monkeypatch: pytest.MonkeyPatch,
    write: tuple[str, str, str | None, str],
) -> None:
    """``decoy/`` holds archives that may be written, ``dir/`` the same names write-protected
    (``ownership.write_allowed = false``). The two folders trade names right after the rule was checked on
    the decoy's archive: the write goes to the decoy's archive it checked, wherever its folder is now, and
    the protected archive is untouched (the answer may still be an error: wsgidav looks the name up again
    afterwards, and finds it taken). Before, the rule was checked by name and the write then resolved the
    folder again: it deleted, moved away or overwrote the protected archive, or moved a folder of them."""
    method, path, destination, name = write
    (store / "dir" / "b.csv.sync").unlink()
    for side, manifest, payload in (("dir", csv_manifest(), PROTECTED), ("decoy", editable(), ORIGINAL)):
        add_archive(f"{side}/b.csv.sync", payload, manifest=manifest)
        add_archive(f"{side}/inner/p.csv.sync", payload, manifest=manifest)
    add_archive("top.csv.sync", VICTIM, manifest=editable())
    protected = (store / "dir" / name).read_bytes()
    traded = after_first_call(monkeypatch, "require_replaceable", lambda: exchange(store, "dir", "decoy"))
    headers = {} if destination is None else {"Destination": server.mount_url + destination, "Overwrite": "T"}
    request(server.mount_url, method, path, headers=headers)  # its status depends on wsgidav's re-reads
    assert traded
    assert (store / "decoy" / name).read_bytes() == protected  # where its folder is now
    assert not (store / "dir" / name).exists()  # the decoy's, which the rule was checked on


def test_an_overwrite_whose_archive_is_replaced_by_a_symlink_meanwhile_commits_nothing(
    server: ServerHandle, store: Path, elsewhere: Path
) -> None:
    """Half the body is sent, then the archive's own name is replaced by a symlink to an archive outside the
    store (one only the server may read, say): the PUT fails, and neither the link nor that archive changes
    (before, the new payload was committed with that archive's manifest and update logic into the store, in
    the link's place)."""
    outside = snapshot(elsewhere)
    body = b"evil,figures\n9,9\n"
    archive = store / "dir" / "b.csv.sync"
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        host = f"{server.host}:{server.port}"
        head = f"PUT /dir/b.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[:5])
        wait_for(lambda: any(p.name.endswith(".sync-tmp") for p in archive.parent.iterdir()), 10, what="temp")
        archive.unlink()
        archive.symlink_to(elsewhere / "b.csv.sync")
        sock.sendall(body[5:])
        status = sock.makefile("rb").readline()
    assert status.split()[1] in (b"404", b"409"), status
    assert archive.is_symlink()
    assert snapshot(elsewhere) == outside


def test_a_folder_taking_the_name_of_one_being_deleted_is_not_emptied(
    server: ServerHandle, store: Path, add_archive: AddArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``x/other/`` is deleted; right after its last check, ``x/inner/`` (which holds a write-protected
    archive) trades names with it. The folder that was checked is emptied and the name removed only if it
    is an empty folder: the protected archive stays, the request fails with 409 (before, the folder now
    under the name was removed whole, protected archive included)."""
    add_archive("x/inner/p.csv.sync", PROTECTED, manifest=csv_manifest())
    add_archive("x/other/p.csv.sync", ORIGINAL, manifest=editable())
    protected = (store / "x" / "inner" / "p.csv.sync").read_bytes()
    traded = after_first_call(
        monkeypatch, "require_folder_replaceable", lambda: exchange(store / "x", "inner", "other")
    )
    answer = request(server.mount_url, "DELETE", "/x/other/")
    assert traded
    assert answer.status == 409
    assert (store / "x" / "other" / "p.csv.sync").read_bytes() == protected  # where its folder is now
    assert list((store / "x" / "inner").iterdir()) == []  # the folder that was checked, emptied


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "wsgidav-path"])
def test_a_read_whose_folder_is_replaced_by_a_symlink_after_its_lookup_serves_nothing_from_there(
    store: Path, hook: RecordingHook, elsewhere: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """A GET of ``/dir/b.csv``: right after the lookup found ``dir`` a real folder, it is swapped for a
    symlink to a folder the server may read (``elsewhere/b.csv.sync`` there: another store's). The archive
    opened is checked to be the one below the store by the name it was asked for, so nothing from there is
    served (before, its payload was). A condition header sends the GET to wsgidav's path, not the fast one."""

    checks = {"_is_folder_text": provider._is_folder_text, "_is_folder": provider._is_folder}
    swapped: list[bool] = []

    def lookup_then_swap(name: str) -> Callable[..., bool]:
        def check(path: Any, *args: Any) -> bool:
            found = checks[name](path, *args)
            if not swapped and str(path) == str(store / "dir"):
                swapped.append(True)
                swap(store, elsewhere)
            return found

        return check

    for name in checks:
        monkeypatch.setattr(provider, name, lookup_then_swap(name))
    headers = {} if fast else {"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        answer = request(handle.mount_url, "GET", "/dir/b.csv", headers=headers)
    assert swapped
    assert VICTIM not in answer.body
    # The fast path falls back to a lookup that finds nothing (404); wsgidav's retries the open, then 503.
    assert answer.status == (404 if fast else 503)


def test_a_listing_whose_folder_is_replaced_by_a_symlink_after_its_lookup_lists_nothing_from_there(
    store: Path, hook: RecordingHook, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROPFIND of ``/dir/``: right after the lookup found ``dir`` a real folder, it is swapped for a
    symlink to a folder the server may read. The listing scans the folder it opened from the store's root
    without following a symlink, so no name, size or date from there is listed (before, they were)."""
    make_archive(elsewhere / "secret-plans.csv.sync", VICTIM, manifest=editable())
    real = provider._is_folder
    swapped: list[bool] = []

    def lookup_then_swap(path: Any, *args: Any) -> bool:
        found = real(path, *args)
        if not swapped and str(path) == str(store / "dir"):
            swapped.append(True)
            swap(store, elsewhere)
        return found

    monkeypatch.setattr(provider, "_is_folder", lookup_then_swap)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        answer = request(handle.mount_url, "PROPFIND", "/dir/", headers={"Depth": "1"})
    assert swapped
    assert b"secret-plans" not in answer.body
    assert b"b.csv" not in answer.body
    assert answer.status == 207  # the folder, listed empty


def test_the_index_lists_and_walks_nothing_through_a_folder_swapped_for_a_symlink(
    store: Path, elsewhere: Path
) -> None:
    """The index itself, as the listing and the refresh scheduler call it: the folder is named by its path,
    which is a symlink to another store's folder by then; nothing from there is listed or walked."""
    make_archive(elsewhere / "secret-plans.csv.sync", VICTIM, manifest=editable())
    swap(store, elsewhere)
    index = ArchiveIndex(watcher=False)
    listing = index.list_directory(store / "dir", store)
    assert (listing.folders, dict(listing.archives)) == ((), {})
    assert index.archive_facts(store / "dir", None, store) == ((), [])
    assert sorted(index.list_directory(store / "moved", store).archives) == ["b.csv"]


def test_listings_below_the_root_need_no_proc(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders are opened with ``openat`` from the root, not named through ``/proc/self/fd``: where
    ``/proc`` is not mounted, a folder below the root still lists what it holds (it listed nothing, and the
    scheduler walked nothing below the root). ``/proc`` is made unusable by making every path under it
    fail to open."""
    make_archive(store / "a" / "b" / "x.csv.sync", ORIGINAL, manifest=editable())
    real_open = os.open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_proc)
    index = ArchiveIndex(watcher=False)
    assert sorted(index.list_directory(store / "a" / "b", store).archives) == ["x.csv"]
    assert [p.name for p, _ in index.archive_facts(store / "a" / "b", None, store)[1]] == ["x.csv.sync"]
