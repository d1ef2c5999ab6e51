"""``ownership.write_allowed = false`` against every way a WebDAV client could replace or remove an archive,
on a real writable mountd on 127.0.0.1 (the loopback caller is an owner)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dav_client import lock_body, request
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import serve_background
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, OwnershipSection, open_archive

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


def editable_csv_manifest() -> object:
    """A CSV manifest whose payload clients may overwrite."""
    return dataclasses.replace(csv_manifest(), ownership=OwnershipSection(write_allowed=True))


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


LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>me</D:owner></D:lockinfo>"
)


def test_an_archive_named_by_its_file_name_is_neither_replaced_nor_hidden(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """A new resource's name must be what the listing will show, and its file must not exist: ``/a.csv.sync``
    (the file of the archive listed as ``a.csv``), ``/report`` (the file of ``report.sync``, listed as
    ``report.csv``) and ``/r.csv.sync`` (a new file that would be listed as ``r.csv``, hiding ``r.sync``) are
    refused for PUT, LOCK, COPY and MOVE, Overwrite: F or T, and every archive keeps its bytes."""
    add_archive("report.sync", PROTECTED, manifest=csv_manifest())
    add_archive("r.sync", PROTECTED, manifest=csv_manifest())
    assert request(wurl, "PUT", "/mine.csv", body=b"mine\n").status == 201
    # A name ending in .sync is listed under another name (403); /report's file is report.sync (409).
    for name, status in (
        ("/a.csv.sync", 403),
        ("/report", 409),
        ("/r.csv.sync", 403),
        ("/dir/b.csv.sync", 403),
    ):
        assert request(wurl, "PUT", name, body=b"evil\n").status == status, name
        assert request(wurl, "LOCK", name, body=LOCK_BODY).status == status, name
        # A copy of mine.csv keeps its csv type: at /report it would be listed as report.csv (403 first).
        copied = 403 if name == "/report" else status
        for method in ("COPY", "MOVE"):
            for overwrite in ("F", "T"):
                headers = {"Destination": wurl + name, "Overwrite": overwrite}
                assert request(wurl, method, "/mine.csv", headers=headers).status == copied, (name, method)
    for archive in ("a.csv.sync", "report.sync", "r.sync", "dir/b.csv.sync"):
        assert _payload(store / archive) == PROTECTED, archive
    assert _payload(store / "mine.csv.sync") == b"mine\n"
    assert not (store / "r.csv.sync").exists()
    assert request(wurl, "GET", "/r.csv").body == PROTECTED
    assert request(wurl, "GET", "/report.csv").body == PROTECTED
    # The refusals say why, and a name that is free and shown as asked is still created.
    refused = request(wurl, "PUT", "/new.csv.sync", body=b"x\n")
    assert refused.status == 403
    assert b"would be listed as" in refused.body
    taken = request(wurl, "PUT", "/report", body=b"x\n")
    assert taken.status == 409
    assert b"listed under another name" in taken.body
    assert request(wurl, "PUT", "/plain", body=b"plain\n").status == 201
    assert request(wurl, "GET", "/plain").body == b"plain\n"


@pytest.mark.parametrize(
    "name",
    [
        "/evil%1B%5B31mname.csv",  # ESC: a terminal escape in listings and logs
        "/evil%7Fdel.csv",  # DEL
        "/bad%FFutf8.csv",  # not UTF-8 (decoded to U+FFFD)
        "/" + "n" * 228 + ".csv",  # its temp file would be longer than 255 bytes
    ],
)
def test_names_no_request_could_reach_again_are_never_created(wurl: str, store: Path, name: str) -> None:
    """A COPY or MOVE destination is held to the rules of request paths and file-name lengths (PUT's own path
    is refused before: 400 for the characters): 403, and nothing is created."""
    assert request(wurl, "PUT", "/mine.csv", body=b"mine\n").status == 201
    before = sorted(p.name for p in store.iterdir())
    for method in ("COPY", "MOVE"):
        headers = {"Destination": wurl + name, "Overwrite": "F"}
        answer = request(wurl, method, "/mine.csv", headers=headers)
        assert answer.status == 403, (method, answer.status, answer.body[:200])
    assert sorted(p.name for p in store.iterdir()) == before
    if len(name) > 200:
        assert request(wurl, "PUT", name, body=b"x\n").status == 403  # not a 500 from the file system
        assert request(wurl, "MKCOL", name + "/").status == 403
    assert _payload(store / "mine.csv.sync") == b"mine\n"


def test_a_folder_copied_onto_a_folder_replaces_the_members_it_lists_not_their_names(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """COPY of a folder onto one that lists the same member (RFC 4918 §9.8.4: merged, members overwritten)
    writes that member's own file, whatever its file name (``report.sync`` listed as ``report.csv``): no
    second file appears to hide it; a protected member is refused and keeps its bytes."""
    add_archive("src/report.csv.sync", b"new\n", manifest=editable_csv_manifest())
    add_archive("src/kept.csv.sync", b"new kept\n", manifest=editable_csv_manifest())
    add_archive("dst/report.sync", b"old\n", manifest=editable_csv_manifest())
    add_archive("dst/kept.csv.sync", PROTECTED, manifest=csv_manifest())
    answer = request(wurl, "COPY", "/src/", headers={"Destination": wurl + "/dst/", "Overwrite": "T"})
    assert answer.status == 207  # the protected member's refusal
    assert sorted(p.name for p in (store / "dst").iterdir()) == ["kept.csv.sync", "report.sync"]
    assert _payload(store / "dst" / "report.sync") == b"new\n"
    assert _payload(store / "dst" / "kept.csv.sync") == PROTECTED
    assert request(wurl, "GET", "/dst/report.csv").body == b"new\n"


def _proppatch(name: str, value: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:test">'
        f"<D:set><D:prop><Z:{name}>{value}</Z:{name}></D:prop></D:set></D:propertyupdate>"
    ).encode()


def test_what_locks_and_dead_properties_keep_is_bounded(wurl: str) -> None:
    """A LOCK's owner is at most 4 KiB and a resource holds at most 16 locks (a refresh still works at the
    cap); a PROPPATCH body is at most 64 KiB and a resource at most 64 dead properties (an existing one can
    still be changed): past each, a clear refusal, and the answers stay small."""
    assert request(wurl, "PUT", "/f.csv", body=b"x\n").status == 201
    assert request(wurl, "LOCK", "/f.csv", body=lock_body("shared", "o" * 5000)).status == 413
    tokens = []
    for i in range(16):
        answer = request(wurl, "LOCK", "/f.csv", body=lock_body("shared", f"owner {i} " + "o" * 3000))
        assert answer.status == 200, i
        assert len(answer.body) < 16 * 5 * 1024  # every lock of the resource: at most 16 of about 4 KiB
        tokens.append(answer.header("lock-token") or "")
    refused = request(wurl, "LOCK", "/f.csv", body=lock_body("shared", "one more"))
    assert (refused.status, b"16 locks" in refused.body) == (403, True)
    refreshed = request(wurl, "LOCK", "/f.csv", headers={"If": f"({tokens[0]})", "Timeout": "Second-60"})
    assert refreshed.status == 200
    assert request(wurl, "UNLOCK", "/f.csv", headers={"Lock-Token": tokens[0]}).status == 204
    assert request(wurl, "LOCK", "/f.csv", body=lock_body("shared", "room again")).status == 200

    assert request(wurl, "PUT", "/g.csv", body=b"x\n").status == 201
    assert request(wurl, "PROPPATCH", "/g.csv", body=_proppatch("big", "v" * 70_000)).status == 413
    for i in range(64):
        assert request(wurl, "PROPPATCH", "/g.csv", body=_proppatch(f"p{i}", "v" * 500)).status == 207, i
    full = request(wurl, "PROPPATCH", "/g.csv", body=_proppatch("p64", "v"))
    assert b"507" in full.body  # the multistatus names the refused property
    assert b"HTTP/1.1 200" not in full.body
    changed = request(wurl, "PROPPATCH", "/g.csv", body=_proppatch("p0", "changed"))
    assert b"HTTP/1.1 200" in changed.body
    # One PROPPATCH of 70 new properties fails whole (RFC 4918 §9.2), not after storing the first 64.
    assert request(wurl, "PUT", "/h.csv", body=b"x\n").status == 201
    many = "".join(f"<Z:q{i}>v</Z:q{i}>" for i in range(70))
    body = (
        '<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:test">'
        f"<D:set><D:prop>{many}</D:prop></D:set></D:propertyupdate>"
    ).encode()
    whole = request(wurl, "PROPPATCH", "/h.csv", body=body)
    assert b"507" in whole.body
    assert b"HTTP/1.1 200" not in whole.body
    stored = request(wurl, "PROPFIND", "/h.csv", headers={"Depth": "0"})
    assert b"urn:test" not in stored.body


@pytest.mark.parametrize("writable", [True, False], ids=["writable", "read-only"])
def test_writes_naming_the_root_itself_get_a_clear_refusal_not_a_server_error(
    store: Path, hook: RecordingHook, add_archive: AddArchive, writable: bool
) -> None:
    """PUT, DELETE, MOVE and COPY of ``/``, and MOVE or COPY of an archive onto ``/`` (as a path, a URL, or a
    URL without the slash), asked wsgidav for the root's parent: each answered 500 (``AttributeError`` on
    None). Now each is a 4xx that says why, and the store is as it was: a DELETE of ``/`` answered 403
    only after wsgidav had deleted every member, one by one."""
    add_archive("a.csv.sync", PROTECTED, manifest=editable_csv_manifest())
    add_archive("d/b.csv.sync", PROTECTED, manifest=editable_csv_manifest())
    before = sorted(p.name for p in store.iterdir())
    policy = WritePolicy(store, max_upload=1 << 20) if writable else None
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        url = handle.mount_url
        answers = {}
        for method in ("PUT", "DELETE", "MOVE", "COPY"):
            body = b"x\n" if method == "PUT" else None  # (a DELETE with a body is refused for that)
            answers[f"{method} /"] = request(
                url, method, "/", body=body, headers=_destination(url, "/b.csv")
            ).status
        for destination in ("/", url + "/", url):
            for method in ("MOVE", "COPY"):
                answers[f"{method} -> {destination}"] = request(
                    url, method, "/a.csv", headers={"Destination": destination, "Overwrite": "T"}
                ).status
        assert request(url, "GET", "/a.csv").body == PROTECTED
    onto_root = {
        f"{method} -> {where}": 409 for where in ("/", url + "/", url) for method in ("MOVE", "COPY")
    }
    assert answers == {"PUT /": 405, "DELETE /": 403, "MOVE /": 403, "COPY /": 403, **onto_root}
    assert sorted(p.name for p in store.iterdir()) == before
    assert _payload(store / "d" / "b.csv.sync") == PROTECTED


@pytest.mark.parametrize(
    ("method", "source", "destination"),
    [
        ("COPY", "/d/e.csv", "/d/"),
        ("MOVE", "/d/e.csv", "/d"),
        ("MOVE", "/d/sub/f.csv", "/d/"),
        ("MOVE", "/d/sub/", "/d/"),
        ("COPY", "/d/sub/", "/d/"),
        ("COPY", "/d/sub/f.csv", "/"),
    ],
)
def test_a_copy_or_move_onto_a_folder_that_holds_the_source_changes_nothing(
    store: Path, hook: RecordingHook, add_archive: AddArchive, method: str, source: str, destination: str
) -> None:  # (onto "/": 409 from wsgidav, the root having no parent folder; the others 403)
    """With ``Overwrite: T`` wsgidav deleted the destination folder (the source inside it) and then failed
    to copy or move the source (404): the folder was gone. Now 403 (or 409 for the root), nothing changed."""
    for name in ("d/e.csv.sync", "d/sub/f.csv.sync", "g.csv.sync"):
        add_archive(name, PROTECTED, manifest=editable_csv_manifest())
    before = {p.relative_to(store).as_posix() for p in store.rglob("*")}
    policy = WritePolicy(store, max_upload=1 << 20)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        url = handle.mount_url
        answer = request(url, method, source, headers=_destination(url, destination))
    assert answer.status == (409 if destination == "/" else 403)
    assert {p.relative_to(store).as_posix() for p in store.rglob("*")} == before


@pytest.mark.parametrize(
    ("locked", "deleted"),
    [("/d/e.csv", "/d"), ("/d/e.csv", "/d/"), ("/d/sub/f.csv", "/d/"), ("/d/sub/f.csv", "/d/sub")],
)
def test_a_folder_delete_keeps_a_locked_member_and_the_folders_that_hold_it(
    wurl: str, store: Path, locked: str, deleted: str
) -> None:
    """The locked member is reported (423) and kept, with every folder above it and its lock; the members
    not locked are deleted (RFC 4918 §9.6.1). Before, a folder named without its slash, or a member folder
    holding the locked archive, was removed whole, the locked archive with it (and its lock)."""
    for folder in ("/d/", "/d/sub/"):
        assert request(wurl, "MKCOL", folder).status == 201
    for name in ("d/e.csv", "d/sub/f.csv", "d/sub/h.csv"):
        assert request(wurl, "PUT", f"/{name}", body=b"mine\n").status == 201
    lock = request(wurl, "LOCK", locked, body=lock_body("exclusive", "me"), headers={"Timeout": "Second-60"})
    assert lock.status == 200
    answer = request(wurl, "DELETE", deleted)
    assert answer.status == 207
    assert b"423" in answer.body
    archive = store / f"{locked.lstrip('/')}.sync"
    assert _payload(archive) == b"mine\n"
    assert request(wurl, "PUT", locked, body=b"not the owner\n").status == 423  # still locked
    assert not (store / "d" / "sub" / "h.csv.sync").exists()  # what was not locked is deleted


def test_a_lock_does_not_stay_behind_on_the_name_its_archive_was_moved_from(wurl: str, store: Path) -> None:
    """RFC 4918 §7.7: a MOVE does not move the lock. It stayed on the old name: that name answered 423 to
    anyone else's PUT, and UNLOCK there found nothing (404) until it expired."""
    assert request(wurl, "PUT", "/mine.csv", body=b"mine\n").status == 201
    lock = request(wurl, "LOCK", "/mine.csv", body=lock_body("exclusive", "me"))
    token = lock.header("lock-token") or ""
    moved = request(
        wurl, "MOVE", "/mine.csv", headers={**_destination(wurl, "/moved.csv"), "If": f"({token})"}
    )
    assert moved.status == 201
    assert request(wurl, "PUT", "/mine.csv", body=b"someone else\n").status == 201
    assert request(wurl, "PUT", "/moved.csv", body=b"changed\n").status == 204


