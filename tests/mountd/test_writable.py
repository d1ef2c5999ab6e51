"""Writable mode: uploads become archives, overwrites are atomic commits, broken uploads change nothing."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import http.client
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from dav_client import lock_body, names, propfind, request
from recording_hook import RecordingHook
from redis_server import RedisServer, wait_for
from store_manifests import csv_manifest
from support import outcome_beside_a_fifo
from wsgidav.dav_error import DAVError  # type: ignore[import-untyped]

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.auth.users import Role, add_user, load_users
from mountd.writable import archives, uploads
from mountd.writable.locks import RedisLockStorage
from mountd.writable.policy import WritePolicy
from sync_format import (
    EMPTY_WASM,
    BuildResult,
    FileIdentity,
    OwnershipSection,
    commit_payload,
    open_archive,
    swap,
)
from sync_format.atomic import is_temp_name
from sync_format.store import store_path_for

AddArchive = Callable[..., BuildResult]
#: Upload limit of the test server (bytes).
LIMIT = 64 * 1024
CSV = b"region,total\nnorth,12\n"


def editable_csv() -> object:
    """A CSV manifest whose payload clients may overwrite."""
    return dataclasses.replace(csv_manifest(), ownership=OwnershipSection(write_allowed=True))


@pytest.fixture
def wserver(store: Path, hook: RecordingHook) -> Iterator[ServerHandle]:
    """mountd serving ``store`` writable, with a small upload limit."""
    policy = WritePolicy(store, max_upload=LIMIT)
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook, writable=policy) as handle:
        yield handle


@pytest.fixture
def wurl(wserver: ServerHandle) -> str:
    """The writable server's URL."""
    return wserver.mount_url


def put(url: str, path: str, body: bytes, **headers: str) -> int:
    """PUT a body and return the status."""
    return request(url, "PUT", path, body=body, headers=headers).status


def leftovers(directory: Path) -> list[str]:
    """Temp files of uploads or commits left in a directory."""
    return [name for name in os.listdir(directory) if is_temp_name(name)]


def raw_exchange(url: str, head: str, body: bytes) -> None:
    """Send a request head (``{host}`` filled in) and part of a body on a raw socket, then stop sending."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        sock.sendall(head.format(host=parts.netloc).encode() + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(65536):
            pass  # the server answers (or closes) once it has seen the body end early


def test_put_new_file_wraps_it_into_an_archive(wurl: str, store: Path) -> None:
    """A PUT of a new name answers 201 with an ETag and stores ``name.sync`` made with the upload template."""
    response = request(wurl, "PUT", "/report.csv", body=CSV)
    assert response.status == 201
    assert response.header("etag")
    with open_archive(store / "report.csv.sync") as snapshot:
        assert snapshot.read_payload() == CSV
        assert snapshot.manifest.sync.content_type == "text/csv"
        assert snapshot.manifest.sync.display_ext == "csv"
        assert snapshot.manifest.ownership.write_allowed is True
        assert snapshot.read_entry("sync.wasm") == EMPTY_WASM
        assert snapshot.generation == 0
    got = request(wurl, "GET", "/report.csv")
    assert (got.status, got.body, got.header("content-type")) == (200, CSV, "text/csv")
    assert got.header("etag") == response.header("etag")


def test_put_over_an_archive_commits_a_new_generation(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """Overwriting replaces the payload atomically: 204, generation + 1, manifest bytes kept, new ETag."""
    add_archive("report.csv.sync", CSV, manifest=editable_csv())
    before = request(wurl, "GET", "/report.csv")
    with open_archive(store / "report.csv.sync") as snapshot:
        manifest_bytes = snapshot.read_entry("manifest.toml")
    assert put(wurl, "/report.csv", b"region,total\nsouth,30\n") == 204
    after = request(wurl, "GET", "/report.csv")
    assert after.body == b"region,total\nsouth,30\n"
    assert after.header("etag") != before.header("etag")
    with open_archive(store / "report.csv.sync") as snapshot:
        assert snapshot.generation == 1
        assert snapshot.read_entry("manifest.toml") == manifest_bytes
    assert leftovers(store) == []


def test_archive_without_write_allowed_refuses_overwrite(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """A publisher's archive (``write_allowed = false``) answers 403 to a PUT and keeps its payload."""
    add_archive("report.csv.sync", CSV, manifest=csv_manifest())
    response = request(wurl, "PUT", "/report.csv", body=b"vandalised")
    assert response.status == 403
    assert b"write_allowed" in response.body
    assert request(wurl, "GET", "/report.csv").body == CSV


