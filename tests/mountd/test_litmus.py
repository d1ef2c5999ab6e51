"""litmus, Debian's WebDAV compliance suite, passes every test against writable mode."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from recording_hook import RecordingHook

from broker import Settings
from mountd import serve_background
from mountd.writable.policy import WritePolicy

#: The suites litmus runs by default, and how many tests each has (0.13).
SUITES = {"basic": 16, "copymove": 13, "props": 30, "locks": 41, "http": 4}
SUMMARY = re.compile(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed")
LITMUS_TIMEOUT = 300


@pytest.fixture
def litmus_url(store: Path, hook: RecordingHook) -> Iterator[str]:
    """A writable mountd for litmus to work in."""
    with serve_background(
        Settings(host="127.0.0.1", port=0), store, hook, writable=WritePolicy(store)
    ) as handle:
        yield handle.mount_url + "/"


def test_litmus_passes_every_suite(litmus_url: str, tmp_path: Path, store: Path) -> None:
    """litmus runs basic, copymove, props, locks and http: 104 of 104 pass; only its own folder is left."""
    executable = shutil.which("litmus")
    assert executable is not None, "litmus is not installed (make system-deps)"
    done = subprocess.run(
        [executable, litmus_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        timeout=LITMUS_TIMEOUT,
        check=False,
    )
    found = {name: (int(run), int(passed)) for name, run, passed, _ in SUMMARY.findall(done.stdout)}
    total_run = sum(run for run, _ in found.values())
    total_passed = sum(passed for _, passed in found.values())
    print(f"litmus: {total_passed}/{total_run} passed; per suite: {found}")
    assert found == {name: (count, count) for name, count in SUITES.items()}, done.stdout[-4000:]
    assert done.returncode == 0
    assert os.listdir(store) == ["litmus"]  # its last suite makes the folder and leaves it
