"""compose.yaml and the Dockerfile keep the deployment contract (docs/deployment.md), checked with no engine.

``docker-compose config`` (the Debian package, 1.29) validates the file against the compose schema and
prints it resolved: anchors merged, ports and volumes in long form. The tests parse that output, so they
check what Docker would run, not how the file happens to be written. ``docker-compose`` reads the seccomp
profile relative to its working directory, so it runs from the repository root, as people run it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"redis", "mountd", "worker", "flower"}
#: Services built from our image (redis runs the official image).
OURS = ("mountd", "worker", "flower")
#: The uid the image runs as; tests/test_worker_profile.py runs the sandbox as this uid.
IMAGE_UID = 10001


def compose_config(*extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f compose.yaml config`` from the repository root."""
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved configuration ``docker-compose config`` prints."""
    result = compose_config()
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_config_validates() -> None:
    """``docker-compose config --quiet`` accepts compose.yaml and prints nothing."""
    result = compose_config("--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a service with an unknown key is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("read_only: true", "read_only: true\n  bogus_key: 1", 1))
    result = subprocess.run(
        ["docker-compose", "-f", str(broken), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "bogus_key" in result.stderr


def _port(entry: str | dict[str, Any]) -> tuple[str, int, int]:
    """(host address, published port, container port) of a port entry in short or long syntax."""
    if isinstance(entry, dict):
        return entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])
    address, published, target = entry.split("/")[0].rsplit(":", 2)
    return address, int(published), int(target)


def test_services_and_published_ports(config: dict[str, Any]) -> None:
    """The four services exist; only mountd (4918) and Flower (5555) publish ports, on 127.0.0.1."""
    services = config["services"]
    assert set(services) == SERVICES
    published = {name: [_port(p) for p in service.get("ports", [])] for name, service in services.items()}
    assert published == {
        "redis": [],
        "mountd": [("127.0.0.1", 4918, 4918)],
        "worker": [],
        "flower": [("127.0.0.1", 5555, 5555)],
    }


def test_every_service_has_a_healthcheck_and_waits_for_a_healthy_redis(config: dict[str, Any]) -> None:
    """Each service has a healthcheck; ours start once Redis is healthy; Redis's is ``redis-cli ping``."""
    services = config["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in OURS:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}, name


def test_redis_persists_with_the_append_only_file(config: dict[str, Any]) -> None:
    """Redis keeps its data in the redis-data volume with appendonly on."""
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data:rw" in redis["volumes"]
    assert "redis-data" in config["volumes"]


def test_store_volume_is_shared_by_mountd_and_workers(config: dict[str, Any]) -> None:
    """The named volume ``store`` is mounted at /store in mountd and the worker, which are told so."""
    assert "store" in config["volumes"]
    for name in ("mountd", "worker"):
        service = config["services"][name]
        assert "store:/store:rw" in service["volumes"], name
        assert service["environment"]["SYNC_STORE"] == "/store"


def test_our_services_are_locked_down(config: dict[str, Any]) -> None:
    """Our services: read-only root, all capabilities dropped, no-new-privileges, not privileged, built
    from the repository's Dockerfile, broker given through SYNC_BROKER_URL."""
    for name in OURS:
        service = config["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "cap_add" not in service, name
        assert not service.get("privileged"), name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["environment"]["SYNC_BROKER_URL"] == "redis://redis:6379/0", name
    assert not config["services"]["redis"].get("privileged")


def test_worker_runs_under_the_shipped_seccomp_profile(config: dict[str, Any]) -> None:
    """The worker's seccomp option names a file in the repository that parses and lets unshare through
    without CAP_SYS_ADMIN (the rule tests/test_worker_profile.py proves enough for the sandbox)."""
    worker = config["services"]["worker"]
    [option] = [o for o in worker["security_opt"] if o.startswith("seccomp")]
    profile_path = (ROOT / re.split("[:=]", option, maxsplit=1)[1]).resolve()
    assert profile_path.is_relative_to(ROOT)
    profile = json.loads(profile_path.read_text())
    allowed = [
        rule
        for rule in profile["syscalls"]
        if "unshare" in rule["names"]
        and rule["action"] == "SCMP_ACT_ALLOW"
        and "CAP_SYS_ADMIN" not in (rule.get("includes") or {}).get("caps", [])
    ]
    assert allowed
    assert worker["environment"]["SYNC_SANDBOX"] == "strict"


def test_worker_command_scales(config: dict[str, Any]) -> None:
    """The worker command names no fixed node name (replicas would collide) and no fixed host port."""
    worker = config["services"]["worker"]
    assert "--name" not in worker["command"]
    assert "container_name" not in worker
    assert worker["command"][:2] == ["syncctl", "worker"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_copies_only_existing_paths_and_runs_as_non_root() -> None:
    """Every path the Dockerfile COPYs from the build context exists (and .dockerignore keeps it), and the
    final stage runs as the unprivileged IMAGE_UID."""
    instructions = _dockerfile_instructions()
    sources = []
    for instruction, args in instructions:
        if instruction != "COPY" or "--from=" in args:
            continue
        sources.extend(args.split()[:-1])
    assert sources
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") not in ignored, source
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm AS build")
