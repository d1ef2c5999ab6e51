"""Each package declares its public API with ``__all__``, and the dependency rules of ARCHITECTURE.md hold."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "sync_format",
    "sync_format.signing",
    "broker",
    "workers",
    "workers.confine",
    "mountd",
    "syncctl",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist(name: str) -> None:
    """Every name in a package's ``__all__`` is importable from it, and ``__all__`` has no duplicates."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", ["sync_format", "sync_format.signing"])
def test_all_lists_every_public_name(name: str) -> None:
    """Every public class and function a package imports into its namespace is declared in ``__all__``."""
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith("sync_format")
    }
    assert public - set(module.__all__) == set()


def test_sync_format_imports_no_service_libraries() -> None:
    """Importing ``sync_format`` in a fresh interpreter loads no Celery, Redis, wsgidav, cheroot, wasmtime."""
    code = (
        "import sys, sync_format, sync_format.signing, sync_format.testing;"
        "bad = [m for m in ('celery', 'redis', 'wsgidav', 'cheroot', 'wasmtime', 'kombu')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_mountd_loads_neither_workers_nor_wasmtime() -> None:
    """Importing ``mountd`` in a fresh interpreter loads neither ``workers`` nor ``wasmtime``."""
    code = "import sys, mountd; print(','.join(m for m in ('workers', 'wasmtime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_broker_settings_and_package_import_no_service_libraries() -> None:
    """``import broker`` and ``broker.settings`` load no Celery, kombu or Redis (names load on first use)."""
    code = (
        "import sys, broker, broker.settings;"
        "print(','.join(m for m in ('celery', 'kombu', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
