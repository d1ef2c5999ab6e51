"""The README's main job (``make demo``, i.e. ``examples/demo_archive.py``) runs and ends intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_builds_refreshes_and_verifies(tmp_path: Path) -> None:
    """The demo packs, signs, refreshes the CSV twice in the sandbox and both archives verify intact."""
    store = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo_archive.py"), str(store)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "generation: 1 -> 2" in result.stdout
    assert result.stdout.count("\nintact\n") == 2
    assert "3,roof,7.3" in result.stdout