def test_interrupted_upload_keeps_the_old_payload(wurl: str, store: Path, add_archive: AddArchive) -> None:
    """A client that hangs up halfway through a PUT body changes nothing and leaves no temp file."""
    add_archive("report.csv.sync", CSV, manifest=editable_csv())
    head = "PUT /report.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n"
    raw_exchange(wurl, head, b"x" * 400)
    assert request(wurl, "GET", "/report.csv").body == CSV
    with open_archive(store / "report.csv.sync") as snapshot:
        assert snapshot.generation == 0
    assert leftovers(store) == []


def test_interrupted_upload_of_a_new_name_creates_nothing(wurl: str, store: Path) -> None:
    """A new file whose body is cut short never appears, not even empty."""
    head = "PUT /new.csv HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n"
    raw_exchange(wurl, head, b"x" * 10)
    assert request(wurl, "GET", "/new.csv").status == 404
    assert os.listdir(store) == []


def test_chunked_upload_is_committed_when_complete(wurl: str, store: Path) -> None:
    """A chunked PUT (as Finder sends) with its terminating chunk is stored byte-exact."""
    parts = urlsplit(wurl)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    blocks = [b"a" * 1000, b"b" * 3000, b"c" * 7]
    conn.request("PUT", "/chunked.txt", body=iter(blocks), encode_chunked=True)
    assert conn.getresponse().status == 201
    conn.close()
    assert request(wurl, "GET", "/chunked.txt").body == b"".join(blocks)


def test_cut_chunked_upload_changes_nothing(wurl: str, store: Path, add_archive: AddArchive) -> None:
    """A chunked body that ends before its zero-size chunk leaves the old payload in place."""
    add_archive(
        "notes.txt.sync",
        b"old",
        manifest=dataclasses.replace(
            csv_manifest(),
            sync=dataclasses.replace(csv_manifest().sync, display_ext="txt"),
            ownership=OwnershipSection(write_allowed=True),
        ),
    )
    head = "PUT /notes.txt HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw_exchange(wurl, head, b"10\r\n0123456789abcdef\r\n20\r\nonly part of")
    assert request(wurl, "GET", "/notes.txt").body == b"old"
    assert leftovers(store) == []


def test_declared_oversize_upload_is_refused_unread(wurl: str, store: Path) -> None:
    """A Content-Length above the limit gets 413 and nothing is stored."""
    response = request(wurl, "PUT", "/big.bin", body=b"x" * (LIMIT + 1))
    assert response.status == 413
    assert os.listdir(store) == []


