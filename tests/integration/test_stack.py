"""The compose stack's story, run as local processes: a stale read is refreshed by a worker from its source.

Each service's ``command`` and ``environment`` come from ``docker-compose config`` (compose.yaml resolved)
and are adapted to one machine: the Redis host becomes a private ``redis-server`` on a free port (started with
the compose command, so with its AOF settings), ``/store`` a temp store, ``0.0.0.0`` 127.0.0.1 and each
fixed port a free one; the two workers get distinct ``--name``s (in Docker each replica is named after its
container). The archives' source is a test host in a network namespace of its own, allow-listed by its exact
address. The story: GET an archive with a 2 s TTL, wait until it expired, GET it again (the stale bytes,
and a refresh is queued), wait until a worker committed, GET the new bytes with a new ETag; Flower lists the
refresh task; rounds of refreshes of several archives run until both workers took part.

Every flag of a compose command must be one the installed ``syncctl`` knows (a renamed flag fails here, not
in someone's deployment), and the health endpoints the compose healthchecks use answer 200 on mountd and on
both workers.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from guests import fetch_body
from netns_hosts import Route, ServedHost, netns_hosts
from pipeline_harness import ROOT, Services, child_env, wait_value
from redis_server import free_port, wait_for

from broker import read_status
from broker.contract import archive_key
from sync_format.reader import open_archive
from sync_format.store import display_name
from sync_format.testing import make_archive, make_manifest

#: The TTL of every archive of the story, in seconds.
TTL = 2
#: Seconds any step of the story may take (process start, a refresh, Flower catching up).
STEP_TIMEOUT = 90.0
#: Archives refreshed per round while waiting for both workers to take part, and the most rounds.
ROUND_SIZE = 4
MAX_ROUNDS = 6
WORKER_NAMES = ("w1@stack", "w2@stack")
#: In-container addresses and ports of the compose file, replaced by local ones.
CONTAINER_STORE = "/store"
ANY_ADDRESS = "0.0.0.0"  # noqa: S104  (the value compose.yaml binds inside containers; replaced, never bound)
COMPOSE_PORTS = {"mountd": "4918", "flower": "5555", "worker": "9808"}
#: mountd's health endpoint (checked once mountd has it).
HEALTH_PATH = "/.well-known/sync/health"


def compose_services(env_file: Path) -> dict[str, Any]:
    """The services of compose.yaml as ``docker-compose config`` resolves them with the secrets of
    ``env_file`` (written by ``deploy/stack-init.sh``, as ``make stack-init`` does)."""
    subprocess.run([str(ROOT / "deploy" / "stack-init.sh"), str(env_file)], check=True, timeout=30)
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def known_flags(subcommand: str) -> str:
    """The help text of ``syncctl SUBCOMMAND`` (which flags exist in this checkout)."""
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def unknown_flags(argv: Sequence[str], help_text: str) -> list[str]:
    """The ``--flags`` of ``argv`` that ``help_text`` (the command's ``--help``) does not mention."""
    return [word for word in argv if word.startswith("--") and word.split("=")[0] not in help_text]


def localize(argv: Sequence[str], store: Path, port: int, service: str) -> list[str]:
    """A compose command run here: our interpreter, the temp store, loopback and a free port."""
    programs = {"syncctl": [sys.executable, "-m", "syncctl"], "celery": [sys.executable, "-m", "celery"]}
    local = list(programs[argv[0]])
    for word in argv[1:]:
        here = word.replace(ANY_ADDRESS, "127.0.0.1")
        if here == CONTAINER_STORE:
            here = str(store)
        elif here == COMPOSE_PORTS[service]:
            here = str(port)
        elif here.startswith("--port="):
            here = f"--port={port}"
        local.append(here)
    return local


def local_env(compose_env: dict[str, str], *, redis_url: str, store: Path, cache: Path) -> dict[str, str]:
    """The service's compose environment with the Redis host, the store and the cache made local."""
    env = child_env(cache)
    for name, value in compose_env.items():
        env[name] = str(value)
    env.update(SYNC_BROKER_URL=redis_url, SYNC_STORE=str(store), SYNC_CACHE_DIR=str(cache))
    return env


def http_get(url: str, auth: str | None = None) -> tuple[int, bytes, str]:
    """GET ``url`` with urllib (basic ``auth`` "user:password" if given): (status, body, ETag); status 0
    while nothing answers."""
    request = urllib.request.Request(url)  # noqa: S310  (our own http URL)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (our own http URL)
            return response.status, response.read(), response.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b"", ""


def get_json(url: str, auth: str | None = None) -> Any:
    """GET ``url`` and decode its JSON; None while it does not answer 200."""
    status, body, _ = http_get(url, auth)
    return json.loads(body) if status == 200 else None


def now_rounded_up() -> str:
    """The next whole second, RFC 3339 UTC: an archive created then is fresh for at least ``TTL`` seconds."""
    seconds = math.ceil(datetime.datetime.now(datetime.UTC).timestamp())
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(store: Path, name: str, source: ServedHost, path: str, payload: bytes) -> Path:
    """An archive at generation 0 holding ``payload``, whose guest mirrors ``source``'s ``path``."""
    archive = store / name
    manifest = make_manifest(ttl=TTL, timeout=30, allow_hosts=(source.address,), created_at=now_rounded_up())
    make_archive(archive, payload, manifest=manifest, wasm=fetch_body(source.url(path)))
    return archive


def expired(archive: Path) -> bool:
    """True once the archive's payload is stale."""
    with open_archive(archive) as snap:
        return snap.expiry().is_expired()


def generation(archive: Path) -> int:
    """The archive's generation now."""
    with open_archive(archive) as snap:
        return snap.generation


def served_name(archive: Path) -> str:
    """The name mountd serves the archive under."""
    with open_archive(archive) as snap:
        return display_name(archive, snap.manifest.sync.display_ext)


@pytest.fixture
def stack(services: Services, tmp_path: Path) -> dict[str, Any]:
    """Every compose service's command started locally: redis, two workers, mountd and flower."""
    compose = compose_services(tmp_path / "stack.env")
    store, cache = tmp_path / "store", tmp_path / "cache"
    store.mkdir()
    redis_port = free_port()
    redis_dir = tmp_path / "redis-data"
    redis_dir.mkdir()
    redis_argv = [
        *compose["redis"]["command"],
        *("--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir), "--daemonize", "no"),
    ]
    redis_process = services.start("redis", redis_argv, child_env(cache))
    # compose.yaml's Redis requires the generated password: the clients' URL carries it, as in the stack.
    password = compose["redis"]["command"][compose["redis"]["command"].index("--requirepass") + 1]
    redis_url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
    client = redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_port, socket_timeout=5).set("sync:intruder", "1")

    def redis_answers() -> bool:
        assert redis_process.alive, redis_process.log_tail()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(redis_answers, STEP_TIMEOUT, interval=0.05, what="redis answers PING")

    flower_auth = compose["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    started: dict[str, Any] = {"client": client, "store": store, "ports": {}, "flower_auth": flower_auth}
    for service, names in (("worker", WORKER_NAMES), ("mountd", ("mountd",)), ("flower", ("flower",))):
        spec = compose[service]
        help_text = known_flags(spec["command"][1]) if spec["command"][0] == "syncctl" else ""
        for name in names:
            port = free_port()
            argv = localize(spec["command"], store, port, service)
            if help_text:
                assert unknown_flags(argv, help_text) == [], f"compose.yaml's {service}: flags syncctl lacks"
            if service == "worker":
                argv += ["--name", name]
            env = local_env(spec["environment"], redis_url=redis_url, store=store, cache=cache)
            started[name] = services.start(name, argv, env)
            started["ports"][name] = port
    return started


def wait_until_serving(stack: dict[str, Any]) -> tuple[str, str]:
    """Wait until mountd answers and Flower lists both workers; their base URLs."""
    mountd_url = f"http://127.0.0.1:{stack['ports']['mountd']}"
    flower_api = f"http://127.0.0.1:{stack['ports']['flower']}/api"

    def up() -> bool:
        for name in ("mountd", "flower", *WORKER_NAMES):
            assert stack[name].alive, f"{name} exited:\n{stack[name].log_tail()}"
        listed = get_json(f"{flower_api}/workers?refresh=1", stack["flower_auth"]) or {}
        return http_get(f"{mountd_url}/")[0] != 0 and set(WORKER_NAMES) <= set(listed)

    wait_for(up, STEP_TIMEOUT, interval=0.5, what="mountd answers and flower lists both workers")
    # Flower's API and pages refuse a request without the login (the healthcheck's endpoint answers).
    assert http_get(f"{flower_api}/workers")[0] == 401
    assert http_get(f"{flower_api}/workers", "admin:wrong")[0] == 401
    assert http_get(f"http://127.0.0.1:{stack['ports']['flower']}/healthcheck")[0] == 200
    return mountd_url, flower_api


def refresh_round(stack: dict[str, Any], mountd_url: str, archives: Sequence[Path]) -> set[str]:
    """Let the archives expire, GET them all at once, wait until each was committed; the workers that did."""
    store = stack["store"]
    wait_for(lambda: all(expired(a) for a in archives), STEP_TIMEOUT, interval=0.1, what="archives expired")
    before = {a: generation(a) for a in archives}
    threads = [
        threading.Thread(target=http_get, args=(f"{mountd_url}/{served_name(a)}",), daemon=True)
        for a in archives
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=STEP_TIMEOUT)
    wait_for(
        lambda: all(generation(a) > before[a] for a in archives),
        STEP_TIMEOUT,
        interval=0.1,
        what="every archive of the round committed",
    )
    records = [read_status(stack["client"], archive_key(store, a)) for a in archives]
    return {r.worker for r in records if r is not None and r.worker}


def test_stale_read_is_refreshed_by_a_scaled_worker(stack: dict[str, Any]) -> None:
    """Running compose.yaml's commands: a stale GET returns the old bytes and queues a refresh, a worker
    fetches the source from its own namespace and commits, the next GET returns the new bytes with a new
    ETag, Flower lists the task, and both workers run refreshes."""
    store: Path = stack["store"]
    client: redis.Redis = stack["client"]
    with netns_hosts(["source"]) as hosts:
        source = hosts["source"]
        source.serve({"/report": Route.fixed(b"version 1\n")})
        mountd_url, flower_api = wait_until_serving(stack)
        archive = build(store, "report.sync", source, "/report", b"version 1\n")
        url = f"{mountd_url}/{served_name(archive)}"

        status, body, first_etag = http_get(url)
        assert (status, body) == (200, b"version 1\n")
        assert first_etag

        source.serve({"/report": Route.fixed(b"version 2\n")})
        wait_for(lambda: expired(archive), STEP_TIMEOUT, interval=0.1, what="the archive expired")
        status, body, stale_etag = http_get(url)
        assert (status, body, stale_etag) == (200, b"version 1\n", first_etag)

        wait_for(lambda: generation(archive) >= 1, STEP_TIMEOUT, interval=0.1, what="a worker committed")
        status, body, new_etag = http_get(url)
        assert (status, body) == (200, b"version 2\n")
        assert new_etag not in ("", first_etag)
        assert [r["path"] for r in source.requests()] == ["/report"]

        record = wait_value(
            lambda: (r := read_status(client, archive_key(store, archive))) and r.status == "committed" and r,
            STEP_TIMEOUT,
            what="the refresh's status record",
        )
        assert record.worker in WORKER_NAMES

        def task_listed() -> dict[str, Any] | None:
            tasks = get_json(f"{flower_api}/tasks", stack["flower_auth"]) or {}
            task: dict[str, Any] = tasks.get(str(record.job_id), {})
            return task if task.get("state") == "SUCCESS" else None

        task = wait_value(task_listed, STEP_TIMEOUT, interval=0.5, what="flower lists the refresh task")
        assert (task["name"], task["worker"]) == ("sync.refresh", record.worker)

        # Both workers take part: rounds of simultaneous stale reads until each ran a refresh.
        feeds = [build(store, f"feed-{i}.sync", source, "/report", b"old\n") for i in range(ROUND_SIZE)]
        took_part = {record.worker}
        for _ in range(MAX_ROUNDS):
            took_part |= refresh_round(stack, mountd_url, feeds)
            if took_part >= set(WORKER_NAMES):
                break
        assert took_part == set(WORKER_NAMES)
        for feed in feeds:
            with open_archive(feed) as snap:
                assert snap.read_payload() == b"version 2\n"

        # What the compose healthchecks ask: mountd's health endpoint and each worker's.
        assert http_get(f"{mountd_url}{HEALTH_PATH}")[0] == 200
        for name in WORKER_NAMES:
            assert http_get(f"http://127.0.0.1:{stack['ports'][name]}/health")[0] == 200, name

        # SYNC_LOG_FORMAT=json (compose.yaml): every line each service wrote is one JSON object, mountd's
        # "serving" startup line and Flower's (Tornado's) lines included.
        for name in ("mountd", "flower", *WORKER_NAMES):
            lines = stack[name].log.read_text().splitlines()
            assert lines, name
            events = [json.loads(line)["event"] for line in lines]
            if name == "mountd":
                assert any(e.startswith("serving ") for e in events)
            if name == "flower":
                assert any(e.startswith("Visit me at") for e in events)
