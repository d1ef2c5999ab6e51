"""Real WebDAV clients list and read a served store, and write to a writable one: rclone and cadaver."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from recording_hook import RecordingHook
from store_manifests import csv_manifest

from broker import Settings
from mountd import serve_background
from mountd.writable.policy import WritePolicy
from sync_format import BuildResult

AddArchive = Callable[..., BuildResult]
CLIENT_TIMEOUT = 60
REPORT = b"region,total\nnorth,12\nsouth,30\n"


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME is a fresh directory (no user config, .netrc or rclone.conf)."""
    home = tmp_path / "home"
    home.mkdir()
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


@pytest.fixture
def served(add_archive: AddArchive) -> None:
    """A store with a CSV report, an xlsx-named archive and a nested folder."""
    add_archive("report.csv.sync", REPORT, manifest=csv_manifest())
    add_archive("sub/notes.txt.sync", b"nested notes\n")


def run(command: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    """Run a client to completion and return its stdout; a non-zero exit fails with its output."""
    executable = shutil.which(command[0])
    assert executable is not None, f"{command[0]} is not installed (make system-deps)"
    done = subprocess.run(
        [executable, *command[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def rclone(url: str, env: dict[str, str], *args: str) -> str:
    """rclone with an on-the-fly ``:webdav:`` remote at ``url`` and no config file."""
    return run(["rclone", "--config", "", "--webdav-url", url, *args], env)


@pytest.mark.usefixtures("served")
def test_rclone_lists_and_reads(url: str, client_env: dict[str, str], tmp_path: Path) -> None:
    """``rclone lsf`` lists display names (also -R); ``rclone cat`` and ``copyto`` read exact bytes."""
    assert sorted(rclone(url, client_env, "lsf", ":webdav:").split()) == ["report.csv", "sub/"]
    assert sorted(rclone(url, client_env, "lsf", "-R", ":webdav:").split()) == [
        "report.csv",
        "sub/",
        "sub/notes.txt",
    ]
    assert rclone(url, client_env, "cat", ":webdav:report.csv") == REPORT.decode()
    target = tmp_path / "copy" / "notes.txt"
    rclone(url, client_env, "copyto", ":webdav:sub/notes.txt", str(target))
    assert target.read_bytes() == b"nested notes\n"


@pytest.mark.usefixtures("served")
def test_cadaver_lists_and_gets(url: str, client_env: dict[str, str], tmp_path: Path) -> None:
    """cadaver's ``ls`` shows the display names and ``get`` downloads the payload exactly."""
    target = tmp_path / "report-from-cadaver.csv"
    script = f"ls /\nget report.csv {target}\nls /sub/\nquit\n"
    out = run(["cadaver", url + "/"], client_env, stdin=script)
    assert re.search(r"^Coll:\s+sub\s", out, re.MULTILINE), out
    assert re.search(rf"^\s+report\.csv\s+{len(REPORT)}\s", out, re.MULTILINE), out
    assert re.search(r"^\s+notes\.txt\s+13\s", out, re.MULTILINE), out
    assert target.read_bytes() == REPORT


@pytest.fixture
def writable_url(store: Path, hook: RecordingHook) -> Iterator[str]:
    """mountd serving ``store`` writable."""
    with serve_background(
        Settings(host="127.0.0.1", port=0), store, hook, writable=WritePolicy(store)
    ) as handle:
        yield handle.mount_url


def test_rclone_writes_to_a_writable_store(
    writable_url: str, store: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    """``rclone copy`` uploads a tree (files become archives), ``check`` finds it equal, ``delete`` works."""
    source = tmp_path / "upload"
    (source / "deep").mkdir(parents=True)
    (source / "data.csv").write_bytes(REPORT)
    (source / "deep" / "blob.bin").write_bytes(os.urandom(300_000))
    rclone(writable_url, client_env, "copy", str(source), ":webdav:incoming")
    assert (store / "incoming" / "data.csv.sync").is_file()
    assert (store / "incoming" / "deep" / "blob.bin.sync").is_file()
    rclone(writable_url, client_env, "check", str(source), ":webdav:incoming")
    assert rclone(writable_url, client_env, "cat", ":webdav:incoming/data.csv") == REPORT.decode()
    rclone(writable_url, client_env, "delete", ":webdav:incoming/deep")
    assert not (store / "incoming" / "deep" / "blob.bin.sync").exists()


def test_cadaver_writes_to_a_writable_store(
    writable_url: str, store: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    """cadaver's ``mkcol``, ``put``, ``move`` and ``get`` round-trip a file through the writable store."""
    local = tmp_path / "notes.txt"
    local.write_bytes(b"written by cadaver\n")
    back = tmp_path / "back.txt"
    script = (
        f"mkcol docs\nput {local} docs/notes.txt\nmove docs/notes.txt docs/final.txt\n"
        f"get docs/final.txt {back}\nquit\n"
    )
    run(["cadaver", writable_url + "/"], client_env, stdin=script)
    assert back.read_bytes() == b"written by cadaver\n"
    assert sorted(os.listdir(store / "docs")) == ["final.txt.sync"]