def test_chunked_upload_over_the_limit_is_cut_off(wurl: str, store: Path) -> None:
    """A chunked body that grows past the limit gets 413 and nothing is stored."""
    parts = urlsplit(wurl)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    blocks = (b"z" * 8192 for _ in range(LIMIT // 8192 + 2))
    try:
        conn.request("PUT", "/big.bin", body=blocks, encode_chunked=True)
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        status = 413  # the server may answer and close before the client finished sending
    finally:
        conn.close()
    assert status == 413
    assert os.listdir(store) == []


def test_folders_delete_move_and_copy(wurl: str, store: Path) -> None:
    """MKCOL makes a folder; COPY and MOVE carry archives to new names; DELETE removes files and folders."""
    assert request(wurl, "MKCOL", "/team/").status == 201
    assert put(wurl, "/team/report.csv", CSV) == 201
    copy = request(wurl, "COPY", "/team/report.csv", headers={"Destination": f"{wurl}/team/copy.csv"})
    assert copy.status == 201
    move = request(wurl, "MOVE", "/team/report.csv", headers={"Destination": f"{wurl}/renamed.txt"})
    assert move.status == 201
    assert sorted(os.listdir(store / "team")) == ["copy.csv.sync"]
    assert (store / "renamed.txt.sync").is_file()
    # The manifest is untouched by a rename (a signature stays valid): the file keeps its content type.
    renamed = request(wurl, "GET", "/renamed.txt")
    assert (renamed.status, renamed.body, renamed.header("content-type")) == (200, CSV, "text/csv")
    assert names(propfind(wurl, "/")) == ["renamed.txt", "team/"]
    assert request(wurl, "DELETE", "/renamed.txt").status == 204
    assert request(wurl, "DELETE", "/team/").status == 204
    assert os.listdir(store) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_copy_of_depth_0_copies_the_folder_not_its_members(
    wurl: str, store: Path, overwrite: bool
) -> None:
    """``COPY`` of a folder with ``Depth: 0`` makes the folder (with its properties) and nothing below it
    (RFC 4918 §9.8.3); over an existing folder (``Overwrite: T``) the result is not merged: the destination
    is left empty. wsgidav copied the whole tree whatever the depth. ``Depth: infinity`` copies it all."""
    assert request(wurl, "MKCOL", "/d/").status == 201
    assert request(wurl, "MKCOL", "/d/sub/").status == 201
    assert put(wurl, "/d/x.csv", CSV) == 201
    assert put(wurl, "/d/sub/y.csv", CSV) == 201
    patch = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example">'
        b"<D:set><D:prop><Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"
    )
    assert request(wurl, "PROPPATCH", "/d/", body=patch).status == 207
    if overwrite:
        assert request(wurl, "MKCOL", "/e/").status == 201
        assert put(wurl, "/e/old.csv", CSV) == 201
    copied = request(wurl, "COPY", "/d/", headers={"Destination": f"{wurl}/e/", "Depth": "0"})
    assert copied.status == (204 if overwrite else 201)
    assert os.listdir(store / "e") == []
    assert propfind(wurl, "/e/", depth="0")["/e/"].get("{urn:example}colour") == "blue"
    assert sorted(os.listdir(store / "d")) == ["sub", "x.csv.sync"]
    assert os.listdir(store / "d" / "sub") == ["y.csv.sync"]
    whole = request(wurl, "COPY", "/d/", headers={"Destination": f"{wurl}/f/", "Depth": "infinity"})
    assert whole.status == 201
    assert names(propfind(wurl, "/f/")) == ["f/", "sub/", "x.csv"]
    assert os.listdir(store / "f" / "sub") == ["y.csv.sync"]
    # An archive has no members: Depth 0 copies it whole.
    single = request(wurl, "COPY", "/d/x.csv", headers={"Destination": f"{wurl}/g.csv", "Depth": "0"})
    assert single.status == 201
    assert request(wurl, "GET", "/g.csv").body == CSV


def test_os_metadata_files_are_accepted_and_discarded(wurl: str, store: Path) -> None:
    """``._*`` and ``.DS_Store`` uploads succeed without storing anything; other hidden names are refused."""
    assert put(wurl, "/._report.csv", b"apple double") in (201, 204)
    assert put(wurl, "/.DS_Store", b"finder") in (201, 204)
    assert request(wurl, "GET", "/.DS_Store").body == b""
    assert put(wurl, "/.secret", b"hidden") == 403
    assert os.listdir(store) == []


def test_conditional_put_on_an_old_etag_fails(wurl: str, store: Path) -> None:
    """A PUT with If-Match of a version that was replaced meanwhile gets 412 and changes nothing."""
    first = request(wurl, "PUT", "/doc.txt", body=b"one")
    assert put(wurl, "/doc.txt", b"two") == 204
    assert put(wurl, "/doc.txt", b"three", **{"If-Match": first.header("etag") or ""}) == 412
    assert request(wurl, "GET", "/doc.txt").body == b"two"


def test_dead_properties_follow_the_file(wurl: str) -> None:
    """PROPPATCH stores a dead property, MOVE carries it, and our live properties are protected."""
    assert put(wurl, "/doc.txt", b"text") == 201
    patch = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example">'
        b"<D:set><D:prop><Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"
    )
    assert request(wurl, "PROPPATCH", "/doc.txt", body=patch).status == 207
    assert request(wurl, "MOVE", "/doc.txt", headers={"Destination": f"{wurl}/moved.txt"}).status == 201
    props = propfind(wurl, "/moved.txt", depth="0")
    assert props["/moved.txt"].get("{urn:example}colour") == "blue"
    protected = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:S="urn:sync">'
        b"<D:set><D:prop><S:generation>99</S:generation></D:prop></D:set></D:propertyupdate>"
    )
    response = request(wurl, "PROPPATCH", "/moved.txt", body=protected)
    assert response.status == 207
    assert b"403" in response.body


