"""The worker's seccomp profile (deploy/seccomp/worker.json) lets a non-root worker run a strict refresh.

No Docker engine runs here, so the container is reproduced where it matters for the sandbox: a forked child
drops to the image's uid (no capabilities, as in the container) and loads the profile as runc would
(``docker_seccomp``), then runs a refresh with every confinement layer required. The same run under the
profile without our delta (Docker's default profile) shows why the delta exists: the guest's child cannot
create its network namespace, and strict mode refuses the job.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from docker_seccomp import build_filter, load_in_this_process, read_profile, without_comments_starting
from guests import ECHO_WAT

from broker.settings import Settings
from sync_format.testing import make_archive, make_manifest
from workers.confine.prctl import set_dumpable
from workers.refresh import run_refresh
from workers.runtime import GuestRuntime

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "deploy" / "seccomp" / "worker.json"
#: The uid and gid the image runs its services as (``USER`` in the Dockerfile).
IMAGE_UID = 10001
#: The comment prefix that marks our rules in the profile (the rest is Docker's default profile).
DELTA_PREFIX = "sync:"


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A temp directory the image's uid can reach (pytest's own temp root is private to root)."""
    with tempfile.TemporaryDirectory(prefix="sync-profile-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def _refresh_as_image_user(archive: Path, cache: Path, profile: dict[str, Any]) -> dict[str, Any]:
    """Fork; the child drops to ``IMAGE_UID``, loads ``profile``, runs a strict refresh; its outcome."""
    seccomp_filter = build_filter(profile)
    settings = Settings(cache_dir=cache, sandbox="strict")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(IMAGE_UID)
            os.setuid(IMAGE_UID)
            # A process started as this uid (the container's) is dumpable; changing uid made this one not.
            set_dumpable(True)
            load_in_this_process(seccomp_filter)
            outcome = run_refresh(archive, GuestRuntime(settings))
            data = json.dumps(outcome.to_json()).encode()
            while data:
                data = data[os.write(write_fd, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as reader:
        chunks.append(reader.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def _archive(directory: Path, name: str) -> Path:
    """An archive with the echo guest (a refresh commits generation 1), owned by the image's uid."""
    path = directory / name
    make_archive(
        path, b"payload\n", manifest=make_manifest(timeout=30), wasm=bytes(wasmtime.wat2wasm(ECHO_WAT))
    )
    return path


@pytest.mark.parametrize(
    ("with_delta", "status", "netns_errno"),
    [
        pytest.param(True, "committed", None, id="worker-profile"),
        pytest.param(False, "failed", 1, id="default"),
    ],
)
def test_non_root_worker_refresh_under_the_profile(
    world_readable_dir: Path, with_delta: bool, status: str, netns_errno: int | None
) -> None:
    """As the image's uid under worker.json a strict refresh commits with every layer active; under the
    profile without our delta the network namespace is refused (EPERM) and strict mode fails the job."""
    store, cache = world_readable_dir / "store", world_readable_dir / "cache"
    store.mkdir()
    cache.mkdir()
    # Import and compile everything a refresh uses while this process can still read the interpreter's
    # files (they live under root's home, which the image's uid cannot enter).
    warm = run_refresh(_archive(world_readable_dir, "warm.sync"), GuestRuntime(Settings(cache_dir=cache)))
    assert warm.status == "committed", warm
    archive = _archive(store, "echo.sync")
    for path in (store, cache, archive, *cache.rglob("*")):
        os.chown(path, IMAGE_UID, IMAGE_UID)
    profile = read_profile(PROFILE)
    if not with_delta:
        profile = without_comments_starting(profile, DELTA_PREFIX)
    outcome = _refresh_as_image_user(archive, cache, profile)
    assert outcome["status"] == status, outcome
    layers = {layer["layer"]: layer for layer in outcome["sandbox"]["layers"]}
    assert layers["netns"]["errno"] == netns_errno
    assert layers["netns"]["active"] is with_delta
    assert all(layer["active"] for name, layer in layers.items() if name != "netns"), layers
    if with_delta:
        assert "uid 10001" in layers["netns"]["detail"]


def test_profile_is_docker_default_plus_one_rule() -> None:
    """worker.json differs from Docker's default only by rules marked ``sync:``: one, allowing unshare
    without CAP_SYS_ADMIN for exactly CLONE_NEWUSER and CLONE_NEWNET."""
    profile = read_profile(PROFILE)
    ours = [rule for rule in profile["syscalls"] if str(rule.get("comment", "")).startswith(DELTA_PREFIX)]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    [rule] = ours
    assert rule["names"] == ["unshare"]
    assert rule["action"] == "SCMP_ACT_ALLOW"
    assert rule["excludes"] == {"caps": ["CAP_SYS_ADMIN"]}
    [arg] = rule["args"]
    clone_newuser, clone_newnet = 0x10000000, 0x40000000
    assert arg == {
        "index": 0,
        "value": (2**64 - 1) & ~(clone_newuser | clone_newnet),
        "valueTwo": 0,
        "op": "SCMP_CMP_MASKED_EQ",
    }
    base = without_comments_starting(profile, DELTA_PREFIX)
    unconditional = [rule for rule in base["syscalls"] if not rule.get("includes") and not rule.get("args")]
    assert not any("unshare" in rule["names"] for rule in unconditional)
    assert any("landlock_restrict_self" in rule["names"] for rule in unconditional)
