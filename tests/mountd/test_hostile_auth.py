"""Locks and digest logins against hostile clients, on a real mountd on 127.0.0.1 with a users file:
who may lock, lock lifetimes, owners breaking other users' locks, forged and replayed digest nonces."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dav_client import request
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import ServerHandle, serve_background
from mountd.auth.users import Role, UserTable, add_user, load_users
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult, OwnershipSection

AddArchive = Callable[..., BuildResult]
PASSWORDS = {"olga": "olga-secret", "otto": "otto-secret", "cora": "cora-secret"}
LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
    b"<locktype><write/></locktype><owner>me</owner></lockinfo>"
)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserTable:
    """olga and otto: owners (olga with digest); cora: consumer."""
    path = tmp_path_factory.mktemp("hostile-auth") / "users.toml"
    add_user(path, "olga", Role.OWNER, PASSWORDS["olga"], digest=True)
    add_user(path, "otto", Role.OWNER, PASSWORDS["otto"])
    add_user(path, "cora", Role.CONSUMER, PASSWORDS["cora"])
    return load_users(path)


def _serve(store: Path, users: UserTable, hook: RecordingHook, *, anonymous: bool) -> ServerHandle:
    settings = Settings(host="127.0.0.1", port=0, allow_anonymous=anonymous)
    policy = WritePolicy(store, max_upload=1 << 20)
    return serve_background(settings, store, hook, writable=policy, users=users)


@pytest.fixture
def lserver(
    store: Path, add_archive: AddArchive, users: UserTable, hook: RecordingHook
) -> Iterator[ServerHandle]:
    """A writable mountd with users and anonymous consumers; ``free.csv`` writable, ``fixed.csv`` not."""
    add_archive(
        "free.csv.sync",
        b"a\n",
        manifest=replace(csv_manifest(), ownership=OwnershipSection(write_allowed=True)),
    )
    add_archive("fixed.csv.sync", b"b\n", manifest=csv_manifest())
    (store / "dir").mkdir()
    with _serve(store, users, hook, anonymous=True) as handle:
        yield handle


def basic(name: str) -> dict[str, str]:
    """Basic credentials of a test user."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()}


def lock(url: str, path: str, who: str | None, **headers: str) -> tuple[int, str, str]:
    """LOCK ``path`` as ``who`` (None: anonymous); (status, lock token, timeout granted)."""
    sent = {"Content-Type": "application/xml", **headers, **(basic(who) if who else {})}
    resp = request(url, "LOCK", path, headers=sent, body=LOCK_BODY)
    timeout = re.search(rb"<[^>]*timeout>([^<]*)<", resp.body)
    return (
        resp.status,
        (resp.header("lock-token") or "").strip("<>"),
        timeout.group(1).decode() if timeout else "",
    )


def test_consumers_and_anonymous_clients_may_not_lock(lserver: ServerHandle) -> None:
    """A consumer's LOCK and an anonymous LOCK (anonymous is read-only) get 403; nothing is locked."""
    url = lserver.mount_url
    assert lock(url, "/dir/", "cora", Depth="infinity", Timeout="Infinite")[0] == 403
    assert lock(url, "/", None, Depth="infinity", Timeout="Infinite")[0] == 403
    assert request(url, "PUT", "/dir/new.csv", body=b"x\n", headers=basic("olga")).status == 201


def test_lock_timeouts_are_capped_at_one_hour(lserver: ServerHandle) -> None:
    """Timeout: Infinite and Second-2419200 (four weeks) are granted as one hour."""
    url = lserver.mount_url
    for path, asked in (("/free.csv", "Infinite"), ("/dir/", "Second-2419200")):
        status, _, timeout = lock(url, path, "olga", Timeout=asked, Depth="infinity")
        assert status == 200
        assert timeout.startswith("Second-")
        assert 3500 < int(timeout.removeprefix("Second-")) <= 3600  # what is left of the hour granted


