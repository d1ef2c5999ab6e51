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
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, OwnershipSection, open_archive
from sync_format.testing import make_archive

AddArchive = Callable[..., BuildResult]

ORIGINAL = b"store,figures\n1,2\n"
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


#: Each method with a target in ``dir``, its headers' Destination (a path, or None), and the policy check
#: during which the folder is swapped (with an argument it must be called with, or None: its first call).
WRITES = {
    "delete": ("DELETE", "/dir/b.csv", None, ("require_replaceable", None)),
    "move-out": ("MOVE", "/dir/b.csv", "/kept.csv", ("require_replaceable", None)),
    "move-in": ("MOVE", "/top.csv", "/dir/b.csv", ("require_replaceable", None)),
    "copy-in": ("COPY", "/top.csv", "/dir/b.csv", ("require_replaceable", None)),
    "delete-folder": ("DELETE", "/dir/sub/", None, ("require_folder_replaceable", None)),
    "move-folder": ("MOVE", "/dir/sub/", "/sub2/", ("require_folder_replaceable", None)),
    "mkcol": ("MKCOL", "/dir/made/", None, ("folder_for", None)),
    "copy-folder-in": ("COPY", "/top/", "/dir/made/", ("require_writer", "COPY")),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_writes_whose_folder_is_replaced_by_a_symlink_meanwhile_change_nothing_outside(
    server: ServerHandle,
    store: Path,
    elsewhere: Path,
    add_archive: AddArchive,
    monkeypatch: pytest.MonkeyPatch,
    write: tuple[str, str, str | None, tuple[str, str | None]],
) -> None:
    """The folder is swapped while the method's write rule is checked, after the request resolved it:
    409, and nothing changed where the symlink leads (before: ``VICTIM`` deleted, moved away or replaced,
    ``elsewhere/sub`` deleted or moved, ``elsewhere/made`` created by MKCOL or a folder's COPY)."""
    method, path, destination, (check, called_with) = write
    add_archive("top.csv.sync", ORIGINAL, manifest=editable())
    (store / "top").mkdir()
    outside = snapshot(elsewhere)
    checked = getattr(WritePolicy, check)
    swapped: list[bool] = []

    def check_then_swap(policy: WritePolicy, *args: Any, **kwargs: Any) -> Any:
        answer = checked(policy, *args, **kwargs)
        if not swapped and (called_with is None or called_with in args):
            swapped.append(True)
            swap(store, elsewhere)
        return answer

    monkeypatch.setattr(WritePolicy, check, check_then_swap)
    headers = {} if destination is None else {"Destination": server.mount_url + destination, "Overwrite": "T"}
    answer = request(server.mount_url, method, path, headers=headers)
    assert swapped
    assert answer.status == 409, (answer.status, answer.body[:300])
    assert snapshot(elsewhere) == outside
    assert payload(store / "moved" / "b.csv.sync") == (0, ORIGINAL)
    assert (store / "moved" / "sub").is_dir()
