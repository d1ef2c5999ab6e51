"""Fixtures of the mountd tests: a store built on demand, a recording freshness hook, a running server.

``CELERY_TRACE_APP`` is set before Celery is imported so that any use of an implicit default app shows up.
The server runs in this process through ``serve_background`` on 127.0.0.1 with an ephemeral port; the
subprocess form is exercised by ``test_process.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("CELERY_TRACE_APP", "1")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from recording_hook import RecordingHook
from store_manifests import NEVER_EXPIRES

from broker import Settings
from mountd import ServerHandle, serve_background
from sync_format import BuildResult, Manifest
from sync_format.testing import make_archive


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty store directory."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def add_archive(store: Path) -> Callable[..., BuildResult]:
    """Build an archive at a store-relative path (parents created)."""

    def add(
        name: str, payload: bytes = b"hello", *, manifest: Manifest | None = None, state: bool = True
    ) -> BuildResult:
        path = store / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_archive(path, payload, manifest=manifest or NEVER_EXPIRES, state=state)

    return add


@pytest.fixture
def hook() -> RecordingHook:
    """A recording freshness hook."""
    return RecordingHook()


@pytest.fixture
def server(store: Path, hook: RecordingHook) -> Iterator[ServerHandle]:
    """mountd serving ``store`` on 127.0.0.1, ephemeral port, with the recording hook."""
    with serve_background(Settings(host="127.0.0.1", port=0), store, hook) as handle:
        yield handle


@pytest.fixture
def url(server: ServerHandle) -> str:
    """The running server's mount URL."""
    return server.mount_url
