"""Authentication and roles of mountd: the users file, challenges, basic and digest logins, the role a
request gets (through a probe app behind the same authenticator config), startup refusals, real clients."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cheroot import wsgi
from dav_client import Response, request
from wsgidav.http_authenticator import HTTPAuthenticator

from broker import Settings
from broker.settings import SettingsError
from mountd import (
    PasswordHash,
    Role,
    ServerHandle,
    UsersFileError,
    UserTable,
    add_user,
    load_users,
    remove_user,
    serve_background,
)
from mountd.auth.access import auth_config, may_write, role_of
from mountd.auth.users import parse_users
from mountd.server import SELECTOR_INTERVAL
from sync_format import BuildResult
from sync_format.testing import make_manifest

AddArchive = Callable[..., BuildResult]
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
PAYLOAD = b"authenticated payload\n"
CLIENT_TIMEOUT = 60
#: The wildcard address: how the policy treats a non-loopback bind is what the tests using it check.
PUBLIC = "0.0.0.0"  # noqa: S104


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice: owner with digest; bob: consumer with digest; carol: owner, basic only."""
    path = tmp_path_factory.mktemp("auth") / "users.toml"
    add_user(path, "alice", Role.OWNER, PASSWORDS["alice"], digest=True)
    add_user(path, "bob", Role.CONSUMER, PASSWORDS["bob"], digest=True)
    add_user(path, "carol", Role.OWNER, PASSWORDS["carol"])
    return path


@pytest.fixture(scope="module")
def users(users_file: Path) -> UserTable:
    """The users file, loaded."""
    return load_users(users_file)


@pytest.fixture
def auth_server(store: Path, add_archive: AddArchive, users: UserTable) -> Iterator[ServerHandle]:
    """mountd on 127.0.0.1 with the users file, serving one archive ``data.txt``."""
    add_archive("data.txt.sync", PAYLOAD)
    with serve_background(Settings(host="127.0.0.1", port=0), store, users=users) as handle:
        yield handle


def basic(name: str, password: str) -> dict[str, str]:
    """An Authorization header with Basic credentials."""
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- the users file ---


def test_users_file_round_trip(users_file: Path, users: UserTable) -> None:
    """add_user writes mode 0600, no plain password, and a table that verifies the right password only."""
    assert users_file.stat().st_mode & 0o777 == 0o600
    text = users_file.read_text()
    for password in PASSWORDS.values():
        assert password not in text
    alice = users.get("alice")
    assert alice is not None
    assert alice.role is Role.OWNER
    assert alice.password_hash.verify(PASSWORDS["alice"])
    assert not alice.password_hash.verify("wrong")
    assert alice.digest_ha1 is not None
    carol = users.get("carol")
    assert carol is not None
    assert carol.digest_ha1 is None
    assert parse_users(users.dump()).users.keys() == users.users.keys()


def test_add_replaces_and_remove_deletes(tmp_path: Path) -> None:
    """Adding a user again replaces role and password (dropping its HA1); removing leaves the others."""
    path = tmp_path / "users.toml"
    assert add_user(path, "dana", Role.OWNER, "first", digest=True) is False
    assert add_user(path, "erik", Role.CONSUMER, "second") is False
    assert add_user(path, "dana", Role.CONSUMER, "third") is True
    dana = load_users(path).get("dana")
    assert dana is not None
    assert (dana.role, dana.digest_ha1) == (Role.CONSUMER, None)
    assert dana.password_hash.verify("third")
    remove_user(path, "dana")
    assert list(load_users(path).users) == ["erik"]
    with pytest.raises(UsersFileError, match="no such user"):
        remove_user(path, "dana")


GOOD_HASH = PasswordHash(1, 1, 1, b"salt", b"k" * 32).encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[users.a\n", r"users\.toml: not valid TOML: .*line 1", id="not-toml"),
        pytest.param(
            'realm = "sync"\nuser = 1\n', r"users\.toml:2: unknown key 'user'", id="unknown-top-key"
        ),
        pytest.param(
            f'\n[users.ann]\nrole = "admin"\npassword_hash = "{GOOD_HASH}"\n',
            r"users\.toml:2: user 'ann': role must be 'owner' or 'consumer', not 'admin'",
            id="bad-role",
        ),
        pytest.param(
            '[users.ann]\nrole = "owner"\npassword_hash = "hunter2"\n',
            r"users\.toml:1: user 'ann': password_hash is not of the form",
            id="plain-password",
        ),
        pytest.param(
            '[users.ann]\nrole = "owner"\npassword = "hunter2"\n',
            r"user 'ann': unknown key 'password'",
            id="password-field",
        ),
        pytest.param(
            f'[users."a:b"]\nrole = "owner"\npassword_hash = "{GOOD_HASH}"\n',
            r"users\.toml:1: user 'a:b': user names must match",
            id="colon-in-name",
        ),
        pytest.param(
            f'[users.ann]\nrole = "owner"\npassword_hash = "{GOOD_HASH}"\ndigest_ha1 = "xyz"\n',
            r"user 'ann': digest_ha1 must be 32 lower-case hex digits",
            id="bad-ha1",
        ),
        pytest.param(
            '[users.ann]\nrole = "owner"\npassword_hash = "' + GOOD_HASH.replace("ln=1,", "ln=30,") + '"\n',
            r"user 'ann': scrypt parameters out of range",
            id="hash-cost-too-high",
        ),
    ],
)
def test_malformed_users_file_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    """Every kind of malformed users file raises UsersFileError naming the file, line and user."""
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=expected):
        load_users(path)


