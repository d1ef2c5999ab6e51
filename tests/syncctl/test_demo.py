"""``syncctl demo``, the README's main job, run as a new user runs it: a subprocess, real HTTP, real signals.

A running demo is shared by the tests that only read from it; the shutdown test starts its own, because it
ends it. Refreshes are awaited by re-reading (each read of an expired archive enqueues one), never by sleeping
a fixed time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from defusedxml import ElementTree
from support import wait_for

from syncctl.demo_source import CSV_HEADER, CSV_ROWS, READING_INTERVAL, DemoSource

#: Seconds for a refresh to show: the 5 s TTL, a queued job and a guest run, with room for a busy machine.
REFRESH_TIMEOUT = 90.0
#: Seconds the demo gets to stop after SIGTERM (workers finish the job in progress first).
STOP_TIMEOUT = 60.0
#: The last line the demo prints once it serves.
READY_LINE = "Ctrl-C stops"
ARCHIVES = ("readings.csv", "feed.json", "appended.csv")


@dataclass
class RunningDemo:
    """A ``syncctl demo`` subprocess that is serving."""

    process: subprocess.Popen[str]
    base: Path
    url: str
    output: str
    log: Path


def _start(base: Path, log: Path) -> RunningDemo:
    env = {**os.environ}
    env.pop("SYNC_BROKER_URL", None)
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncctl", "demo", str(base), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
    assert process.stdout is not None
    lines: list[str] = []
    while not (lines and lines[-1].startswith(READY_LINE)):
        line = process.stdout.readline()
        assert line, "demo exited before serving:\n" + "".join(lines) + log.read_text()
        lines.append(line)
    output = "".join(lines)
    match = re.search(r"^serving .* at (http://\S+) ", output, re.MULTILINE)
    assert match, output
    return RunningDemo(process, base, match.group(1), output, log)


def _stop(demo: RunningDemo) -> int:
    if demo.process.poll() is None:
        demo.process.send_signal(signal.SIGTERM)
    try:
        return demo.process.wait(STOP_TIMEOUT)
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()
        assert demo.process.stdout is not None
        demo.process.stdout.close()


def _processes_naming(path: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True, check=False)
    return found.stdout.splitlines()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """A demo serving a fresh directory for the tests of this module that only read."""
    base = tmp_path_factory.mktemp("shared") / "demo"
    running = _start(base, base.parent / "demo.log")
    yield running
    _stop(running)


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310  (loopback URL of our server)
        return response.read(), response.headers["ETag"]


def _changed(url: str, first: bytes) -> tuple[bytes, str] | None:
    """Read ``url`` once (which also asks for a refresh when it expired); the read when it differs."""
    body, etag = _get(url)
    return (body, etag) if body != first else None


def _propfind(url: str) -> list[str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("PROPFIND", "/", headers={"Depth": "1"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 207, body[:500]
    hrefs = [unquote(e.text or "") for e in ElementTree.fromstring(body).iter("{DAV:}href")]
    return sorted(h.strip("/") for h in hrefs if h.strip("/"))


def _last_reading(csv: bytes) -> int:
    return int(csv.decode().splitlines()[-1].split(",")[0])


def test_prints_mount_instructions_with_its_url(demo: RunningDemo) -> None:
    """Every mount instruction (macOS, Windows, Linux) and the curl line name the URL actually served."""
    root = demo.url + "/"
    for client in ("Finder", "mount_webdav", "net use Z:", "Map network drive", "mount -t davfs", "rclone"):
        line = next(li for li in demo.output.splitlines() if client in li)
        assert root in line, line
    assert f"gio mount {root.replace('http://', 'dav://')}" in demo.output
    assert f"curl -i {root}readings.csv" in demo.output
    assert f"refresh workers log to {demo.base / 'workers.log'}" in demo.output


def test_says_which_loopback_source_it_opens_to_guests(demo: RunningDemo) -> None:
    """The demo opens exactly its own 127.0.0.1 source through the operator setting and says so (issue 11);
    its archives still refresh from it (``test_readings_are_refreshed_from_the_source``)."""
    [line] = [li for li in demo.output.splitlines() if li.startswith("egress:")]
    assert "SYNC_EGRESS_ALLOW_PRIVATE" in line
    assert re.search(r"opens its source 127\.0\.0\.1:\d+ ", line), line


def test_readings_are_refreshed_from_the_source(demo: RunningDemo) -> None:
    """readings.csv is served at once, and after its TTL a worker replaces it with newer source readings."""
    url = demo.url + "/readings.csv"
    first, etag = _get(url)
    assert first.startswith(CSV_HEADER.encode())
    fresh, fresh_etag = wait_for(lambda: _changed(url, first), REFRESH_TIMEOUT, interval=0.5)
    assert fresh.startswith(CSV_HEADER.encode())
    assert "readings.csv.sync status=committed" in (demo.base / "workers.log").read_text()
    assert _last_reading(fresh) > _last_reading(first)
    assert fresh_etag != etag


def test_feed_is_refreshed_from_the_source(demo: RunningDemo) -> None:
    """feed.json is a JSON feed, and after its TTL a worker replaces it with a later one from the source."""
    url = demo.url + "/feed.json"
    first, _ = _get(url)
    feed = json.loads(first)
    assert feed["items"]
    fresh, _ = wait_for(lambda: _changed(url, first), REFRESH_TIMEOUT, interval=0.5)
    assert json.loads(fresh)["updated"] > feed["updated"]


def test_offline_archive_grows_by_itself(demo: RunningDemo) -> None:
    """appended.csv, whose guest needs no network, gains a row at a refresh."""
    url = demo.url + "/appended.csv"
    first, _ = _get(url)
    fresh, _ = wait_for(lambda: _changed(url, first), REFRESH_TIMEOUT, interval=0.5)
    assert fresh.startswith(first)
    assert len(fresh.splitlines()) == len(first.splitlines()) + 1


def test_listing_shows_every_archive(demo: RunningDemo) -> None:
    """A Depth-1 PROPFIND of the root lists the three archives under their display names."""
    assert _propfind(demo.url) == sorted(ARCHIVES)


def test_sigterm_stops_everything(tmp_path: Path) -> None:
    """SIGTERM ends the demo with status 0, and its workers, broker and process group are gone."""
    base = tmp_path / "demo"
    running = _start(base, tmp_path / "demo.log")
    try:
        started = _processes_naming(base)
        assert any(" worker " in p for p in started), started
        assert any("redis-server" in p for p in started), started
    finally:
        status = _stop(running)
    assert status == 0, running.log.read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(running.process.pid, 0)
    assert _processes_naming(base) == []


def test_no_serve_builds_a_store_that_verifies(tmp_path: Path) -> None:
    """``--no-serve`` builds three signed archives that ``syncctl verify --require-signature`` accepts."""
    base = tmp_path / "demo"
    built = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", str(base), "--no-serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    for name in ARCHIVES:
        verified = subprocess.run(
            [
                sys.executable,
                "-m",
                "syncctl",
                "verify",
                str(base / "store" / f"{name}.sync"),
                "--json",
                "--require-signature",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["signature"]["ok"] is True


def test_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """A non-empty directory without the demo's marker is refused with one error line and left untouched."""
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me\n")
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", str(tmp_path), "--no-serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert mine.read_text() == "keep me\n"