def test_locks_are_shared_through_redis(tmp_path: Path, store: Path, hook: RecordingHook) -> None:
    """Two servers sharing Redis lock storage: a lock taken through one binds writes through the other."""
    lock_body = (
        b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        b"<D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>"
    )
    policy = WritePolicy(store, max_upload=LIMIT)
    settings = Settings(host="127.0.0.1", port=0)
    with RedisServer(tmp_path / "redis") as redis_server:
        storages = [RedisLockStorage(redis_server.url, prefix="test:dav:") for _ in range(2)]
        with (
            serve_background(settings, store, hook, writable=policy, lock_storage=storages[0]) as one,
            serve_background(settings, store, hook, writable=policy, lock_storage=storages[1]) as two,
        ):
            assert put(one.mount_url, "/shared.txt", b"v1") == 201
            locked = request(
                one.mount_url, "LOCK", "/shared.txt", body=lock_body, headers={"Timeout": "Second-60"}
            )
            assert locked.status == 200
            token = locked.header("lock-token") or ""
            assert put(two.mount_url, "/shared.txt", b"v2") == 423
            assert put(two.mount_url, "/shared.txt", b"v2", If=f"({token})") == 204
            assert (
                request(two.mount_url, "UNLOCK", "/shared.txt", headers={"Lock-Token": token}).status == 204
            )
            assert put(one.mount_url, "/shared.txt", b"v3") == 204


def test_locks_of_the_root_are_not_their_own_children_in_redis(
    tmp_path: Path, store: Path, hook: RecordingHook
) -> None:
    """With Redis lock storage, the lock of ``/`` was found again among its own children (the pattern of
    ``/``'s children matched its own key): a second LOCK of ``/`` answered 500 (wsgidav's assertion), two
    shared locks could not be taken, and listing the root's locks counted the lock twice."""

    policy = WritePolicy(store, max_upload=LIMIT)
    settings = Settings(host="127.0.0.1", port=0)
    with RedisServer(tmp_path / "redis") as redis_server:
        storage = RedisLockStorage(redis_server.url, prefix="test:dav:")
        with serve_background(settings, store, hook, writable=policy, lock_storage=storage) as server:
            url = server.mount_url
            timeout = {"Timeout": "Second-60"}
            tokens = []
            for _ in range(2):
                answer = request(url, "LOCK", "/", body=lock_body("shared"), headers=timeout)
                assert answer.status == 200
                tokens.append(answer.header("lock-token") or "")
            assert request(url, "LOCK", "/", body=lock_body("exclusive"), headers=timeout).status == 423
            held = storage.get_lock_list("/", include_root=True, include_children=True, token_only=True)
            assert sorted(held) == sorted(t.strip("<>") for t in tokens)
            assert put(url, "/new.txt", b"x") == 423
            assert put(url, "/new.txt", b"x", If=" ".join(f"({t})" for t in tokens)) == 201


def test_read_only_server_still_refuses_writes(url: str, store: Path) -> None:
    """Without writable mode a PUT of a new name is refused with 403 and nothing is stored."""
    assert put(url, "/new.txt", b"data") == 403
    assert os.listdir(store) == []


def test_dead_properties_survive_a_restart(tmp_path: Path, store: Path, hook: RecordingHook) -> None:
    """With a property store, a dead property set before a restart is still there after it."""
    policy = WritePolicy(store, max_upload=LIMIT)
    settings = Settings(host="127.0.0.1", port=0)
    properties = tmp_path / "cache" / "properties"
    patch = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example">'
        b"<D:set><D:prop><Z:colour>green</Z:colour></D:prop></D:set></D:propertyupdate>"
    )
    with serve_background(settings, store, hook, writable=policy, property_store=properties) as first:
        assert put(first.mount_url, "/doc.txt", b"text") == 201
        assert request(first.mount_url, "PROPPATCH", "/doc.txt", body=patch).status == 207
    with serve_background(settings, store, hook, writable=policy, property_store=properties) as second:
        props = propfind(second.mount_url, "/doc.txt", depth="0")
    assert props["/doc.txt"].get("{urn:example}colour") == "green"


