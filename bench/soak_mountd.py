"""A bounded load and fault soak of one writable mountd with authentication, on loopback only.

What runs at once, for ``--seconds`` (default 60):

* one mountd process (``mountd.serve``, writable, a users file with one owner, Basic auth) over a store of
  ``--archives`` archives (default 1,000: 10 folders of 100 CSV archives) whose TTL is 2 s;
* ``--clients`` client threads (default 100), each on its own keep-alive connection, mixing GET (40 %),
  Range GET (20 %), PROPFIND Depth 1 of a folder (10 %), PUT of a whole payload (15 %) and LOCK then UNLOCK
  of an archive (15 %);
* two committer processes replacing payloads the whole time through ``sync_format.commit_payload`` (the
  commit path of the refresh workers), each at its own pace, retrying on a generation conflict;
* 32 slowloris connections dripping one request-head byte a second (reconnecting when the server closes
  them at its head deadline);
* one client sending oversized bodies: PROPFIND declaring 2 MiB (413 expected) and a PUT over the upload
  limit (413 expected);
* ``SLOW_READERS`` (24, more than mountd's 16 worker threads) slow readers, each GETting an 8 MiB payload
  over and over through a 64 KiB receive buffer at about 256 KiB/s (a body takes about 30 s), each body
  checked byte for byte ("SLOW GET"): they must not starve the other clients.

Every payload ever written (initial, committed, PUT) is ``payload_for(name, writer, n)``: its first line
names writer and counter and the rest is derived from them, so every GET body is checked exactly — it must
equal the payload of the generation it names (a torn or mixed read fails), and a Range body must equal the
same slice of it. Expected answers: GET 200/206, PROPFIND 207, PUT 201/204 or 423 (locked by a client),
LOCK 200 or 423 (someone holds it), UNLOCK 204, oversized 413, and the slow connections closed by the
server. Anything else is an error, by kind. Latencies (p50, p99) are per operation; RSS is the server's
(``VmRSS`` sampled each second, and its peak ``VmHWM``). Goal: no error, RSS under 300 MB.

Run ``.venv/bin/python bench/soak_mountd.py [--seconds 60] [--clients 100] [--archives 1000] [--json PATH]``.
Exit status 0 when the soak ran clean (no error, RSS under the goal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from broker import Settings
from mountd import serve
from mountd.auth.users import Role, add_user, load_users
from mountd.writable.policy import WritePolicy
from sync_format import OwnershipSection, SwapConflict, SyncError, commit_payload, open_archive
from sync_format.testing import make_archive, make_manifest

FOLDERS = 10
TTL = 2
USER, PASSWORD = "soak", "soak-password"
MAX_UPLOAD = 64 * 1024
RSS_GOAL_MB = 300
SLOWLORIS = 32
#: Slow readers, the payload each reads (``/big.bin``), and how: bytes per read, seconds between reads.
SLOW_READERS = 24
BIG_PAYLOAD = bytes(range(256)) * (32 * 1024)  # 8 MiB
SLOW_READ = 64 * 1024
SLOW_PAUSE = 0.25
LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><lockinfo xmlns="DAV:"><lockscope><exclusive/></lockscope>'
    b"<locktype><write/></locktype><owner>soak</owner></lockinfo>"
)


def payload_for(name: str, writer: str, n: int) -> bytes:
    """The payload ``writer`` writes as its ``n``-th version of ``name``: a header line, then derived rows."""
    seed = hashlib.sha256(f"{name}|{writer}|{n}".encode()).hexdigest()
    rows = 20 + int(seed[:2], 16)  # 20-275 rows: sizes differ between versions
    return f"{name},{writer},{n}\n".encode() + b"".join(
        f"{seed[i % 60 : i % 60 + 4]},{i}\n".encode() for i in range(rows)
    )


def expected_body(body: bytes) -> bytes | None:
    """The payload a body claims to be (from its first line), or None when the first line is not ours."""
    first = body.split(b"\n", 1)[0].decode(errors="replace").split(",")
    if len(first) != 3 or not first[2].isdigit():
        return None
    return payload_for(first[0], first[1], int(first[2]))


def build_store(root: Path, count: int) -> list[str]:
    """``count`` writable CSV archives in ``FOLDERS`` folders; their request paths."""
    manifest = replace(
        make_manifest(content_type="text/csv", display_ext="csv", ttl=TTL),
        ownership=OwnershipSection(write_allowed=True),
    )
    paths = []
    for i in range(count):
        folder = f"f{i % FOLDERS}"
        name = f"a{i}.csv"
        (root / folder).mkdir(parents=True, exist_ok=True)
        make_archive(
            root / folder / f"{name}.sync", payload_for(f"/{folder}/{name}", "init", 0), manifest=manifest
        )
        paths.append(f"/{folder}/{name}")
    # The slow readers' payload: not in ``paths``, so that nobody changes it.
    make_archive(
        root / "big.bin.sync",
        BIG_PAYLOAD,
        manifest=make_manifest(content_type="application/octet-stream", display_ext="bin", ttl=2**40),
    )
    return paths


def serve_main(store: str, users: str, port_file: str) -> int:
    """The mountd process: writable, with the users file; writes its port to ``port_file``."""

    def ready(handle: object) -> None:
        Path(port_file).write_text(str(handle.port))  # type: ignore[attr-defined]

    serve(
        Settings(host="127.0.0.1", port=0),
        Path(store),
        users=load_users(Path(users)),
        writable=WritePolicy(Path(store), max_upload=MAX_UPLOAD),
        on_ready=ready,
    )
    return 0


def commit_main(store: str, paths_file: str, writer: str, seconds: float) -> int:
    """A committer process: replace random payloads until ``seconds`` passed; print the commit count."""
    paths = json.loads(Path(paths_file).read_text())
    rng = random.Random(writer)
    deadline = time.monotonic() + seconds
    commits = conflicts = n = 0
    while time.monotonic() < deadline:
        path = rng.choice(paths)
        archive = Path(store) / (path.lstrip("/") + ".sync")
        n += 1
        try:
            with open_archive(archive) as snapshot:
                generation = snapshot.generation
            commit_payload(archive, generation, payload_for(path, writer, n))
            commits += 1
        except SwapConflict:
            conflicts += 1
        except SyncError:
            conflicts += 1  # the archive is being replaced by a PUT's rename at this instant
        time.sleep(0.005)
    print(json.dumps({"commits": commits, "conflicts": conflicts}), flush=True)
    return 0


class Stats:
    """Counts, errors by kind and latencies, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.examples: list[str] = []

    def record(self, op: str, seconds: float, outcome: str, error: str | None = None) -> None:
        with self.lock:
            self.requests[op] += 1
            self.outcomes[f"{op} {outcome}"] += 1
            self.latency[op].append(seconds)
            if error is not None:
                self.errors[f"{op}: {error}"] += 1
                if len(self.examples) < 10:
                    self.examples.append(f"{op} {outcome}: {error}")


