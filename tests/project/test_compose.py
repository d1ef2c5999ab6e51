"""compose.yaml and the Dockerfile keep the deployment contract (docs/deployment.md), checked with no engine.

``docker-compose config`` (the Debian package, 1.29) validates the file against the compose schema and
prints it resolved: anchors merged, ports and volumes in long form. The tests parse that output, so they
check what Docker would run, not how the file happens to be written. ``docker-compose`` reads the seccomp
profile relative to its working directory, so it runs from the repository root, as people run it. The
secrets come from an env file ``deploy/stack-init.sh`` (``make stack-init``) generated for the module, passed
with ``--env-file`` (a developer's own ``.env`` is never read).

The engine-backed test of the same file is ``deploy/test-stack.sh`` (``make stack-test``).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"redis", "mountd", "worker", "flower"}
#: Services built from our image (redis runs the official image).
OURS = ("mountd", "worker", "flower")
#: The uid the image runs as; tests/project/test_worker_profile.py runs the sandbox as this uid.
IMAGE_UID = 10001
STACK_INIT = ROOT / "deploy" / "stack-init.sh"
#: Variables compose.yaml takes from the env file (never from this process's environment).
SECRET_VARIABLES = ("SYNC_REDIS_PASSWORD", "SYNC_FLOWER_USER", "SYNC_FLOWER_PASSWORD")
#: Which network each service is on: each of ours shares one with Redis and none with another of ours.
NETWORKS = {"redis": {"jobs", "ops", "front"}, "worker": {"jobs"}, "flower": {"ops"}, "mountd": {"front"}}
#: Users and groups of Debian's base-passwd when /usr/share/base-passwd is not installed (Debian 12).
BASE_PASSWD_NAMES = frozenset(
    {
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
    }
    | {"backup", "list", "irc", "gnats", "nobody", "adm", "tty", "disk", "kmem", "dialout", "fax", "voice"}
    | {"cdrom", "floppy", "tape", "sudo", "audio", "dip", "operator", "src", "shadow", "utmp", "video"}
    | {"sasl", "plugdev", "staff", "users", "nogroup"}
)


def compose_config(*extra: str, env_file: Path | str) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose --env-file ENV_FILE -f compose.yaml config`` from the repository root."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    return subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def read_env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets file as ``make stack-init`` writes it."""
    path = tmp_path_factory.mktemp("stack") / "stack.env"
    subprocess.run([str(STACK_INIT), str(path)], check=True, capture_output=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def secrets(env_file: Path) -> dict[str, str]:
    """The generated secrets."""
    return read_env_file(env_file)


@pytest.fixture(scope="module")
def config(env_file: Path) -> dict[str, Any]:
    """The resolved configuration ``docker-compose config`` prints."""
    result = compose_config(env_file=env_file)
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_config_validates(env_file: Path) -> None:
    """``docker-compose config --quiet`` accepts compose.yaml and prints nothing."""
    result = compose_config("--quiet", env_file=env_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_config_rejects_a_broken_file(tmp_path: Path, env_file: Path) -> None:
    """The validator is not a rubber stamp: a service with an unknown key is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("read_only: true", "read_only: true\n  bogus_key: 1", 1))
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(broken), "config", "--quiet"],
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


def test_our_services_are_locked_down(config: dict[str, Any], secrets: dict[str, str]) -> None:
    """Our services: read-only root, all capabilities dropped, no-new-privileges, not privileged, one image
    built once from the repository's Dockerfile, broker given through SYNC_BROKER_URL with the password."""
    password = secrets["SYNC_REDIS_PASSWORD"]
    built = [name for name, service in config["services"].items() if "build" in service]
    assert built == ["mountd"]
    assert Path(config["services"]["mountd"]["build"]["context"]) == ROOT
    for name in OURS:
        service = config["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "cap_add" not in service, name
        assert not service.get("privileged"), name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["image"] == "sync:latest", name
        assert service["environment"]["SYNC_BROKER_URL"] == f"redis://:{password}@redis:6379/0", name
    assert not config["services"]["redis"].get("privileged")


def test_worker_runs_under_the_shipped_seccomp_profile(config: dict[str, Any]) -> None:
    """The worker's seccomp option names a file in the repository that parses and lets unshare through
    without CAP_SYS_ADMIN (the rule tests/project/test_worker_profile.py proves enough for the sandbox)."""
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


def test_stack_init_writes_private_random_secrets(tmp_path: Path) -> None:
    """``make stack-init`` writes an owner-only env file with two distinct random secrets and keeps an
    existing file as it is (its password is the one Redis already uses)."""
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    for path in (first, second):
        subprocess.run([str(STACK_INIT), str(path)], check=True, capture_output=True, timeout=30)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    a, b = read_env_file(first), read_env_file(second)
    assert set(a) == set(SECRET_VARIABLES)
    for key in ("SYNC_REDIS_PASSWORD", "SYNC_FLOWER_PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{48}", a[key]), key
        assert a[key] != b[key], key
    assert a["SYNC_REDIS_PASSWORD"] != a["SYNC_FLOWER_PASSWORD"]
    before = first.read_text()
    subprocess.run([str(STACK_INIT), str(first)], check=True, capture_output=True, timeout=30)
    assert first.read_text() == before


def test_the_stack_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """Without the env file there is no default password: compose refuses and says what to run."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config("--quiet", env_file=empty)
    assert result.returncode != 0
    assert "make stack-init" in result.stderr


def test_redis_requires_the_password_and_every_client_has_it(
    config: dict[str, Any], secrets: dict[str, str]
) -> None:
    """Redis runs with ``--requirepass`` from the env file; its healthcheck's redis-cli authenticates through
    REDISCLI_AUTH (the check itself is unchanged); our clients' URLs carry the password (checked above)."""
    redis = config["services"]["redis"]
    password = secrets["SYNC_REDIS_PASSWORD"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_flower_requires_basic_auth(config: dict[str, Any], secrets: dict[str, str]) -> None:
    """Flower gets the generated login; its unauthenticated API switch is gone."""
    env = config["services"]["flower"]["environment"]
    assert env["FLOWER_BASIC_AUTH"] == f"{secrets['SYNC_FLOWER_USER']}:{secrets['SYNC_FLOWER_PASSWORD']}"
    assert "FLOWER_UNAUTHENTICATED_API" not in env


def test_networks_keep_workers_away_from_flower_and_mountd(config: dict[str, Any]) -> None:
    """Each of our services shares a network with Redis only: a worker cannot reach Flower or mountd."""
    networks = {name: set(service["networks"]) for name, service in config["services"].items()}
    assert networks == NETWORKS
    for a in OURS:
        for b in OURS:
            assert a == b or not networks[a] & networks[b], (a, b)


def test_cache_tmpfs_is_the_image_users_and_allows_mapping_compiled_modules(config: dict[str, Any]) -> None:
    """/cache (compiled modules, worker metrics) is a tmpfs owned by the image's user (a tmpfs is root-owned
    otherwise, whatever the image's chown did) and mounted ``exec`` (loading a cached compiled module maps it
    executable; Docker mounts tmpfs noexec by default)."""
    for name in OURS:
        [cache] = [t for t in config["services"][name]["tmpfs"] if t.split(":")[0] == "/cache"]
        options = set(cache.split(":", 1)[1].split(","))
        assert {f"uid={IMAGE_UID}", f"gid={IMAGE_UID}", "exec"} <= options, name
        assert "noexec" not in options, name


def base_passwd_names() -> set[str]:
    """User and group names Debian's base-passwd creates in every Debian image."""
    names = set(BASE_PASSWD_NAMES)
    for table in ("passwd.master", "group.master"):
        path = Path("/usr/share/base-passwd") / table
        if path.exists():
            names |= {line.split(":", 1)[0] for line in path.read_text().splitlines() if line}
    return names


def test_image_user_is_not_one_debian_already_has() -> None:
    """The Dockerfile's groupadd/useradd name is new in a Debian image: base-passwd already has a user
    ``sync`` (uid 4), and useradd refuses an existing name (exit 9), which broke the build."""
    created = []
    for instruction, args in _dockerfile_instructions():
        if instruction == "RUN":
            created += re.findall(r"\b(?:useradd|groupadd)\b[^&;]*?\s([a-z_][a-z0-9_-]*)\s*(?:&&|;|$)", args)
    assert len(created) == 2
    taken = base_passwd_names()
    assert "sync" in taken
    assert not set(created) & taken, created