def test_only_owners_write_when_users_log_in(tmp_path: Path, store: Path, hook: RecordingHook) -> None:
    """With a users file, an owner's PUT and DELETE succeed, a consumer's are refused 403, and both read."""
    users_file = tmp_path / "users.toml"
    add_user(users_file, "olive", Role.OWNER, "owner-secret")
    add_user(users_file, "cody", Role.CONSUMER, "consumer-secret")
    policy = WritePolicy(store, max_upload=LIMIT)
    settings = Settings(host="127.0.0.1", port=0)
    owner = {"Authorization": "Basic " + base64.b64encode(b"olive:owner-secret").decode()}
    consumer = {"Authorization": "Basic " + base64.b64encode(b"cody:consumer-secret").decode()}
    with serve_background(settings, store, hook, writable=policy, users=load_users(users_file)) as handle:
        base = handle.mount_url
        assert request(base, "PUT", "/doc.txt", body=b"x").status == 401
        assert request(base, "PUT", "/doc.txt", body=b"by owner", headers=owner).status == 201
        assert request(base, "PUT", "/doc.txt", body=b"by consumer", headers=consumer).status == 403
        assert request(base, "PUT", "/new.txt", body=b"by consumer", headers=consumer).status == 403
        assert request(base, "DELETE", "/doc.txt", headers=consumer).status == 403
        assert request(base, "MKCOL", "/folder/", headers=consumer).status == 403
        assert request(base, "GET", "/doc.txt", headers=consumer).body == b"by owner"
        assert request(base, "DELETE", "/doc.txt", headers=owner).status == 204
    assert os.listdir(store) == []


def test_writable_root_sweeps_abandoned_temp_files(store: Path) -> None:
    """Starting a writable server removes temp files a crashed upload left behind, not recent ones."""
    from mountd.app import writable_root
    from sync_format.atomic import create_temp

    abandoned, handle = create_temp(store / "report.csv.sync")
    handle.close()
    os.utime(abandoned, (1_000_000_000, 1_000_000_000))
    recent, handle = create_temp(store / "notes.txt.sync")
    handle.close()
    assert writable_root(store) == store
    assert leftovers(store) == [recent.name]


