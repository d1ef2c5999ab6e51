"""Each package declares its public API with ``__all__``, and the dependency rules of docs/architecture.md
hold."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("name", ["sync_format", "sync_format.signing", "mountd"])
def test_all_lists_every_public_name(name: str) -> None:
    """Every public class and function a package imports into its namespace is declared in ``__all__``."""
    module = importlib.import_module(name)
    package = name.split(".", maxsplit=1)[0]
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", "").startswith(package)
    }
    assert public - set(module.__all__) == set()


def test_mountd_exports_only_what_is_used() -> None:
    """``mountd.__all__`` lists what other packages, tests, benchmarks and the docs use (not 78 names)."""
    import mountd

    root = Path(__file__).resolve().parents[2]
    here = Path(__file__).resolve()
    sources = [root / "README.md"]
    for base in ("syncctl", "tests", "bench", "docs"):
        sources.extend(p for p in (root / base).rglob("*") if p.suffix in (".py", ".md") and p != here)
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    unused = [n for n in mountd.__all__ if not re.search(rf"\b{n}\b", text)]
    assert unused == []


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


#: Packages whose code counts as "another package" using a public name.
PRODUCT = ("sync_format", "broker", "workers", "syncctl", "mountd", "bench", "deploy")
#: Public names no other package imports, kept for library users, with the reason.
USER_API = {
    # Returned by read_status / list_failed, which syncctl uses.
    "broker": {"StatusRecord", "FailedJob"},
    # The reference's runtime API (docs/guest-abi.md) and the types its callers pass and get back;
    # RefreshOutcome is what run_refresh returns.
    "workers": {
        "GuestSession",
        "GuestAction",
        "GuestMode",
        "GuestPermissions",
        "GuestResponse",
        "GuestRole",
        "NoChange",
        "UpdatePayload",
        "WidgetBounds",
        "RefreshOutcome",
    },
    # What SyncBuilder.build returns; the freshness and host-rule functions the spec names.
    "sync_format": {"BuildResult", "expiry", "host_allowed"},
}


def _used_by_others(package: str) -> set[str]:
    """Names other product packages import from ``package`` or any of its modules."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    used: set[str] = set()
    for top in PRODUCT:
        if top == package or not (root / top).is_dir():
            continue
        for path in (root / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                    used |= {alias.name for alias in node.names}
    return used


@pytest.mark.parametrize("name", ["broker", "workers", "sync_format"])
def test_all_lists_only_what_is_used(name: str) -> None:
    """``__all__`` lists what other packages use, and named user API; nothing exported for no one.

    For ``sync_format`` the ``SyncError`` tree, the manifest's types and the entry names are user API too.
    """
    module = importlib.import_module(name)
    allowed = _used_by_others(name) | USER_API[name]
    if name == "sync_format":
        from sync_format import errors, manifest

        allowed |= {n for n in module.__all__ if n.endswith("_ENTRY")}
        allowed |= {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
        allowed |= {n for n, v in vars(manifest).items() if getattr(v, "__module__", "") == manifest.__name__}
    assert sorted(set(module.__all__) - allowed) == []
