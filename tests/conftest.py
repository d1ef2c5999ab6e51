"""Shared fixtures: archives built on demand by ``sync_format.testing`` (no committed test data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync_format.testing import make_archive


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A fresh archive with the reference manifest and payload ``hello``."""
    path = tmp_path / "hello.txt.sync"
    make_archive(path)
    return path
