"""The wheel builds, installs into a fresh virtual environment, imports every package and runs ``syncctl``."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    """A wheel built from the tree installs on its own and ``syncctl --help`` runs from the new env."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    constraints = ["--constraint", str(ROOT / "constraints.txt")]  # the tested releases, as the image takes
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *constraints, str(wheels[0])], check=True)
    code = "import sync_format, sync_format.signing, broker, workers, mountd, syncctl"
    subprocess.run([str(python), "-c", code], check=True, cwd=tmp_path)
    out = subprocess.run(
        [str(env_dir / "bin" / "syncctl"), "--help"], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "pack" in out.stdout
    mount = subprocess.run(
        [str(env_dir / "bin" / "sync-mount"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "ARCHIVE" in mount.stdout
    # The demo compiles guests shipped as package data: building its store proves they are in the wheel.
    demo = subprocess.run(
        [str(env_dir / "bin" / "syncctl"), "demo", str(tmp_path / "demo"), "--no-serve"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "store" / "readings.csv.sync").is_file()
    # The guest SDKs and templates are package data too: `guest new` writes every template from the wheel.
    for lang, source in (
        ("c", "guest.c"),
        ("zig", "guest.zig"),
        ("rust", "src/lib.rs"),
        ("assemblyscript", "guest.ts"),
    ):
        new = subprocess.run(
            [str(env_dir / "bin" / "syncctl"), "guest", "new", str(tmp_path / lang), "--lang", lang],
            check=False,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert new.returncode == 0, new.stderr
        assert (tmp_path / lang / source).is_file()
    sdk = subprocess.run(
        [str(python), "-c", "from syncctl.guest_build import SDK_DIR; print(SDK_DIR)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    sdk_dir = Path(sdk.stdout.strip())
    for name in ("c/sync_guest.h", "zig/sync_guest.zig", "rust/src/lib.rs", "assemblyscript/sync_guest.ts"):
        assert (sdk_dir / name).is_file(), name
