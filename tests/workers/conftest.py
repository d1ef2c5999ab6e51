"""Fixtures the worker tests share: a factory for guest runtimes with a private module cache.

Each test module keeps its own module-scoped ``runtime`` (its settings and resolver differ), built with
``make_runtime`` so every runtime is strict unless a test says otherwise and reads no process environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from guests import NameTable

from broker.settings import Settings
from workers.runtime import GuestRuntime

#: ``SYNC_TEST_SPARE_CHILD=1`` runs every worker test's guests through spare children (``workers.spare``).
SPARE_CHILD = os.environ.get("SYNC_TEST_SPARE_CHILD", "") == "1"
#: ``SYNC_TEST_ZYGOTE=1`` runs them through the sandbox zygote (``workers.zygote``).
ZYGOTE = os.environ.get("SYNC_TEST_ZYGOTE", "") == "1"


def _make_runtime(cache: Path, names: NameTable | None = None, **settings: object) -> GuestRuntime:
    """A runtime caching modules in ``cache``, strict unless ``settings`` say otherwise, resolving host names
    through ``names`` when given (else the system resolver); with spare children or the zygote when
    ``SPARE_CHILD`` or ``ZYGOTE``."""
    values = {"cache_dir": cache, "sandbox": "strict", "sandbox_spare_child": SPARE_CHILD}
    values |= {"sandbox_zygote": ZYGOTE, **settings}
    runtime_settings = Settings.from_env(values, env={})
    return GuestRuntime(runtime_settings) if names is None else GuestRuntime(runtime_settings, resolver=names)


@pytest.fixture(scope="session")
def make_runtime() -> Callable[..., GuestRuntime]:
    """The runtime factory (session-scoped, so module-scoped ``runtime`` fixtures can use it)."""
    return _make_runtime