def test_source_documents_move_with_the_clock() -> None:
    """One interval later the source serves one more reading, and it keeps only the last ``CSV_ROWS``."""
    now = [10**18]
    source = DemoSource(clock_ns=lambda: now[0])
    before = source.readings_csv(source.latest())
    now[0] += int(READING_INTERVAL * 1e9)
    after = source.readings_csv(source.latest())
    assert _last_reading(after) == _last_reading(before) + 1
    now[0] += int(CSV_ROWS * READING_INTERVAL * 1e9)
    rows = source.readings_csv(source.latest()).decode().splitlines()
    assert len(rows) == 1 + CSV_ROWS


def test_source_serves_its_documents_over_http() -> None:
    """The started source answers its two paths with 200 and anything else with 404, on 127.0.0.1."""
    with DemoSource() as source:
        assert source.host_entry.startswith("127.0.0.1:")
        csv, _ = _get_plain(source.url("/readings.csv"))
        assert csv.startswith(CSV_HEADER.encode())
        feed, _ = _get_plain(source.url("/feed.json"))
        assert json.loads(feed)["items"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get_plain(source.url("/other"))
        missing.value.close()
        assert missing.value.code == 404


def _get_plain(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310  (loopback URL of the source)
        return response.read(), response.headers["Content-Type"]