# --- challenges and logins on the real server ---


def test_no_credentials_gets_401_with_challenge(auth_server: ServerHandle) -> None:
    """Without credentials every request gets 401 and a challenge (Digest: the file has HA1 values)."""
    for method in ("GET", "PROPFIND", "OPTIONS"):
        resp = request(auth_server.mount_url, method, "/data.txt", headers={"Depth": "0"})
        assert resp.status == 401, (method, resp.status)
        assert (resp.header("www-authenticate") or "").startswith('Digest realm="sync"'), resp.headers


def test_basic_only_file_challenges_with_basic(store: Path, tmp_path: Path) -> None:
    """A users file without HA1 values challenges with Basic."""
    path = tmp_path / "users.toml"
    add_user(path, "carol", Role.OWNER, PASSWORDS["carol"])
    with serve_background(Settings(host="127.0.0.1", port=0), store, users=load_users(path)) as handle:
        resp = request(handle.mount_url, "GET", "/")
    assert resp.status == 401
    assert resp.header("www-authenticate") == 'Basic realm="sync"'


@pytest.mark.parametrize(
    ("name", "password"),
    [("alice", "wrong"), ("alice", ""), ("nobody", "alice-secret"), ("bob", "alice-secret")],
)
def test_wrong_credentials_get_401(auth_server: ServerHandle, name: str, password: str) -> None:
    """A wrong password or an unknown user gets 401, never the payload."""
    resp = request(auth_server.mount_url, "GET", "/data.txt", headers=basic(name, password))
    assert resp.status == 401
    assert PAYLOAD not in resp.body


@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_right_password_reads(auth_server: ServerHandle, name: str) -> None:
    """Each user reads the payload with basic credentials."""
    resp = request(auth_server.mount_url, "GET", "/data.txt", headers=basic(name, PASSWORDS[name]))
    assert (resp.status, resp.body) == (200, PAYLOAD)


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!",
        "Basic",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff:x").decode(),
    ],
)
def test_malformed_basic_credentials_get_400(auth_server: ServerHandle, header: str) -> None:
    """Basic credentials wsgidav could not decode get 400 with a reason, not a 500."""
    resp = request(auth_server.mount_url, "GET", "/data.txt", headers={"Authorization": header})
    assert resp.status == 400
    assert b"Basic credentials" in resp.body