@pytest.mark.parametrize("locked", ["/my d/", "/my d/sub/"], ids=["the-folder", "a-folder-below"])
def test_a_folder_locked_depth_0_by_someone_else_keeps_its_members_on_delete(
    wurl: str, store: Path, locked: str
) -> None:
    """A Depth 0 lock on a folder protects its membership (RFC 4918 §7.5). wsgidav checked each member
    against its own locks only: a DELETE of the folder without the token deleted every member, then
    answered 423 for the folder. Now 423 before anything is deleted; with the token, the delete goes on."""
    for folder in ("/my%20d/", "/my%20d/sub/"):
        assert request(wurl, "MKCOL", folder).status == 201
    for name in ("my%20d/e.csv", "my%20d/sub/f.csv"):
        assert request(wurl, "PUT", f"/{name}", body=b"mine\n").status == 201
    before = sorted(p.relative_to(store).as_posix() for p in (store / "my d").rglob("*"))
    lock = request(
        wurl,
        "LOCK",
        locked.replace(" ", "%20"),
        body=lock_body("exclusive", "someone"),
        headers={"Depth": "0", "Timeout": "Second-60"},
    )
    assert lock.status == 200
    assert request(wurl, "DELETE", "/my%20d/").status == 423
    assert sorted(p.relative_to(store).as_posix() for p in (store / "my d").rglob("*")) == before
    token = lock.header("lock-token") or ""
    tagged = f"<{wurl}{locked.replace(' ', '%20')}> ({token})"  # (untagged, every member must hold it)
    assert request(wurl, "DELETE", "/my%20d/", headers={"If": tagged}).status == 204
    assert not (store / "my d").exists()