def test_an_owner_breaks_another_users_lock(lserver: ServerHandle) -> None:
    """olga locks a folder; otto (owner) is blocked (423), UNLOCKs olga's lock (204) and then writes."""
    url = lserver.mount_url
    status, token, _ = lock(url, "/dir/", "olga", Depth="infinity", Timeout="Infinite")
    assert status == 200
    assert token
    assert request(url, "PUT", "/dir/a.csv", body=b"x\n", headers=basic("otto")).status == 423
    assert (
        request(url, "UNLOCK", "/dir/", headers={"Lock-Token": f"<{token}>", **basic("cora")}).status == 403
    )
    assert (
        request(url, "UNLOCK", "/dir/", headers={"Lock-Token": f"<{token}>", **basic("otto")}).status == 204
    )
    assert request(url, "PUT", "/dir/a.csv", body=b"x\n", headers=basic("otto")).status == 201


def test_write_protected_archives_cannot_be_locked(lserver: ServerHandle) -> None:
    """An archive with write_allowed = false cannot be locked, even by an owner."""
    assert lock(lserver.mount_url, "/fixed.csv", "olga")[0] == 403
    assert lock(lserver.mount_url, "/free.csv", "olga")[0] == 200


# --- digest nonces ---


def _digest_header(user: str, realm: str, nonce: str, uri: str, nc: int, method: str = "GET") -> str:
    ha1 = hashlib.md5(f"{user}:{realm}:{PASSWORDS[user]}".encode()).hexdigest()  # noqa: S324  # digest is MD5
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()  # noqa: S324
    cnonce = "0a4f113b"
    response = hashlib.md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}".encode()).hexdigest()  # noqa: S324
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5, '
        f'qop=auth, nc={nc:08x}, cnonce="{cnonce}", response="{response}"'
    )


@pytest.fixture
def dserver(
    store: Path, add_archive: AddArchive, users: UserTable, hook: RecordingHook
) -> Iterator[ServerHandle]:
    """mountd with the users file (digest offered), no anonymous access."""
    add_archive("free.csv.sync", b"a\n", manifest=csv_manifest())
    with _serve(store, users, hook, anonymous=False) as handle:
        yield handle


def _challenge(url: str) -> tuple[str, str]:
    resp = request(url, "GET", "/free.csv")
    assert resp.status == 401
    challenge = resp.header("www-authenticate") or ""
    realm = re.search(r'realm="([^"]*)"', challenge)
    nonce = re.search(r'nonce="([^"]*)"', challenge)
    assert realm, challenge
    assert nonce, challenge
    return realm.group(1), nonce.group(1)


def test_a_nonce_the_server_never_issued_is_refused(dserver: ServerHandle) -> None:
    """A correctly computed digest over a made-up nonce gets 401; over an issued one 200."""
    url = dserver.mount_url
    realm, nonce = _challenge(url)
    forged = base64.b64encode(b"1700000000.0:made-up").decode()
    assert (
        request(
            url,
            "GET",
            "/free.csv",
            headers={"Authorization": _digest_header("olga", realm, forged, "/free.csv", 1)},
        ).status
        == 401
    )
    assert (
        request(
            url,
            "GET",
            "/free.csv",
            headers={"Authorization": _digest_header("olga", realm, nonce, "/free.csv", 1)},
        ).status
        == 200
    )


def test_a_replayed_digest_header_is_refused(dserver: ServerHandle) -> None:
    """The same header three times: 200, then 401 (stale) twice; the next nc is accepted."""
    url = dserver.mount_url
    realm, nonce = _challenge(url)
    header = {"Authorization": _digest_header("olga", realm, nonce, "/free.csv", 1)}
    statuses = [request(url, "GET", "/free.csv", headers=header).status for _ in range(3)]
    assert statuses == [200, 401, 401]
    again = request(url, "GET", "/free.csv", headers=header)
    assert "stale=true" in (again.header("www-authenticate") or "")
    nxt = {"Authorization": _digest_header("olga", realm, nonce, "/free.csv", 2)}
    assert request(url, "GET", "/free.csv", headers=nxt).status == 200
