"""``syncctl serve`` with nothing installed: a stale read is answered at once, then refreshed by a worker; the
scheduler refreshes an archive about to expire without any read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import wasmtime
from support import wait_for

from sync_format import open_archive
from sync_format.freshness import format_timestamp, now_ns
from sync_format.testing import make_archive, make_manifest

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "syncctl" / "demo_guests" / "append_reading.wat"


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (loopback URL of our server)
        return response.read(), response.headers["ETag"]


@contextlib.contextmanager
def _serving(
    args: list[str], env: dict[str, str], stderr: IO[bytes] | int = subprocess.DEVNULL
) -> Iterator[str]:
    """Run ``python -m ARGS`` in its own session; yield the first line it prints; SIGTERM it at the end."""
    server = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        assert server.stdout is not None
        server.stdout.close()


def _url(line: str) -> str:
    """The mount URL in a ``serving … at URL (…)`` line."""
    return line.split(" at ")[1].split(" ", maxsplit=1)[0]


def test_stale_read_is_served_then_refreshed(tmp_path: Path) -> None:
    """An expired archive is served as it is; one refresh runs on the embedded broker; later reads are new
    (the scheduler is off: this is the read path alone)."""
    store = tmp_path / "store"
    store.mkdir()
    archive = store / "readings.csv.sync"
    manifest = make_manifest(
        content_type="text/csv", display_ext="csv", ttl=1, created_at=format_timestamp(now_ns())
    )
    make_archive(
        archive, b"reading\n1,roof,7.1\n", manifest=manifest, wasm=wasmtime.wat2wasm(GUEST.read_text())
    )
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SYNC_BROKER_URL", None)
    args = ["syncctl", "serve", str(store), "--port", "0", "--workers", "1", "--no-scheduler"]
    with (tmp_path / "serve.log").open("wb") as log, _serving(args, env, log) as line:
        assert line.startswith("serving "), line + (tmp_path / "serve.log").read_text()
        url = _url(line) + "/readings.csv"
        first, etag = _get(url)
        assert first == b"reading\n1,roof,7.1\n"
        with open_archive(archive) as snap:
            expiry = snap.expiry()
        wait_for(expiry.is_expired, timeout=10)
        stale, stale_etag = _get(url)
        assert (stale, stale_etag) == (first, etag)
        fresh, fresh_etag = wait_for(lambda: (r := _get(url))[0] != first and r, timeout=60)
        assert fresh == b"reading\n1,roof,7.1\n2,roof,7.2\n"
        assert fresh_etag != etag
        with open_archive(archive) as snap:
            assert snap.generation == 1
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", "serve left processes behind"


def test_the_scheduler_refreshes_an_archive_nobody_reads(tmp_path: Path) -> None:
    """An archive with a 3 s TTL is refreshed by the scheduler, the embedded broker and a local worker
    without any client reading it (the server gets no request at all)."""
    store = tmp_path / "store"
    store.mkdir()
    archive = store / "readings.csv.sync"
    manifest = make_manifest(
        content_type="text/csv", display_ext="csv", ttl=3, created_at=format_timestamp(now_ns())
    )
    original = b"reading\n1,roof,7.1\n"
    make_archive(archive, original, manifest=manifest, wasm=wasmtime.wat2wasm(GUEST.read_text()))
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SYNC_BROKER_URL", None)
    log_path = tmp_path / "serve.log"

    def generation() -> int:
        with open_archive(archive) as snap:
            return snap.generation

    args = ["syncctl", "serve", str(store), "--port", "0", "--workers", "1"]
    with log_path.open("wb") as log, _serving(args, env, log) as line:
        assert line.startswith("serving "), line + log_path.read_text()
        wait_for(lambda: generation() >= 1, timeout=60)
        with open_archive(archive) as snap:
            assert snap.read_payload().startswith(original + b"2,roof,7.2\n")


def test_sync_mount_serves_one_archive(tmp_path: Path) -> None:
    """``sync-mount ARCHIVE -p 0`` serves that archive under its display name, like the reference."""
    archive = tmp_path / "report.csv.sync"
    make_archive(archive, b"a,b\n1,2\n", manifest=make_manifest(content_type="text/csv", display_ext="csv"))
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    with _serving(["syncctl.mount", str(archive), "-p", "0"], env) as line:
        body, etag = _get(_url(line) + "/report.csv")
        assert body == b"a,b\n1,2\n"
        assert etag.startswith('"')


def test_sync_mount_refuses_a_missing_archive(tmp_path: Path) -> None:
    """``sync-mount`` on a path that is not a file exits 1 with one ``error:`` line."""
    result = subprocess.run(
        [sys.executable, "-m", "syncctl.mount", str(tmp_path / "missing.sync")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1


def test_sync_mount_writable_creates_the_store_and_takes_uploads(tmp_path: Path) -> None:
    """``sync-mount --writable DIR -p 0`` creates DIR, and a PUT there becomes an archive served back."""
    store = tmp_path / "new-store"
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    with _serving(["syncctl.mount", "--writable", str(store), "-p", "0"], env) as line:
        assert "(writable)" in line, line
        url = _url(line)
        upload = urllib.request.Request(url + "/notes.md", data=b"# hello\n", method="PUT")  # noqa: S310
        with urllib.request.urlopen(upload, timeout=30) as response:  # noqa: S310  (loopback URL of our server)
            assert response.status == 201
        assert (store / "notes.md.sync").is_file()
        body, _ = _get(url + "/notes.md")
        assert body == b"# hello\n"


def test_sync_mount_writable_refuses_a_file(tmp_path: Path) -> None:
    """``sync-mount --writable`` on an existing file exits 1 with one ``error:`` line, like the reference."""
    archive = tmp_path / "report.csv.sync"
    make_archive(archive, b"x")
    result = subprocess.run(
        [sys.executable, "-m", "syncctl.mount", "--writable", str(archive)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1


def test_two_writable_servers_on_one_store_share_locks_and_properties(tmp_path: Path) -> None:
    """Two ``syncctl serve --writable --broker`` processes on one store (replicas): a lock taken through one
    blocks a PUT through the other, and a dead property set through one is read through the other."""
    from redis_server import RedisServer

    store = tmp_path / "store"
    store.mkdir()
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    with RedisServer(tmp_path / "redis") as redis_server, contextlib.ExitStack() as stack:
        urls = []
        for _ in range(2):
            args = ["syncctl", "serve", str(store), "--writable", "--port", "0", "--broker", redis_server.url]
            line = stack.enter_context(_serving([*args, "--workers", "0", "--no-scheduler"], env))
            assert "(writable)" in line, line
            urls.append(_url(line))
        first, second = urls
        assert _dav(first, "PUT", "/a.csv", b"x,y\n")[0] == 201
        find = (
            b'<?xml version="1.0"?><propfind xmlns="DAV:" xmlns:z="urn:z"><prop><z:colour/></prop></propfind>'
        )
        assert (
            b"teal" not in _dav(second, "PROPFIND", "/a.csv", find, Depth="0")[1]
        )  # both have read properties
        patch = (
            b'<?xml version="1.0"?><propertyupdate xmlns="DAV:" xmlns:z="urn:z"><set><prop>'
            b"<z:colour>teal</z:colour></prop></set></propertyupdate>"
        )
        assert _dav(first, "PROPPATCH", "/a.csv", patch)[0] == 207
        find = (
            b'<?xml version="1.0"?><propfind xmlns="DAV:" xmlns:z="urn:z"><prop><z:colour/></prop></propfind>'
        )
        status, body = _dav(second, "PROPFIND", "/a.csv", find, Depth="0")
        assert status == 207
        assert b"teal" in body
        lock = (
            b'<?xml version="1.0"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
            b"<locktype><write/></locktype></lockinfo>"
        )
        assert _dav(first, "LOCK", "/a.csv", lock, Timeout="Second-60")[0] == 200
        assert _dav(second, "PUT", "/a.csv", b"z\n")[0] == 423


def _dav(url: str, method: str, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  (loopback URL of our server)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get_with(url: str, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310  (loopback URL of our server)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return response.read(), dict(response.headers)


def _expired_store(tmp_path: Path) -> tuple[Path, bytes]:
    store = tmp_path / "store"
    store.mkdir()
    manifest = make_manifest(
        content_type="text/csv", display_ext="csv", ttl=60, created_at="2020-01-01T00:00:00Z"
    )
    original = b"reading\n1,roof,7.1\n"
    make_archive(
        store / "readings.csv.sync", original, manifest=manifest, wasm=wasmtime.wat2wasm(GUEST.read_text())
    )
    return store, original


def _no_cache_read(tmp_path: Path, *, workers: int, fresh_wait: str) -> tuple[bytes, bytes, dict[str, str]]:
    """Serve an expired store with the embedded broker, ``workers`` local workers and no scheduler (so only
    the read asks for a refresh); GET it with ``Cache-Control: no-cache``. Returns the original payload,
    the body read and its headers."""
    store, original = _expired_store(tmp_path)
    env = {**os.environ, "SYNC_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SYNC_BROKER_URL", None)
    args = ["syncctl", "serve", str(store), "--port", "0", "--workers", str(workers), "--no-scheduler"]
    with (
        (tmp_path / "serve.log").open("wb") as log,
        _serving([*args, "--fresh-wait", fresh_wait], env, log) as line,
    ):
        assert line.startswith("serving "), line + (tmp_path / "serve.log").read_text()
        body, headers = _get_with(_url(line) + "/readings.csv", {"Cache-Control": "no-cache"})
    return original, body, headers


def test_a_no_cache_read_of_an_expired_archive_returns_the_new_generation(tmp_path: Path) -> None:
    """With the embedded broker and a real worker (the scheduler off, so only the read asks), a
    ``Cache-Control: no-cache`` GET of an expired archive waits for the refresh and returns generation 1,
    marked fresh; a plain GET would have returned the stale payload at once."""
    original, body, headers = _no_cache_read(tmp_path, workers=1, fresh_wait="20s")
    assert body == original + b"2,roof,7.2\n"
    assert "Sync-Stale" not in headers
    assert headers["Cache-Control"].startswith("max-age=")
    with open_archive(tmp_path / "store" / "readings.csv.sync") as snap:
        assert snap.generation == 1


def test_without_workers_a_no_cache_read_gets_the_old_data_marked_stale(tmp_path: Path) -> None:
    """No worker runs: after ``--fresh-wait`` the reader gets what there is, with ``Sync-Stale: true``."""
    original, body, headers = _no_cache_read(tmp_path, workers=0, fresh_wait="1s")
    assert body == original
    assert headers["Sync-Stale"] == "true"
    assert headers["Cache-Control"] == "max-age=0, must-revalidate"
