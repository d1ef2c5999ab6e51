"""``syncctl user`` and the access flags of ``syncctl serve``, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountd import load_users

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "0.0.0.0"  # noqa: S104 (the refusal to serve it without auth is what is tested)


def run_cli(
    *args: str | Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m syncctl`` with the repository importable and ``stdin`` piped in (not a terminal)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
        timeout=120,
    )


def assert_one_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 1 with exactly one ``error:`` line on stderr and no traceback; returns that line."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_user_round_trip(tmp_path: Path) -> None:
    """add (password on stdin), list, replace and remove; the file is 0600 and holds no plain password."""
    path = tmp_path / "users.toml"
    added = run_cli("user", "add", path, "alice", "--role", "owner", "--digest", stdin="s3cret-pw\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"added user alice (owner, digest enabled) in {path}\n"
    assert run_cli("user", "add", path, "bob", stdin="other-pw\n").returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "s3cret-pw" not in text
    assert "other-pw" not in text
    table = load_users(path)
    alice = table.get("alice")
    assert alice is not None
    assert alice.password_hash.verify("s3cret-pw")

    listed = run_cli("user", "list", path)
    assert listed.stdout == "alice\towner\tdigest\nbob\tconsumer\n"
    doc = json.loads(run_cli("user", "list", path, "--json").stdout)
    assert doc == {
        "realm": "sync",
        "users": [
            {"name": "alice", "role": "owner", "digest": True},
            {"name": "bob", "role": "consumer", "digest": False},
        ],
    }

    replaced = run_cli("user", "add", path, "bob", "--role", "owner", stdin="new-pw\n")
    assert replaced.stdout.startswith("updated user bob (owner)")
    removed = run_cli("user", "remove", path, "alice")
    assert removed.returncode == 0, removed.stderr
    assert run_cli("user", "list", path).stdout == "bob\towner\n"


@pytest.mark.parametrize(
    ("args", "stdin", "content", "expected"),
    [
        pytest.param(("list",), "", "[users.x\n", "not valid TOML", id="malformed-list"),
        pytest.param(
            ("add", "carol"),
            "pw\n",
            '[users.x]\nrole = "boss"\n',
            "user 'x': role must be",
            id="malformed-add",
        ),
        pytest.param(("remove", "nobody"), "", None, "cannot read", id="missing-file"),
        pytest.param(("add", "carol"), "\n", None, "the password is empty", id="empty-password"),
        pytest.param(("add", "a:b"), "pw\n", None, "user names must match", id="bad-name"),
    ],
)
def test_user_errors_exit_1_with_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: str, content: str | None, expected: str
) -> None:
    """Bad files and bad input exit 1 with one ``error:`` line and leave the file as it was."""
    path = tmp_path / "users.toml"
    if content is not None:
        path.write_text(content)
    result = run_cli("user", args[0], path, *args[1:], stdin=stdin)
    assert expected in assert_one_error(result)
    assert (path.read_text() if path.exists() else None) == content


def test_serve_refuses_public_address_without_auth(tmp_path: Path) -> None:
    """``serve --host 0.0.0.0`` without --auth or --allow-anonymous exits 1 before starting anything."""
    store = tmp_path / "store"
    store.mkdir()
    result = run_cli("serve", store, "--host", PUBLIC, "--port", "0", "--cache-dir", tmp_path / "cache")
    line = assert_one_error(result)
    assert "--auth FILE" in line
    assert "--allow-anonymous" in line
    assert not (tmp_path / "cache").exists()


def test_serve_refuses_bad_users_file(tmp_path: Path) -> None:
    """``serve --auth`` with a malformed users file exits 1 naming the file."""
    store = tmp_path / "store"
    store.mkdir()
    users = tmp_path / "users.toml"
    users.write_text('[users.x]\nrole = "owner"\npassword_hash = "plain"\n')
    result = run_cli("serve", store, "--port", "0", "--auth", users, "--cache-dir", tmp_path / "cache")
    assert f"{users}:1: user 'x'" in assert_one_error(result)
