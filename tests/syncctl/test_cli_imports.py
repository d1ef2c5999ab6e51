"""The archive commands load no service library: ``syncctl inspect`` must not pay for Celery or Redis.

Each command runs in a fresh interpreter (``syncctl.main.main`` in a child process, on real files), which
then lists the service libraries present in ``sys.modules``. ``broker/__init__`` loads its names lazily and
``broker.settings`` (read by every command for the log format) imports nothing but the standard library
and ``sync_format.errors``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sync_format.testing import make_archive

#: Libraries an archive command never needs.
SERVICE_LIBRARIES = ("celery", "kombu", "redis", "wsgidav", "cheroot", "wasmtime")

_CHILD = """
import json, sys
from syncctl.main import main
status = main(sys.argv[1:])
loaded = [m for m in {libs!r} if m in sys.modules]
print(json.dumps({{"status": status, "loaded": loaded}}), file=sys.stderr)
"""


def _run(*args: str) -> dict[str, object]:
    code = _CHILD.format(libs=SERVICE_LIBRARIES)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, timeout=60
    )
    report: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key, an archive signed with it, and a payload source file."""
    root = tmp_path_factory.mktemp("cli-imports")
    key = root / "key.pem"
    assert _run("keygen", str(key))["status"] == 0
    source = root / "report.csv"
    source.write_text("a,b\n1,2\n")
    signed = root / "signed.sync"
    assert _run("pack", str(source), "-o", str(signed), "--sign", str(key))["status"] == 0
    plain = root / "plain.sync"
    make_archive(plain)
    return {"key": key, "source": source, "signed": signed, "plain": plain, "root": root}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("inspect", "{plain}"), id="inspect"),
        pytest.param(("inspect", "{signed}", "--json"), id="inspect-json"),
        pytest.param(("verify", "{signed}", "--require-signature"), id="verify"),
        pytest.param(("extract", "{plain}", "-o", "{root}/out.bin"), id="extract"),
        pytest.param(("pack", "{source}", "-o", "{root}/packed.sync", "--sign", "{key}"), id="pack"),
        pytest.param(("keygen", "{root}/other-key.pem"), id="keygen"),
    ],
)
def test_archive_commands_load_no_service_library(files: dict[str, Path], command: tuple[str, ...]) -> None:
    """Each archive command succeeds and leaves Celery, kombu, Redis, wsgidav, cheroot, wasmtime unloaded."""
    args = [part.format(**{k: str(v) for k, v in files.items()}) for part in command]
    report = _run(*args)
    assert report == {"status": 0, "loaded": []}