def put_across_a_refresh(url: str, store: Path, headers: str) -> int:
    """PUT ``/report.csv`` whose body arrives in two halves, with a commit (a refresh) landing in between;
    return the status."""
    body = b"uploaded,by,a,person\n" * 10
    parts = urlsplit(url)
    head = (
        f"PUT /report.csv HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n{headers}"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10) as sock:
        sock.sendall(head.encode() + body[:10])
        wait_for(lambda: leftovers(store), 10, what="the upload's temp file (the archive was opened)")
        commit_payload(store / "report.csv.sync", 0, b"refreshed\n")
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_plain_put_replaces_a_refresh_committed_meanwhile(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """A refresh committing while a PUT body arrives does not fail the PUT: the upload is committed on top."""
    add_archive("report.csv.sync", CSV, manifest=editable_csv())
    assert put_across_a_refresh(wurl, store, "") == 204
    with open_archive(store / "report.csv.sync") as snapshot:
        assert snapshot.generation == 2
        assert snapshot.read_payload() == b"uploaded,by,a,person\n" * 10
    assert leftovers(store) == []


def test_conditional_put_fails_when_a_refresh_committed_meanwhile(
    wurl: str, store: Path, add_archive: AddArchive
) -> None:
    """A PUT conditional on the version it saw gets 409 when a refresh committed during its body; the
    refresh's payload stays."""
    add_archive("report.csv.sync", CSV, manifest=editable_csv())
    etag = request(wurl, "GET", "/report.csv").header("etag")
    assert put_across_a_refresh(wurl, store, f"If-Match: {etag}\r\n") == 409
    with open_archive(store / "report.csv.sync") as snapshot:
        assert snapshot.generation == 1
        assert snapshot.read_payload() == b"refreshed\n"
    assert leftovers(store) == []


def test_a_browser_gets_the_folder_view_of_a_writable_store(wurl: str) -> None:
    """The browser view (``mountd.http.browser``) answers for a writable store's folders too."""
    assert put(wurl, "/report.csv", CSV) == 201
    response = request(wurl, "GET", "/", headers={"Accept": "text/html"})
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    assert b"report.csv" in response.body


def test_two_ranges_of_a_writable_archive_get_multipart_byteranges(wurl: str) -> None:
    """Several ranges of a writable store's archive get one 206 multipart/byteranges, as read-only ones do."""
    body = bytes(range(256)) * 4
    assert put(wurl, "/blob.bin", body) == 201
    response = request(wurl, "GET", "/blob.bin", headers={"Range": "bytes=0-9,100-109"})
    assert response.status == 206
    assert (response.header("content-type") or "").startswith("multipart/byteranges")
    assert body[0:10] in response.body
    assert body[100:110] in response.body


def test_copying_from_a_fifo_renamed_over_the_source_is_refused_not_waited_on(tmp_path: Path) -> None:
    """COPY's byte copy (``_copy_file``) when a FIFO was renamed over the source after it was resolved:
    refused at once with an error, the target never made, instead of waiting for a writer in ``open`` (or
    copying whatever one writes)."""
    fifo, target = tmp_path / "a.csv.sync", tmp_path / "b.csv.sync"
    os.mkfifo(fifo)
    identity = FileIdentity.from_stat(os.stat(fifo))
    copy = lambda: archives._copy_file(WritePolicy(tmp_path), fifo, target, "a.csv", identity)  # noqa: E731
    refused = outcome_beside_a_fifo(copy, fifo)
    assert isinstance(refused, DAVError)
    assert "not a regular file" in str(refused.context_info)
    assert not target.exists()


def test_copy_reads_only_the_archive_it_resolved(tmp_path: Path) -> None:
    """COPY's byte copy opens the source by name again: a symlink renamed over the name (to a file only the
    server may read) is not followed, and another file than the resolved version is not copied (409)."""
    source, target = tmp_path / "a.csv.sync", tmp_path / "b.csv.sync"
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET")
    source.write_bytes(b"the archive")
    identity = FileIdentity.from_stat(os.stat(source))
    source.unlink()
    source.symlink_to(secret)
    with pytest.raises(DAVError) as followed:
        archives._copy_file(WritePolicy(tmp_path), source, target, "a.csv", identity)
    assert followed.value.value == 409
    assert not target.exists()
    source.unlink()
    source.write_bytes(b"another file under the name")
    with pytest.raises(DAVError) as refused:
        archives._copy_file(WritePolicy(tmp_path), source, target, "a.csv", identity)
    assert refused.value.value == 409
    assert not target.exists()


def test_an_upload_is_committed_from_what_was_received_not_from_its_temp_files_name(
    wurl: str, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who may write to the folder renames a symlink to a file only the server may read over a PUT's
    temp file once the body is complete: the new archive (and an overwrite of it) holds what was uploaded,
    never that file (the body is read through the descriptor it was written to)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET-HASHES\n")
    finish = uploads.UploadSink.finish

    def finish_then_swap(sink: uploads.UploadSink) -> uploads.Body:
        body = finish(sink)
        assert sink.path is not None
        link = sink.path.with_name(".attack")
        link.symlink_to(secret)
        os.replace(link, sink.path)  # the local user's move, between the upload and its commit
        return body

    monkeypatch.setattr(uploads.UploadSink, "finish", finish_then_swap)
    assert put(wurl, "/new.csv", CSV) == 201
    assert request(wurl, "GET", "/new.csv").body == CSV
    assert put(wurl, "/new.csv", b"a,b\n3,4\n") == 204
    assert request(wurl, "GET", "/new.csv").body == b"a,b\n3,4\n"
    assert leftovers(store) == []


def test_an_overwrite_waits_for_a_held_commit_lock_only_so_long(
    wurl: str, store: Path, add_archive: AddArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone keeps the folder's commit lock (anyone who can read the folder can take it): an overwrite
    answers 503 after ``COMMIT_LOCK_WAIT`` and leaves the archive as it was, other requests are answered
    meanwhile, and once the lock is let go the same PUT succeeds."""
    monkeypatch.setattr(swap, "COMMIT_LOCK_WAIT", 0.3)
    add_archive("doc.csv.sync", CSV, manifest=editable_csv())
    holder = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        refused = request(wurl, "PUT", "/doc.csv", body=b"a,b\n", timeout=30)
        assert refused.status == 503
        assert b"busy" in refused.body
        assert request(wurl, "GET", "/doc.csv").body == CSV
        assert leftovers(store) == []
    finally:
        os.close(holder)
    assert put(wurl, "/doc.csv", b"a,b\n") == 204
    assert request(wurl, "GET", "/doc.csv").body == b"a,b\n"


def test_a_name_created_meanwhile_is_the_resource_a_racing_put_or_lock_meets(
    wurl: str, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request (or replica) creates the file of a new name between this request's look-up and its
    create: the racing PUT overwrites that archive and the racing LOCK locks it, rather than a 409 for a name
    that is listed as asked (the refusal is for files listed under another name)."""
    original = WritePolicy.archive_for

    def created_meanwhile(self: WritePolicy, path: str) -> Path:
        target = store_path_for(self.root, path.strip("/"))
        if not target.exists():
            archives.create_archive(self, target, path.strip("/"), None)  # the other request's create
        return original(self, path)

    monkeypatch.setattr(WritePolicy, "archive_for", created_meanwhile)
    # wsgidav answers 201 (it resolved a new name); what is there now is overwritten, not replaced by name.
    assert request(wurl, "PUT", "/raced.csv", body=CSV).status == 201
    assert request(wurl, "GET", "/raced.csv").body == CSV
    # A create-only PUT (If-None-Match: *) was checked against "nothing there": it must not overwrite.
    assert put(wurl, "/raced-create-only.csv", b"mine\n", **{"If-None-Match": "*"}) == 412
    lock_body = (
        b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        b"<D:locktype><D:write/></D:locktype><D:owner>test</D:owner></D:lockinfo>"
    )
    locked = request(wurl, "LOCK", "/raced-lock.csv", body=lock_body)
    assert locked.status == 201  # (wsgidav's answer for a name it resolved as new) the lock of what is there
    assert put(wurl, "/raced-lock.csv", b"other\n") == 423


def test_an_upload_that_cannot_close_its_temp_file_still_cleans_up(tmp_path: Path) -> None:
    """Closing the temp file can fail (its buffered bytes cannot be flushed: EIO, a quota on close over
    NFS): the temp file is still removed and its folder's descriptor closed (before, both were left)."""
    (tmp_path / "dir").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    sink = uploads.UploadSink(tmp_path / "dir" / "x.csv.sync", 1 << 20, None, tmp_path)
    sink.write(b"body")
    real = sink._file

    class FailsToClose:
        closed = False

        def close(self) -> None:
            real.close()
            raise OSError(5, "Input/output error")

    sink._file = FailsToClose()  # type: ignore[assignment]
    sink.discard()
    assert list((tmp_path / "dir").iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    "name", ["Dr. Who notes", "version 1.0 draft", "prog.c++", "photo.jpg copy", "x.\u00e4", "x." + "e" * 40]
)
def test_a_name_whose_last_dot_starts_no_extension_is_stored_under_that_name(
    wurl: str, store: Path, name: str
) -> None:
    """A file whose text after the last dot is no extension a manifest may carry (a space, ``+``, a
    non-ASCII letter, too long) is stored and listed under its name, as ``application/octet-stream``, with
    no extension in its manifest (it was 500: the upload template wrote that text as ``display_ext``, which
    the manifest refused). rclone copies a file called "Dr. Who notes" this way."""
    path = "/" + quote(name)
    assert request(wurl, "PUT", path, body=b"hello\n").status == 201
    got = request(wurl, "GET", path)
    assert got.status == 200
    assert got.body == b"hello\n"
    assert got.header("Content-Type") == "application/octet-stream"
    assert name in names(propfind(wurl, "/"))
    with open_archive(store / f"{name}.sync") as snapshot:
        assert snapshot.manifest.sync.display_ext == ""
    assert request(wurl, "LOCK", "/" + quote("another " + name), body=lock_body()).status == 201


@pytest.mark.parametrize("method", ["COPY", "MOVE"])
def test_a_copy_or_move_is_listed_under_the_name_asked_for_or_refused(
    wurl: str, store: Path, method: str
) -> None:
    """A copy keeps its source's manifest, so ``/a.txt`` copied to ``/zz`` would be listed as ``zz.txt``
    (it was: 201, and ``/zz`` stayed 404): refused with 403 naming the listed name, nothing made; to
    ``/zz.txt`` it is made and listed there."""
    assert request(wurl, "PUT", "/a.txt", body=b"a\n").status == 201
    refused = request(wurl, method, "/a.txt", headers={"Destination": f"{wurl}/zz"})
    assert refused.status == 403
    assert b"zz.txt" in refused.body
    assert not (store / "zz.sync").exists()
    assert (store / "a.txt.sync").exists()
    assert request(wurl, method, "/a.txt", headers={"Destination": f"{wurl}/zz.txt"}).status == 201
    assert request(wurl, "GET", "/zz.txt").body == b"a\n"
    assert (store / "a.txt.sync").exists() is (method == "COPY")
