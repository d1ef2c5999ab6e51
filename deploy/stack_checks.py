"""The compose stack checked as a user would: the part of deploy/test-stack.sh that runs once an engine is up.

Standard library only (it runs with the host's python3). Every step uses what a user has: ``docker compose``
with the project's own compose.yaml, HTTP on the published 127.0.0.1 ports, ``docker compose exec`` for
``redis-cli`` and ``syncctl status``. Every wait is bounded. Each check is recorded PASS/FAIL with a detail; a
table is printed at the end and the exit status is 1 if any check failed (or the stack never came up).
"""
# S603: the argv is docker compose with our own arguments; S310: every URL is http://127.0.0.1.
# ruff: noqa: S603, S310

from __future__ import annotations

import argparse
import base64
import http.client
import json
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MOUNTD = "http://127.0.0.1:4918"
FLOWER = "http://127.0.0.1:5555"
#: How long one step may take (a service starting, a refresh, Flower catching up).
STEP = 120.0
#: The sandbox layers a strict worker must report active (workers/confine/).
LAYERS = {"no_new_privs", "rlimits", "netns", "landlock", "seccomp"}
#: Redis keys every job touches (the Celery transport's queue and unacked bookkeeping).
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TRANSPORT_KEYS = re.compile(r"^(unacked(_index|_mutex)?|sync\.refresh|celery|_kombu\..*)$")
#: Keys mountd's refresh scheduler rewrites on every pass (its lease and its freshness summary): not a job's.
SCHEDULER_KEYS = re.compile(r"^sync:scheduler:(lease|summary):")
#: Each job end's receipt (``broker.job``: ``sync:end:<runner>``, expiring after 10 minutes): written by every
#: job's end, whichever archive, and gone when it expires.
END_RECEIPT_KEYS = re.compile(r"^sync:end:")


