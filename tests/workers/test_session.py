"""``GuestSession``: the reference's roles and permission checks (TV-11), stricter where §9 D15/D16 say."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import wasmtime

from sync_format import open_archive
from sync_format.errors import GuestTrap, PolicyDenied, SwapConflict
from sync_format.manifest import OwnershipSection, PermissionsSection
from sync_format.testing import make_archive, make_manifest
from workers import (
    GuestAction,
    GuestRuntime,
    GuestSession,
    NoChange,
    UpdatePayload,
    WidgetBounds,
)

ECHO_UPPER = """
(module
  (import "host" "payload_size"  (func $size  (result i32)))
  (import "host" "payload_read"  (func $read  (param i32 i32 i32) (result i32)))
  (import "host" "payload_write" (func $write (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (local $n i32) (local $i i32)
    (local.set $n (call $size))
    (drop (call $read (i32.const 0) (local.get $n) (i32.const 0)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (local.get $i) (i32.sub (i32.load8_u (local.get $i)) (i32.const 32)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (drop (call $write (i32.const 0) (local.get $n) (i32.const 0)))))
"""
SILENT = '(module (memory (export "memory") 1) (func (export "run")))'


@pytest.fixture(scope="module")
def runtime(
    tmp_path_factory: pytest.TempPathFactory, make_runtime: Callable[..., GuestRuntime]
) -> GuestRuntime:
    """One strict guest runtime with a private module cache."""
    return make_runtime(tmp_path_factory.mktemp("cache"))


def _archive(path: Path, wat: str = ECHO_UPPER, *, write_allowed: bool = True) -> Path:
    manifest = make_manifest(allow_hosts=("example.com", "api.local"))
    manifest = replace(
        manifest,
        permissions=PermissionsSection(allow_hosts=("example.com", "api.local"), allow_env=("FOO", "BAR")),
        ownership=OwnershipSection(write_allowed=write_allowed),
    )
    make_archive(path, b"hello", manifest=manifest, wasm=wasmtime.wat2wasm(wat))
    return path


def test_tv11_consumer_cannot_write(tmp_path: Path, runtime: GuestRuntime) -> None:
    """TV-11: a consumer with the write grant is still refused ("Owner context required")."""
    session = GuestSession(_archive(tmp_path / "a.sync"), runtime).grant_write_payload()
    with pytest.raises(PolicyDenied, match="Owner context required"):
        session.verify_permissions(GuestAction.WRITE_PAYLOAD)
    session.as_owner().verify_permissions(GuestAction.WRITE_PAYLOAD)


def test_tv11_effective_grants_intersect_the_manifest(tmp_path: Path, runtime: GuestRuntime) -> None:
    """TV-11: session grants are intersected with the manifest's lists, in the session's order."""
    session = GuestSession(_archive(tmp_path / "a.sync"), runtime).as_owner()
    session.allow_env_var("FOO").allow_env_var("BAZ").allow_host("example.com").allow_host("evil.com")
    effective = session.effective_permissions()
    assert effective.allowed_env == ["FOO"]
    assert effective.allowed_hosts == ["example.com"]


def test_tv11_widget_bounds_must_be_positive() -> None:
    """TV-11: zero width or height is refused."""
    with pytest.raises(PolicyDenied, match="positive width and height"):
        WidgetBounds(0, 0, 0, 10)


def test_execution_needs_owner_grant_and_mode(tmp_path: Path, runtime: GuestRuntime) -> None:
    """Executing needs the owner role, the grant, and widget bounds in widget mode, checked in that order."""
    session = GuestSession(_archive(tmp_path / "a.sync"), runtime)
    with pytest.raises(PolicyDenied, match="Owner context required"):
        session.execute_wasm()
    session.as_owner()
    with pytest.raises(PolicyDenied, match="execute wasm not allowed"):
        session.execute_wasm()
    session.grant_wasm_execution()
    with pytest.raises(PolicyDenied, match="widget bounds are required"):
        session.execute_wasm()


def test_execute_returns_update_and_apply_commits(tmp_path: Path, runtime: GuestRuntime) -> None:
    """``execute_wasm`` returns ``UpdatePayload(bytes)`` without committing; ``apply`` commits it."""
    path = _archive(tmp_path / "a.sync")
    session = GuestSession(path, runtime).as_owner().grant_wasm_execution().as_headless()
    response = session.execute_wasm()
    assert response.action == UpdatePayload(b"HELLO")
    assert response.sandbox is not None
    assert response.sandbox.complete
    with open_archive(path) as snap:
        assert snap.read_payload() == b"hello"
    session.grant_write_payload()
    result = session.apply(response)
    assert result is not None
    assert result.generation == 1
    with open_archive(path) as snap:
        assert snap.read_payload() == b"HELLO"
    with pytest.raises(SwapConflict):
        session.apply(response)


def test_apply_requires_write_allowed_in_the_manifest(tmp_path: Path, runtime: GuestRuntime) -> None:
    """An owner with every grant still cannot write when the manifest says ``write_allowed = false``."""
    path = _archive(tmp_path / "a.sync", write_allowed=False)
    session = GuestSession(path, runtime).as_owner().grant_wasm_execution().grant_write_payload()
    response = session.as_headless().execute_wasm()
    with pytest.raises(PolicyDenied, match="write_allowed"):
        session.apply(response)


def test_silent_guest_is_no_change(tmp_path: Path, runtime: GuestRuntime) -> None:
    """A guest that writes nothing yields ``NoChange`` and ``apply`` commits nothing."""
    path = _archive(tmp_path / "a.sync", SILENT)
    session = GuestSession(path, runtime).as_owner().grant_wasm_execution().as_headless()
    response = session.execute_wasm()
    assert response.action == NoChange()
    assert session.apply(response) is None


def test_archive_without_logic_reports_no_entry_point(tmp_path: Path, runtime: GuestRuntime) -> None:
    """An archive with the empty module has no update logic to execute."""
    path = tmp_path / "plain.sync"
    make_archive(path, b"hello")
    session = GuestSession(path, runtime).as_owner().grant_wasm_execution().as_headless()
    with pytest.raises(GuestTrap, match="No entry point found"):
        session.execute_wasm()
