"""The CLI's error contract: handlers raise typed errors; only ``syncctl.main`` writes ``error:`` lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from syncctl import mount
from syncctl.errors import CommandFailed, InvalidArguments, RefreshFailed
from syncctl.main import EXIT_FAILURE, EXIT_INTERRUPTED, run_reported

SYNCCTL = Path(__file__).resolve().parents[2] / "syncctl"


def _error_literals(path: Path) -> list[int]:
    """Lines of ``path`` holding a string (or f-string) that starts with ``error:``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith("error:"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and str(node.value).startswith("error:"):
            lines.append(node.lineno)
    return lines


def test_only_main_writes_error_lines() -> None:
    """No module of ``syncctl`` but ``main.py`` composes an ``error:`` line (they raise instead)."""
    offenders = {
        path.relative_to(SYNCCTL).as_posix(): found
        for path in sorted(SYNCCTL.rglob("*.py"))
        if path.name != "main.py" and (found := _error_literals(path))
    }
    assert offenders == {}


def test_run_reported_maps_typed_errors_and_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    """A typed failure is exit 1 with exactly one ``error:`` line; Ctrl-C is 130."""

    def fail() -> int:
        raise RefreshFailed("guest_trap", "unreachable\nexecuted")

    def interrupt() -> int:
        raise KeyboardInterrupt

    assert run_reported(fail) == EXIT_FAILURE
    assert capsys.readouterr().err == "error: guest_trap: unreachable executed\n"
    assert run_reported(interrupt) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted\n"
    assert RefreshFailed("guest_trap", "x").code == "guest_trap"
    assert issubclass(InvalidArguments, CommandFailed)


def test_sync_mount_reports_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sync-mount`` on something that is not an archive, or ``--writable`` on a file: exit 1, one line."""
    assert mount.main([str(tmp_path / "missing.sync")]) == EXIT_FAILURE
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.sync'}: not an archive file\n"
    afile = tmp_path / "file.sync"
    afile.write_bytes(b"x")
    assert mount.main([str(afile), "--writable"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err == f"error: {afile}: --writable serves a store directory, not a file\n"