def client_loop(port: int, paths: list[str], stats: Stats, stop: threading.Event, seed: int) -> None:
    """One client: a keep-alive connection, a random mix of operations until ``stop``."""
    rng = random.Random(seed)
    per_folder = len(paths) // FOLDERS
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    puts = 0
    while not stop.is_set():
        roll = rng.random()
        path = rng.choice(paths)
        started = time.perf_counter()
        op = "?"
        try:
            if roll < 0.40:
                op = "GET"
                status, body, _ = _do(conn, "GET", path, auth)
                error = None if status == 200 else f"status {status}"
                if error is None and expected_body(body) != body:
                    error = "body is not a committed payload (torn or mixed)"
            elif roll < 0.60:
                op = "RANGE"
                first = rng.randrange(0, 100)  # every payload is longer than 150 bytes
                status, body, headers = _do(
                    conn, "GET", path, {**auth, "Range": f"bytes={first}-{first + 99}"}
                )
                error = None if status == 206 else f"status {status}"
                if error is None:
                    error = _check_range(conn, path, auth, body, headers, first)
            elif roll < 0.70:
                op = "PROPFIND"
                folder = path.rsplit("/", 1)[0] + "/"
                status, body, _ = _do(conn, "PROPFIND", folder, {**auth, "Depth": "1"})
                listed = len(re.findall(rb"<(?:\w+:)?response[ >]", body))
                error = (
                    None
                    if status == 207 and listed == per_folder + 1
                    else f"status {status}, {listed} listed"
                )
            elif roll < 0.85:
                op = "PUT"
                puts += 1
                status, _, _ = _do(conn, "PUT", path, auth, payload_for(path, f"put{seed}", puts))
                error = None if status in (201, 204, 423) else f"status {status}"
            else:
                op = "LOCK"
                status, _, headers = _do(
                    conn,
                    "LOCK",
                    path,
                    {**auth, "Timeout": "Second-30", "Content-Type": "application/xml"},
                    LOCK_BODY,
                )
                error = None if status in (200, 423) else f"status {status}"
                if status == 200:
                    token = headers.get("lock-token", "")
                    status2, _, _ = _do(conn, "UNLOCK", path, {**auth, "Lock-Token": token})
                    if status2 != 204:
                        error = f"UNLOCK status {status2}"
            stats.record(op, time.perf_counter() - started, str(status), error)
        except (OSError, http.client.HTTPException) as exc:
            stats.record(op, time.perf_counter() - started, "connection-error", type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def _do(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}


def _check_range(
    conn: http.client.HTTPConnection,
    path: str,
    auth: dict[str, str],
    body: bytes,
    headers: dict[str, str],
    first: int,
) -> str | None:
    """A range is checked against the full payload of the same version (fetched by its ETag)."""
    etag = headers.get("etag", "")
    status, full, full_headers = _do(conn, "GET", path, auth)
    if status != 200 or full_headers.get("etag") != etag:
        return None  # a newer version was committed in between: nothing to compare against
    if expected_body(full) != full:
        return "body is not a committed payload (torn or mixed)"
    return None if full[first : first + 100] == body else "range bytes differ from the version's payload"


def slowloris(port: int, stop: threading.Event, counts: Counter[str]) -> None:
    """``SLOWLORIS`` connections dripping a head byte a second; reopened when the server closes them."""
    head = b"GET /f0/a0.csv HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 10_000
    socks: list[tuple[socket.socket, int]] = []
    while not stop.is_set():
        while len(socks) < SLOWLORIS:
            socks.append((socket.create_connection(("127.0.0.1", port), timeout=5), 0))
        kept = []
        for sock, sent in socks:
            try:
                sock.send(head[sent : sent + 1])
                kept.append((sock, sent + 1))
            except OSError:
                counts["closed by server"] += 1
                sock.close()
        socks = kept
        stop.wait(1.0)
    for sock, _ in socks:
        sock.close()


def slow_reader(port: int, stop: threading.Event, stats: Stats) -> None:
    """GET ``/big.bin`` through a small receive buffer, ``SLOW_READ`` bytes every ``SLOW_PAUSE`` s, until
    ``stop`` (a body cut short by the end of the soak is not counted)."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    while not stop.is_set():
        started = time.perf_counter()
        body = bytearray()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READ)
                ask = f"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n\r\n"
                sock.sendall(ask.encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed before the head")
                    head += chunk
                head, _, rest = head.partition(b"\r\n\r\n")
                body += rest
                while len(body) < len(BIG_PAYLOAD):
                    if stop.wait(SLOW_PAUSE):
                        return
                    chunk = sock.recv(SLOW_READ)
                    if not chunk:
                        break
                    body += chunk
            status = head[9:12].decode(errors="replace")
            error = None if status == "200" and body == BIG_PAYLOAD else f"status {status}, {len(body)} bytes"
            stats.record("SLOW GET", time.perf_counter() - started, status, error)
        except OSError as exc:
            stats.record("SLOW GET", time.perf_counter() - started, "connection-error", type(exc).__name__)


def oversized(port: int, stop: threading.Event, stats: Stats) -> None:
    """PROPFIND declaring 2 MiB and PUT over the upload limit, in a loop: 413 expected."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    while not stop.is_set():
        for method, size in (("PROPFIND", 2 * 1024 * 1024), ("PUT", MAX_UPLOAD * 4)):
            started = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(
                        f"{method} /f1/oversized.csv HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Authorization: {auth}\r\nContent-Length: {size}\r\n"
                        "Content-Type: application/xml\r\n\r\n".encode()
                    )
                    answer = sock.recv(64)
                status = answer[9:12].decode(errors="replace")
                stats.record(
                    f"OVERSIZED {method}",
                    time.perf_counter() - started,
                    status,
                    None if status == "413" else f"status {status!r}",
                )
            except OSError as exc:
                stats.record(
                    f"OVERSIZED {method}",
                    time.perf_counter() - started,
                    "connection-error",
                    type(exc).__name__,
                )
        stop.wait(0.2)


def rss_mb(pid: int, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of a process in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:

    store = tmp / "store"
    store.mkdir()
    paths = build_store(store, args.archives)
    paths_file = tmp / "paths.json"
    paths_file.write_text(json.dumps(paths))
    users = tmp / "users.toml"
    add_user(users, USER, Role.OWNER, PASSWORD)
    port_file = tmp / "port"
    me = str(Path(__file__).resolve())
    with open(tmp / "mountd.log", "wb") as server_log:
        server = subprocess.Popen(
            [sys.executable, me, "--serve", str(store), str(users), str(port_file)], stderr=server_log
        )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("mountd did not start: " + (tmp / "mountd.log").read_text()[-2000:])
            time.sleep(0.05)
        port = int(port_file.read_text())
        committers = [
            subprocess.Popen(
                [
                    sys.executable,
                    me,
                    "--commit",
                    str(store),
                    str(paths_file),
                    f"worker{i}",
                    str(args.seconds),
                ],
                stdout=subprocess.PIPE,
            )
            for i in (1, 2)
        ]
        stats = Stats()
        slow_counts: Counter[str] = Counter()
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(port, paths, stats, stop, i), daemon=True)
            for i in range(args.clients)
        ]
        threads.append(threading.Thread(target=slowloris, args=(port, stop, slow_counts), daemon=True))
        threads.append(threading.Thread(target=oversized, args=(port, stop, stats), daemon=True))
        threads += [
            threading.Thread(target=slow_reader, args=(port, stop, stats), daemon=True)
            for _ in range(SLOW_READERS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        rss_samples = []
        while time.monotonic() - started < args.seconds:
            rss_samples.append(rss_mb(server.pid, "VmRSS"))
            time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(35)
        elapsed = time.monotonic() - started
        commits = [json.loads((c.communicate(timeout=60)[0] or b"{}").decode() or "{}") for c in committers]
        peak = rss_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(20)
    log_tail = [
        line
        for line in (tmp / "mountd.log").read_text(errors="replace").splitlines()
        if "ERROR" in line or "Traceback" in line or "Error" in line
    ][-20:]
    latency = {
        op: {"p50_ms": statistics.median(v) * 1000, "p99_ms": sorted(v)[int(len(v) * 0.99)] * 1000}
        for op, v in sorted(stats.latency.items())
    }
    return {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "archives": args.archives,
        "requests": dict(stats.requests),
        "requests_total": sum(stats.requests.values()),
        "outcomes": dict(sorted(stats.outcomes.items())),
        "errors": dict(stats.errors),
        "error_examples": stats.examples,
        "latency": latency,
        "commits": commits,
        "slowloris": dict(slow_counts),
        "rss_mb_max_sampled": round(max(rss_samples), 1),
        "rss_mb_peak": round(peak, 1),
        "server_errors_logged": log_tail,
    }


def report(r: dict[str, object]) -> None:
    print(
        f"soak: {r['seconds']} s, {r['clients']} clients, {r['archives']} archives (TTL {TTL} s), "
        f"{SLOWLORIS} slowloris connections, {SLOW_READERS} slow readers, one oversized-body client, "
        "two committers"
    )
    print(f"requests: {r['requests_total']} ({r['requests_total'] / r['seconds']:.0f}/s)")  # type: ignore[operator]
    print("| operation | requests | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    lat = r["latency"]
    for op, count in sorted(r["requests"].items()):  # type: ignore[attr-defined]
        print(f"| {op} | {count} | {lat[op]['p50_ms']:.1f} | {lat[op]['p99_ms']:.1f} |")  # type: ignore[index]
    print("outcomes: " + ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items()))  # type: ignore[attr-defined]
    print(f"errors by kind: {r['errors'] or 'none'}")
    for example in r["error_examples"]:  # type: ignore[attr-defined]
        print(f"  e.g. {example}")
    print(f"commits by the two committers: {r['commits']}")
    for line in r["server_errors_logged"]:  # type: ignore[attr-defined]
        print(f"  mountd log: {line}")
    print(f"slowloris connections closed by the server (head deadline): {r['slowloris']}")
    print(
        f"mountd RSS: max sampled {r['rss_mb_max_sampled']} MB, peak (VmHWM) {r['rss_mb_peak']} MB "
        f"(goal < {RSS_GOAL_MB} MB)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        return serve_main(*argv[1:4])
    if argv and argv[0] == "--commit":
        return commit_main(argv[1], argv[2], argv[3], float(argv[4]))
    parser = argparse.ArgumentParser(description="Bounded load and fault soak of one writable mountd.")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--archives", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="15 s, 30 clients, 200 archives")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.clients, args.archives = 15.0, 30, 200
    with tempfile.TemporaryDirectory(prefix="soak-mountd-", dir=args.dir) as tmp:
        result = run(args, Path(tmp))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    clean = not result["errors"] and float(result["rss_mb_peak"]) < RSS_GOAL_MB  # type: ignore[arg-type]
    print("result: clean" if clean else "result: NOT clean")
    return 0 if clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