def log(message: str) -> None:
    print(f"[stack-checks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def wait(what: str, predicate: Callable[[], Any], timeout: float = STEP, interval: float = 1.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; CheckFailed after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError, subprocess.SubprocessError, CheckFailed) as exc:
            last_error = f" (last error: {exc})"
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")


class Stack:
    """``docker compose`` on the project's compose.yaml, with the generated env file."""

    def __init__(self, docker: str, root: Path, work: Path) -> None:
        self.docker = docker
        self.root = root
        self.work = work
        self.env_file = work / "stack.env"
        subprocess.run([str(root / "deploy" / "stack-init.sh"), str(self.env_file)], check=True)
        self.secrets = dict(
            line.split("=", 1)
            for line in self.env_file.read_text().splitlines()
            if "=" in line and line[0] != "#"
        )
        self.flower_auth = (self.secrets["SYNC_FLOWER_USER"], self.secrets["SYNC_FLOWER_PASSWORD"])

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            self.docker,
            "compose",
            "--project-directory",
            str(self.root),
            "-f",
            str(self.root / "compose.yaml"),
        ]
        argv += ["--env-file", str(self.env_file), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CheckFailed(
                f"docker compose {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}"
            )
        return result

    def exec(
        self, service: str, *command: str, index: int = 1, timeout: float = 120, check: bool = True
    ) -> str:
        """A command's output (stdout and, unless it must succeed, stderr) in a running container."""
        result = self.compose(
            "exec", "-T", "--index", str(index), service, *command, timeout=timeout, check=check
        )
        return result.stdout if check else result.stdout + result.stderr

    def containers(self) -> list[dict[str, Any]]:
        """``docker compose ps`` as JSON objects (one per container; running ones)."""
        out = self.compose("ps", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def healthy(self, expected: dict[str, int]) -> bool:
        """Whether exactly the expected number of containers of each service run and are healthy."""
        counts: dict[str, int] = {}
        for c in self.containers():
            if c.get("Health") != "healthy":
                return False
            counts[c["Service"]] = counts.get(c["Service"], 0) + 1
        return counts == expected

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [self.docker, "inspect", *names], capture_output=True, text=True, check=True, timeout=60
        )
        return list(json.loads(out.stdout))

    def copy_into_store(self, directory: Path) -> None:
        """``docker compose cp DIR/. mountd:/store/``: what an operator does to add archives."""
        self.compose("cp", f"{directory}/.", "mountd:/store/", timeout=120)

    def redis_cli(self, *args: str) -> str:
        """``redis-cli`` in the redis container (authenticated by REDISCLI_AUTH, as the healthcheck is)."""
        return self.exec("redis", "redis-cli", "--no-auth-warning", *args).strip()

    def worker_python(self, code: str, index: int = 1) -> str:
        return self.exec("worker", "python", "-c", code, index=index)


def http(
    method: str,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> tuple[int, bytes, dict[str, str]]:
    """One request: (status, body, headers); status 0 when nothing answers."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
        return 0, b"", {}


def generation(name: str) -> int:
    """The generation mountd reports for a served name (PROPFIND, property {urn:sync}generation)."""
    body = (
        b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><generation xmlns="urn:sync"/></prop></propfind>'
    )
    status, reply, _ = http(
        "PROPFIND", f"{MOUNTD}/{name}", body=body, headers={"Depth": "0", "Content-Type": "application/xml"}
    )
    if status != 207:
        raise CheckFailed(f"PROPFIND {name}: {status}")
    found = re.search(rb"generation[^>]*>(\d+)<", reply)
    if not found:
        raise CheckFailed(f"PROPFIND {name}: no generation in {reply[:200]!r}")
    return int(found.group(1))


class Checks:
    """The checks, in the order a user meets them; results collected for the table."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.results: list[tuple[str, bool, str, float]] = []
        self.index: dict[str, Any] = {}
        self.workers = 1

    def run(self, name: str, check: Callable[[], str]) -> bool:
        log(f"check: {name}")
        started = time.monotonic()
        try:
            detail, ok = check(), True
        except Exception as exc:  # noqa: BLE001  (any error fails this check; the others still run)
            detail, ok = f"{type(exc).__name__}: {exc}", False
        elapsed = time.monotonic() - started
        self.results.append((name, ok, detail, elapsed))
        log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        return ok

    # --- helpers ---------------------------------------------------------------------------------------
    def expected(self) -> dict[str, int]:
        return {"redis": 1, "mountd": 1, "worker": self.workers, "flower": 1}

    def wait_healthy(self) -> None:
        wait(
            f"every service healthy {self.expected()}",
            lambda: self.stack.healthy(self.expected()),
            timeout=240,
            interval=2,
        )

    def served(self, group: str) -> list[str]:
        return [served for key, served in self.index.items() if key.startswith(f"{group}/")]

    def worker_names(self) -> set[str]:
        return {f"sync@{c['ID'][:12]}" for c in self.stack.containers() if c["Service"] == "worker"}

    def history(self, names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """``syncctl status --json /store/ARCHIVE`` (newest first) for each served name, in a worker."""
        wanted = set(names)
        files = [
            key.split("/", 1)[1] for key, served in self.index.items() if "/" in key and served in wanted
        ]
        script = "; ".join(f"echo '#{f}'; syncctl status --json /store/{f}" for f in files)
        out = self.stack.exec("worker", "sh", "-c", script, timeout=300)
        histories: dict[str, list[dict[str, Any]]] = {}
        served = {k.split("/", 1)[1]: v for k, v in self.index.items() if "/" in k}
        for chunk in out.split("#")[1:]:
            name, _, doc = chunk.partition("\n")
            histories[served[name.strip()]] = json.loads(doc) if doc.strip() else []
        return histories

    def refreshed_once_per_generation(self, names: list[str]) -> str:
        """Each archive's committed history: generations 1..n consecutive, no generation committed twice.

        Also across a Redis restart: a job that committed while Redis was down waits for it to
        come back before it ends (``broker.job.END_RETRY_SECONDS``), so every commit has its record."""
        histories = self.history(names)
        runs = 0
        workers: set[str] = set()
        for name, records in histories.items():
            committed = sorted(r["generation"] for r in records if r["status"] == "committed")
            if not committed or committed != list(range(committed[0], committed[0] + len(committed))):
                seen = [(r["status"], r["generation"], r.get("job_id"), r.get("attempts")) for r in records]
                raise CheckFailed(f"{name}: committed generations {committed} not consecutive: {seen}")
            if committed[0] != 1:
                raise CheckFailed(f"{name}: first committed generation {committed[0]}")
            bases = [r["base_generation"] for r in records if r["status"] == "committed"]
            if len(set(bases)) != len(bases):
                raise CheckFailed(f"{name}: a generation was refreshed twice (bases {bases})")
            runs += len(committed)
            workers |= {r["worker"] for r in records if r.get("worker")}
        if len(histories) != len(names):
            raise CheckFailed(f"history for {len(histories)} of {len(names)} archives")
        return f"{len(names)} archives, {runs} committed runs, workers {sorted(workers)}"

    def read_all_at_once(self, names: list[str]) -> None:
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda n=n: statuses.append(http("GET", f"{MOUNTD}/{n}")[0]))
            for n in names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if statuses.count(200) != len(names):
            raise CheckFailed(f"GET statuses {statuses}")

    def metrics(self, index: int) -> str:
        return self.stack.worker_python(
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9808/metrics',timeout=5)"
            ".read().decode())",
            index=index,
        )

    def redis_snapshot(self) -> dict[str, str]:
        """Every Redis key with a digest of its value (DUMP), read in a worker with the stack's password."""
        code = (
            "import hashlib,json,os,redis;r=redis.Redis.from_url(os.environ['SYNC_BROKER_URL']);"
            "print(json.dumps({k.decode():hashlib.sha256(r.dump(k) or b'').hexdigest()"
            " for k in r.scan_iter()}))"
        )
        return dict(json.loads(self.stack.worker_python(code)))

    # --- the checks ------------------------------------------------------------------------------------
    def build_and_start(self) -> str:
        started = time.monotonic()
        build = self.stack.compose("build", timeout=900)
        built = time.monotonic() - started
        self.stack.compose("up", "-d", timeout=300)
        self.wait_healthy()
        images = {c["Service"]: self.stack.inspect(c["ID"])[0]["Image"] for c in self.stack.containers()}
        ours = {images[s] for s in ("mountd", "worker", "flower")}
        if len(ours) != 1:
            raise CheckFailed(f"mountd, worker and flower run different images: {images}")
        size = int(self.stack.inspect("sync:latest")[0]["Size"])
        # One "done" line per export: BuildKit's plain progress also prints the step when it starts, when
        # naming takes long enough to be shown twice (one CI run counted that start as a second build).
        builds = len(re.findall(r"naming to \S*sync:latest(?: [\d.]+s)? done", build.stdout + build.stderr))
        if builds != 1:
            raise CheckFailed(f"the image was built {builds} times")
        return f"image sync:latest built once in {built:.0f}s, {size / 1e6:.0f} MB; all services healthy"

    def json_logs(self) -> str:
        bad: list[str] = []
        counts: dict[str, int] = {}
        for service in ("mountd", "worker", "flower"):
            out = self.stack.compose("logs", "--no-color", "--no-log-prefix", service).stdout
            for line in ANSI.sub("", out).splitlines():
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                    counts[service] = counts.get(service, 0) + 1
                except ValueError:
                    bad.append(f"{service}: {line[:120]}")
        mountd = self.stack.compose("logs", "--no-color", "--no-log-prefix", "mountd").stdout
        if '"event": "serving /store' not in mountd:
            raise CheckFailed("mountd's startup line is not a JSON event")
        if bad or set(counts) != {"mountd", "worker", "flower"}:
            raise CheckFailed(f"lines that are not JSON: {bad[:5]} (JSON lines per service {counts})")
        return f"every line JSON: {counts}"

    def redis_password(self) -> str:
        no_password = self.stack.exec(
            "worker", "redis-cli", "-h", "redis", "set", "sync:intruder", "1", check=False
        )
        if "NOAUTH" not in no_password:
            raise CheckFailed(f"redis-cli without password: {no_password.strip()!r}")
        wrong = self.stack.exec(
            "worker", "redis-cli", "-h", "redis", "-a", "wrong", "--no-auth-warning", "ping", check=False
        )
        if "PONG" in wrong:
            raise CheckFailed("a wrong password was accepted")
        if self.stack.redis_cli("exists", "sync:intruder") != "0":
            raise CheckFailed("the unauthenticated SET went through")
        pong = self.stack.redis_cli("ping")
        if pong != "PONG":
            raise CheckFailed(f"with the password: {pong!r}")
        return "no password: NOAUTH; wrong password: refused; with the stack's password: PONG"

    def flower_auth(self) -> str:
        for path in ("/", "/api/workers", "/api/tasks"):
            status = http("GET", f"{FLOWER}{path}")[0]
            if status != 401:
                raise CheckFailed(f"unauthenticated GET {path}: {status}")
        status = http("POST", f"{FLOWER}/api/worker/shutdown/{sorted(self.worker_names())[0]}", body=b"")[0]
        if status != 401:
            raise CheckFailed(f"unauthenticated POST shutdown: {status}")
        if http("GET", f"{FLOWER}/api/workers", auth=("admin", "wrong"))[0] != 401:
            raise CheckFailed("a wrong Flower password was accepted")

        def listed() -> set[str] | None:
            status, body, _ = http(
                "GET", f"{FLOWER}/api/workers?refresh=1", auth=self.stack.flower_auth, timeout=30
            )
            names = set(json.loads(body)) if status == 200 else set()
            return names if names == self.worker_names() else None

        names = wait("Flower listing every worker", listed)
        return f"401 without credentials (pages, API, shutdown); with them lists {sorted(names)}"

    def ttl_refresh(self) -> str:
        [name] = self.served("ttl")
        self.stack.copy_into_store(self.stack.work / "archives" / "ttl")
        _, first_body, headers = wait(
            "mountd serving the TTL archive", lambda: (r := http("GET", f"{MOUNTD}/{name}"))[0] == 200 and r
        )
        first_etag, first_generation = headers.get("ETag", ""), generation(name)
        time.sleep(6)  # past its 5 s TTL
        http("GET", f"{MOUNTD}/{name}")  # the stale read that queues a refresh (the scheduler may have, too)
        wait("a worker refreshing the TTL archive", lambda: generation(name) > first_generation)
        status, body, headers = http("GET", f"{MOUNTD}/{name}")
        new_etag = headers.get("ETag", "")
        if status != 200 or new_etag in ("", first_etag) or body == first_body:
            raise CheckFailed(f"after the refresh: {status}, ETag {first_etag} -> {new_etag}")
        [record] = json.loads(self.stack.exec("worker", "syncctl", "status", "--json", "/store/ttl.sync"))[:1]
        if record["status"] != "committed" or record["worker"] not in self.worker_names():
            raise CheckFailed(f"status record {record}")
        return (
            f"generation {first_generation} -> {generation(name)}, ETag {first_etag} -> {new_etag}, "
            f"by {record['worker']}"
        )

    def flower_tasks(self) -> str:
        def tasks() -> list[dict[str, Any]]:
            status, body, _ = http("GET", f"{FLOWER}/api/tasks", auth=self.stack.flower_auth, timeout=30)
            found = json.loads(body).values() if status == 200 else []
            return [t for t in found if t.get("name") == "sync.refresh" and t.get("state") == "SUCCESS"]

        done = wait("Flower listing sync.refresh tasks", tasks)
        return (
            f"{len(done)} sync.refresh tasks in state SUCCESS, workers {sorted({t['worker'] for t in done})}"
        )

    def sandbox_layers(self) -> str:
        metrics = self.metrics(1)
        active = dict(re.findall(r'sandbox_layers_active\{layer="(\w+)"\} (\S+)', metrics))
        if set(active) != LAYERS or any(float(v) != 1.0 for v in active.values()):
            raise CheckFailed(f"layers {active}")
        return f"all five layers active in worker 1: {sorted(active)}"

    def module_cache(self) -> str:
        def listing() -> list[str]:
            listed = self.stack.exec("worker", "sh", "-c", "ls -i /cache/modules/*.cwasm 2>/dev/null || true")
            return listed.split()

        def jobs() -> float:
            found = re.findall(r'_jobs_total\{[^}]*outcome="committed"[^}]*\} (\S+)', self.metrics(1))
            return sum(float(v) for v in found)

        before = listing()
        if not before:
            raise CheckFailed("no compiled module in /cache")
        count = jobs()
        wait("worker 1 running more refreshes", lambda: jobs() > count + 1, timeout=90)
        after = listing()
        if before != after:
            raise CheckFailed(f"cache entries rewritten: {before} -> {after}")
        logs = self.stack.compose("logs", "--no-color", "worker").stdout
        if "module cache entry unusable" in logs:
            raise CheckFailed("the worker logged 'module cache entry unusable'")
        return (
            f"{len(before) // 2} compiled module(s) reused across {jobs():.0f} refreshes (same inode); "
            "no 'module cache entry unusable'"
        )

    def scale(self) -> str:
        self.workers = 3
        self.stack.compose("up", "-d", "--scale", "worker=3", "--no-recreate", timeout=300)
        self.wait_healthy()
        names = self.served("scale")
        self.stack.copy_into_store(self.stack.work / "archives" / "scale")
        wait(
            "mountd serving the 30 archives",
            lambda: all(http("HEAD", f"{MOUNTD}/{n}")[0] == 200 for n in names),
        )
        self.read_all_at_once(names)
        wait(
            "every one of the 30 archives refreshed",
            lambda: all(generation(n) >= 1 for n in names),
            timeout=240,
            interval=2,
        )
        return self.refreshed_once_per_generation(names)

    def hostile(self) -> str:
        [name] = self.served("hostile")
        flower_before = self.worker_names()
        before = self.redis_snapshot()
        self.stack.copy_into_store(self.stack.work / "archives" / "hostile")
        wait("mountd serving the hostile archive", lambda: http("HEAD", f"{MOUNTD}/{name}")[0] == 200)
        http("GET", f"{MOUNTD}/{name}")
        wait("the hostile archive's refresh committing", lambda: generation(name) >= 1, timeout=180)
        _, payload, _ = http("GET", f"{MOUNTD}/{name}")
        results = list(struct.unpack_from("<4i", payload))
        urls = self.index["hostile_urls"]
        allowed = [f"{u}: {r}" for u, r in zip(urls, results, strict=True) if r >= 0]
        if allowed:
            raise CheckFailed(f"requests not refused: {allowed}")
        after = self.redis_snapshot()
        archive_keys = [k for k in after if "hostile" in k]
        changed = sorted(
            k
            for k in set(before) | set(after)
            if before.get(k) != after.get(k)
            and not TRANSPORT_KEYS.match(k)
            and not SCHEDULER_KEYS.match(k)
            and not END_RECEIPT_KEYS.match(k)
            and not any(part in k for part in ("ttl.sync", "scale-", "restart-", "hostile", "status-index"))
        )
        if changed:
            raise CheckFailed(f"Redis keys changed outside the jobs: {changed}")
        missing = sorted(
            k
            for k in before
            if k not in after
            and not TRANSPORT_KEYS.match(k)
            and not END_RECEIPT_KEYS.match(k)
            and "sync:claim" not in k
        )
        if missing:
            raise CheckFailed(f"Redis keys gone: {missing}")
        self.wait_healthy()
        if self.worker_names() != flower_before:
            raise CheckFailed("a worker went away")
        redis_log = self.stack.compose("logs", "--no-color", "redis").stdout
        reached = "SECURITY ATTACK" in redis_log
        return (
            f"redis reached, dropped by Redis itself: {reached}; "
            f"results {dict(zip(urls, results, strict=True))} (all refused); workers healthy; "
            f"no Redis key changed outside jobs ({len(archive_keys)} keys of its own job)"
        )

    def redis_restart(self) -> str:
        names = self.served("restart")
        self.stack.copy_into_store(self.stack.work / "archives" / "restart")
        wait(
            "mountd serving the 10 archives",
            lambda: all(http("HEAD", f"{MOUNTD}/{n}")[0] == 200 for n in names),
        )
        self.read_all_at_once(names)
        self.stack.compose("restart", "redis", timeout=120)
        try:
            wait(
                "every archive refreshed after the Redis restart",
                lambda: all(generation(n) >= 1 for n in names),
                timeout=240,
                interval=2,
            )
        except CheckFailed as exc:
            stale = [n for n in names if generation(n) < 1]
            files = [k.split("/", 1)[1] for k, v in self.index.items() if "/" in k and v in stale]
            claims = {f: self.stack.redis_cli("hgetall", f"sync:claim:{f}").split() for f in files}
            raise CheckFailed(f"{exc}; not refreshed: {stale}; their claims: {claims}") from exc
        self.wait_healthy()
        # A job that committed while Redis was down writes its record when Redis is back (its end retries with
        # a growing pause, at most 5 s apart): wait for the records, bounded, before judging them.
        try:
            wait(
                "a committed status record of every archive",
                lambda: all(
                    any(r["status"] == "committed" for r in records)
                    for records in self.history(names).values()
                ),
                timeout=90,
                interval=2,
            )
        except CheckFailed as exc:
            histories = self.history(names)
            unrecorded = [n for n, rs in histories.items() if not any(r["status"] == "committed" for r in rs)]
            seen = {n: [(r["status"], r.get("error_code")) for r in histories[n]] for n in unrecorded}
            raise CheckFailed(f"{exc}; no committed record: {seen}") from exc
        return "Redis restarted mid-stream; " + self.refreshed_once_per_generation(names)

    def down_up(self) -> str:
        names = self.served("scale")[:5]
        before = self.history(names)
        generations = {n: generation(n) for n in names}
        self.stack.compose("down", timeout=300)
        if self.stack.containers():
            raise CheckFailed("containers left after down")
        self.workers = 1
        self.stack.compose("up", "-d", timeout=300)
        self.wait_healthy()
        after = self.history(names)
        for name in names:
            if generation(name) < generations[name]:
                raise CheckFailed(f"{name}: generation {generations[name]} -> {generation(name)}")
            kept = [r["job_id"] for r in after[name]]
            if not all(r["job_id"] in kept for r in before[name]):
                raise CheckFailed(f"{name}: status history lost records")
        return f"store and status history of {len(names)} archives kept across down/up"

    def stop(self) -> str:
        ids = [c["ID"] for c in self.stack.containers()]
        started = time.monotonic()
        self.stack.compose("stop", timeout=120)
        elapsed = time.monotonic() - started
        codes = {s["Name"].lstrip("/"): s["State"]["ExitCode"] for s in self.stack.inspect(*ids)}
        if elapsed >= 10 or any(code != 0 for code in codes.values()):
            raise CheckFailed(f"stop took {elapsed:.1f}s, exit codes {codes}")
        return f"stopped in {elapsed:.1f}s, every container exited 0"


def make_archives(stack: Stack) -> dict[str, Any]:
    """Build the test archives in a one-off container of the project image (as its user)."""
    out = stack.work / "archives"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    subprocess.run(
        [
            stack.docker,
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{stack.root / 'tests'}:/tests:ro",
            "-v",
            f"{stack.root / 'deploy'}:/deploy:ro",
            "-v",
            f"{out}:/out",
            "sync:latest",
            "python",
            "/deploy/stack_archives.py",
            "/out",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return dict(json.loads((out / "index.json").read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docker", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    stack = Stack(args.docker, args.root, args.work)
    checks = Checks(stack)
    started = time.monotonic()
    try:
        if checks.run("image built once, stack up, every service healthy", checks.build_and_start):
            checks.index = make_archives(stack)
            for name, check in (
                ("Redis refuses clients without the password", checks.redis_password),
                ("Flower requires auth, lists every worker", checks.flower_auth),
                ("5 s TTL archive refreshed by a worker container", checks.ttl_refresh),
                ("Flower lists sync.refresh tasks", checks.flower_tasks),
                ("five sandbox layers active in a worker", checks.sandbox_layers),
                ("module cache hit, no 'unusable' entries", checks.module_cache),
                ("--scale worker=3, 30 stale reads, no duplicate run", checks.scale),
                ("hostile archive refused, nothing harmed", checks.hostile),
                ("restart redis mid-stream loses no job", checks.redis_restart),
                ("every log line JSON (mountd, worker, flower)", checks.json_logs),
                ("down/up keeps store and status history", checks.down_up),
                ("docker compose stop exits cleanly < 10 s", checks.stop),
            ):
                checks.run(name, check)
    finally:
        if any(not ok for _, ok, _, _ in checks.results):
            for service in ("redis", "mountd", "worker", "flower"):
                tail = "200" if service == "worker" else "40"
                out = stack.compose("logs", "--no-color", "--tail", tail, service, check=False)
                print(f"--- last log lines of {service} ---\n{out.stdout}{out.stderr}", file=sys.stderr)
        stack.compose("down", "--volumes", "--timeout", "5", check=False, timeout=300)
    width = max(len(name) for name, *_ in checks.results)
    print(f"\n{'check'.ljust(width)}  result  time  detail")
    for name, ok, detail, elapsed in checks.results:
        print(f"{name.ljust(width)}  {'PASS' if ok else 'FAIL':6}  {elapsed:4.0f}s  {detail}")
    failed = [name for name, ok, *_ in checks.results if not ok]
    print(
        f"\n{len(checks.results) - len(failed)}/{len(checks.results)} checks passed in "
        f"{time.monotonic() - started:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed or len(checks.results) < 13 else 0


if __name__ == "__main__":
    sys.exit(main())