def digest_get(url: str, name: str, password: str) -> tuple[int, bytes]:
    """GET with urllib's digest handler (it answers the server's challenge)."""
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, url, name, password)
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(manager))
    try:
        with opener.open(url, timeout=CLIENT_TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_digest_login_works_when_ha1_is_stored(auth_server: ServerHandle) -> None:
    """A digest client logs in with the right password and is refused with a wrong one."""
    url = auth_server.mount_url + "/data.txt"
    assert digest_get(url, "alice", PASSWORDS["alice"]) == (200, PAYLOAD)
    assert digest_get(url, "alice", "wrong")[0] == 401


def test_digest_login_fails_without_ha1(auth_server: ServerHandle) -> None:
    """A user stored without --digest cannot log in with digest (but can with basic)."""
    url = auth_server.mount_url + "/data.txt"
    assert digest_get(url, "carol", PASSWORDS["carol"])[0] == 401


def test_consumer_and_anonymous_writes_are_refused(auth_server: ServerHandle, store: Path) -> None:
    """An anonymous DELETE is challenged (401), a Consumer's is refused (403), and the archive stays."""
    url = auth_server.mount_url
    assert request(url, "DELETE", "/data.txt").status == 401
    assert request(url, "DELETE", "/data.txt", headers=basic("bob", PASSWORDS["bob"])).status == 403
    assert request(url, "PUT", "/new.txt", headers=basic("bob", PASSWORDS["bob"]), body=b"x").status == 403
    assert (store / "data.txt.sync").exists()
    assert not (store / "new.txt.sync").exists()


def test_password_is_hashed_once_per_user(auth_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Basic credentials sent with every request cost one scrypt hash; each wrong password costs one."""
    calls: list[str] = []
    original = PasswordHash.verify

    def counting(self: PasswordHash, password: str) -> bool:
        calls.append(password)
        return original(self, password)

    monkeypatch.setattr(PasswordHash, "verify", counting)
    url = auth_server.mount_url
    for _ in range(5):
        assert request(url, "GET", "/data.txt", headers=basic("carol", PASSWORDS["carol"])).status == 200
    for _ in range(2):
        assert request(url, "GET", "/data.txt", headers=basic("carol", "wrong")).status == 401
    assert calls == [PASSWORDS["carol"], "wrong", "wrong"]


# --- the role a request gets: a probe app behind the same authenticator config ---


def probe(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answer with the request's role and write permission as JSON."""
    base = make_manifest()
    allowed = environ.get("QUERY_STRING") == "write_allowed"
    manifest = replace(base, ownership=replace(base.ownership, write_allowed=allowed))
    body = json.dumps(
        {
            "role": role_of(environ).value,
            "may_write": may_write(environ),
            "may_write_archive": may_write(environ, manifest),
            "user": environ.get("wsgidav.auth.user_name"),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@contextmanager
def probe_server(config: dict[str, Any]) -> Iterator[str]:
    """Serve ``probe`` behind wsgidav's HTTPAuthenticator with ``config`` on 127.0.0.1; yield its URL."""
    app = HTTPAuthenticator(None, probe, {"verbose": 3, **config})
    server = wsgi.Server(("127.0.0.1", 0), app)
    server.expiration_interval = SELECTOR_INTERVAL  # as mountd: stop() returns within this
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.bind_addr[1]}"
    finally:
        server.stop()
        thread.join(10)


def probe_get(url: str, path: str = "/x", headers: dict[str, str] | None = None, query: str = "") -> Response:
    """GET the probe; the query selects the manifest's write_allowed."""
    return request(url, "GET", f"{path}?{query}" if query else path, headers=headers)


def probe_role(resp: Response) -> tuple[str, bool]:
    """The (role, may_write) a 200 probe answer reports."""
    assert resp.status == 200, resp.status
    doc = json.loads(resp.body)
    return doc["role"], doc["may_write"]


CASES = [
    # (users?, host, allow_anonymous, credentials, expected status, expected (role, may_write))
    pytest.param(True, "127.0.0.1", False, None, 401, None, id="users-anonymous-challenged"),
    pytest.param(True, "127.0.0.1", False, "alice", 200, ("owner", True), id="users-owner"),
    pytest.param(True, "127.0.0.1", False, "bob", 200, ("consumer", False), id="users-consumer"),
    pytest.param(True, PUBLIC, True, None, 200, ("consumer", False), id="users+anonymous-anonymous"),
    pytest.param(True, PUBLIC, True, "alice", 200, ("owner", True), id="users+anonymous-owner"),
    pytest.param(True, PUBLIC, True, "bad", 401, None, id="users+anonymous-wrong-password"),
    pytest.param(False, "127.0.0.1", False, None, 200, ("owner", True), id="loopback-anonymous-owner"),
    pytest.param(False, "::1", True, None, 200, ("owner", True), id="loopback6-anonymous-owner"),
    pytest.param(False, PUBLIC, True, None, 200, ("consumer", False), id="public-anonymous-consumer"),
]


@pytest.mark.parametrize(("with_users", "host", "allow_anonymous", "who", "status", "expected"), CASES)
def test_role_in_environ(
    users: UserTable,
    with_users: bool,
    host: str,
    allow_anonymous: bool,
    who: str | None,
    status: int,
    expected: tuple[str, bool] | None,
) -> None:
    """Each access policy gives each kind of request the role (and write permission) of the table."""
    config = auth_config(users if with_users else None, host=host, allow_anonymous=allow_anonymous)
    headers = None
    if who == "bad":
        headers = basic("alice", "wrong")
    elif who is not None:
        headers = basic(who, PASSWORDS[who])
    with probe_server(config) as url:
        resp = probe_get(url, headers=headers)
    assert resp.status == status
    if expected is not None:
        assert probe_role(resp) == expected


def test_owner_writes_only_where_the_manifest_allows(users: UserTable) -> None:
    """may_write with a manifest also needs ownership.write_allowed (spec §6.2); a Consumer never writes."""
    with probe_server(auth_config(users, host="127.0.0.1", allow_anonymous=False)) as url:
        owner = basic("alice", PASSWORDS["alice"])
        consumer = basic("bob", PASSWORDS["bob"])
        assert json.loads(probe_get(url, headers=owner).body)["may_write_archive"] is False
        assert json.loads(probe_get(url, headers=owner, query="write_allowed").body)["may_write_archive"]
        assert not json.loads(probe_get(url, headers=consumer, query="write_allowed").body)[
            "may_write_archive"
        ]
        assert json.loads(probe_get(url, headers=owner).body)["user"] == "alice"


def test_role_of_without_authenticator_is_consumer() -> None:
    """An environ that never passed the controller is a Consumer that may not write (deny by default)."""
    assert role_of({}) is Role.CONSUMER
    assert may_write({}) is False


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/.well-known/sync/health", 200),
        ("HEAD", "/.well-known/sync/metrics", 200),
        ("PUT", "/.well-known/sync/health", 401),
        ("GET", "/.well-known/other", 401),
        ("GET", "/data/.well-known/sync/health", 401),
    ],
)
def test_well_known_sync_is_open_for_reading(users: UserTable, method: str, path: str, status: int) -> None:
    """GET/HEAD under /.well-known/sync/ pass without credentials, as Consumer; nothing else does."""
    with probe_server(auth_config(users, host="127.0.0.1", allow_anonymous=False)) as url:
        resp = request(url, method, path)
    assert resp.status == status
    if method == "GET" and status == 200:
        assert probe_role(resp) == ("consumer", False)


# --- startup refusals ---


def test_public_address_without_users_refuses_to_start(store: Path) -> None:
    """Binding 0.0.0.0 with no users file and no allow_anonymous raises SettingsError before binding."""
    with pytest.raises(SettingsError, match=r"refusing to serve 0\.0\.0\.0 without authentication"):
        serve_background(Settings(host=PUBLIC, port=0), store)


def test_public_address_with_allow_anonymous_serves_read_only(store: Path, add_archive: AddArchive) -> None:
    """With allow_anonymous a 0.0.0.0 server starts; anonymous clients read and may not write."""
    add_archive("data.txt.sync", PAYLOAD)
    settings = Settings(host=PUBLIC, port=0, allow_anonymous=True)
    with serve_background(settings, store) as handle:
        url = f"http://127.0.0.1:{handle.port}"
        resp = request(url, "GET", "/data.txt")
        delete = request(url, "DELETE", "/data.txt")
    assert (resp.status, resp.body) == (200, PAYLOAD)
    assert delete.status == 403


def test_users_file_without_users_refuses_to_start(store: Path, tmp_path: Path) -> None:
    """A users file with no users (nobody could log in) is refused at startup."""
    path = tmp_path / "users.toml"
    path.write_text('realm = "sync"\n')
    with pytest.raises(UsersFileError, match="has no users"):
        serve_background(Settings(host="127.0.0.1", port=0), store, users=load_users(path))


# --- real clients ---


@pytest.fixture
def client_home(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME is a fresh directory (no user config, .netrc or rclone.conf)."""
    home = tmp_path / "home"
    home.mkdir()
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


def run_client(
    command: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion (it must be installed: make system-deps)."""
    executable = shutil.which(command[0])
    assert executable is not None, f"{command[0]} is not installed (make system-deps)"
    return subprocess.run(
        [executable, *command[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )


def rclone_lsf(url: str, env: dict[str, str], user: str, password: str) -> subprocess.CompletedProcess[str]:
    """``rclone lsf`` of the server with basic credentials (the password obscured as rclone wants)."""
    obscured = run_client(["rclone", "obscure", password], env).stdout.strip()
    return run_client(
        [
            "rclone", "--config", "", "--low-level-retries", "1", "--retries", "1",
            "lsf", ":webdav:", "--webdav-url", url, "--webdav-user", user, "--webdav-pass", obscured,
        ],
        env,
    )  # fmt: skip


def test_rclone_logs_in(auth_server: ServerHandle, client_home: dict[str, str]) -> None:
    """rclone lists the store with the right password and fails with a wrong one."""
    good = rclone_lsf(auth_server.mount_url, client_home, "bob", PASSWORDS["bob"])
    assert good.returncode == 0, good.stderr
    assert good.stdout.split() == ["data.txt"]
    bad = rclone_lsf(auth_server.mount_url, client_home, "bob", "wrong")
    assert bad.returncode != 0
    assert "401" in bad.stderr or "Unauthorized" in bad.stderr or "Not Authorized" in bad.stderr, bad.stderr


def test_cadaver_logs_in_with_netrc(
    auth_server: ServerHandle, client_home: dict[str, str], tmp_path: Path
) -> None:
    """cadaver answers the Digest challenge with credentials from ~/.netrc and downloads the payload."""
    netrc = Path(client_home["HOME"]) / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {PASSWORDS['alice']}\n")
    netrc.chmod(0o600)
    target = tmp_path / "from-cadaver.txt"
    done = run_client(
        ["cadaver", auth_server.mount_url + "/"], client_home, stdin=f"get data.txt {target}\nquit\n"
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert target.read_bytes() == PAYLOAD
