"""mountd as a separate process: it signals readiness, serves, and shuts down gracefully on a signal."""

from __future__ import annotations

import gc
import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from dav_client import get, names, propfind
from store_manifests import csv_manifest

from broker import Settings
from mountd import NullFreshness
from mountd.app import MountdConfig, start
from mountd.server import GC_YOUNG_THRESHOLD, WANTED_DESCRIPTORS, run_until_signal
from sync_format import BuildResult

AddArchive = Callable[..., BuildResult]
HERE = Path(__file__).resolve().parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def readiness_line(process: subprocess.Popen[str]) -> str:
    """The first stdout line of ``process``, waiting at most ``START_TIMEOUT``."""
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()))
    reader.start()
    reader.join(START_TIMEOUT)
    assert lines, f"no readiness line within {START_TIMEOUT} s"
    return lines[0]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_server_process_serves_and_stops_on_signal(
    add_archive: AddArchive, store: Path, stop_signal: signal.Signals
) -> None:
    """A mountd process prints its URL when ready, serves the store, and exits 0 after SIGTERM or SIGINT
    while a client keeps a connection open."""
    add_archive("report.csv.sync", b"a,b\n", manifest=csv_manifest())
    process = subprocess.Popen(
        [sys.executable, str(HERE / "run_mountd.py"), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        word, url = readiness_line(process).split()
        assert word == "ready"
        assert url.startswith("http://127.0.0.1:")
        assert names(propfind(url, "/")) == ["report.csv"]
        assert get(url, "/report.csv").body == b"a,b\n"
        idle = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=STOP_TIMEOUT)
        idle.request("GET", "/report.csv")  # keep-alive: the connection stays open after the response
        assert idle.getresponse().read() == b"a,b\n"
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=STOP_TIMEOUT)
        idle.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.strip() == "stopped"


def test_a_served_process_freezes_what_it_built_before_serving(store: Path) -> None:
    """``run_until_signal`` moves what the process built before serving out of the collector's reach
    (``settle_heap``), so full collections during a big listing walk only what requests allocated."""
    frozen: list[int] = []
    thresholds: list[tuple[int, int, int]] = []
    before = gc.get_threshold()

    def ready(_handle: object) -> None:
        frozen.append(gc.get_freeze_count())
        thresholds.append(gc.get_threshold())
        os.kill(os.getpid(), signal.SIGTERM)  # run_until_signal's handler takes it: the server stops

    handle = start(MountdConfig.of(Settings(host="127.0.0.1", port=0), store, NullFreshness()))
    try:
        run_until_signal(handle, ready)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert len(frozen) == 1
    assert frozen[0] > 10_000
    # Young collections are rarer than Python's default of one per 700 allocations; the older ones as before.
    assert thresholds == [(GC_YOUNG_THRESHOLD, *before[1:])]
    assert GC_YOUNG_THRESHOLD > 700


def test_a_served_process_raises_its_descriptor_limit_to_what_the_hard_limit_allows() -> None:
    """A soft ``RLIMIT_NOFILE`` of 256 (a service manager's low default) is raised to
    ``WANTED_DESCRIPTORS`` or the hard limit, whichever is lower; a soft limit above it is never lowered
    (checked where the test may raise the hard limit: with CAP_SYS_RESOURCE)."""
    script = (
        "import os, resource\n"
        "from mountd import server\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(server.raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
        "high = server.WANTED_DESCRIPTORS + 1\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (high, high))\n"
        "except ValueError:\n"
        "    print('cannot-raise-hard')\n"
        "else:\n"
        "    print(server.raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    returned, now, hard = (int(x) for x in out[:3])
    assert returned == now == min(hard, WANTED_DESCRIPTORS)
    if out[3] != "cannot-raise-hard":  # needs CAP_SYS_RESOURCE
        assert [int(x) for x in out[3:]] == [WANTED_DESCRIPTORS + 1] * 2
