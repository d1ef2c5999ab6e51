"""mountd against the WebDAV servers people use, in one run: big GETs, small GETs, PROPFIND, memory.

Servers, all started here on free 127.0.0.1 ports with their configuration in the temp directory, and
stopped at the end:

* ``mountd``: this repository's server (``mountd.serve``, a subprocess of this script) over a store of
  archives built with ``sync_format``; its loopback readers here get payload spans copied (``pread`` and a
  non-blocking ``send``, parked when the reader is slower), not by ``os.sendfile`` (``mountd.http.sendfile``);
  ``mountd-copy`` is the same with ``sendfile=False`` (the path TLS takes: blocking ``sendall``, never
  parked), shown for the big GET only; ``mountd x2`` is ``syncctl serve --processes 2`` (two server processes
  on one socket, the embedded broker, no local workers, no scheduler: the way to serve many small reads),
  shown for the small GETs only;
* ``wsgidav``: wsgidav's own ``FilesystemProvider`` with its command line's defaults (cheroot);
* ``rclone``: ``rclone serve webdav`` — the baseline the goals are stated against;
* ``nginx``: nginx with the dav-ext module, ``sendfile on`` — the ceiling;
* ``sendfile loop``: the floor of (a)'s CPU per GB, not a WebDAV server: this script's ``--serve-floor``,
  one blocking ``os.sendfile`` loop per body after a fixed header, one connection at a time, the request
  not even parsed. What a server sending by sendfile costs on this kernel at least; big GET only.

The three others serve the same bytes as plain files (payloads, and a folder of plain files where mountd
has a folder of archives).

(a) GET of one big payload (512 MiB; ``--quick`` 64 MiB), the client ``curl -o /dev/null``; runs are
    interleaved across servers and the median is reported in MB/s (10^6 bytes), with the CPU seconds the
    server's processes spent per GB sent (steadier than the rate on a busy machine). Goal: mountd ≥ 1.0x
    rclone, and CPU per GB ≤ 0.3x rclone's (the floor's ratio is shown beside it). curl itself tops out
    near 2.5-3.5 GB/s on this kind of machine (measured against nginx), which caps what the fastest
    servers can show.
(b) 4 KiB GETs: ``wrk -t2 -c16 -d5s --latency`` (``--quick`` 2 s) on one small file; requests/s, p50 and
    p99. Goal: ``mountd x2`` ≥ 0.7x rclone (and one process, ``mountd``, ≥ 0.5x).
(c) PROPFIND Depth 1 (no body, i.e. allprop) of a folder of 10,000 archives (``--quick`` 1,000) or plain
    files: the first request after the server started, and the median of the following ones; then the
    median of three with each ``<prop>`` list real clients send (``PROP_LISTS``: davfs2's, Windows').
    For mountd the first is on a store it never saw (empty cache dir: every archive opened once to learn
    its facts), the rest answer from its listing cache; then mountd is restarted with the same cache dir
    (page cache warm) and its first request is timed again ("after restart": facts come from the index on
    disk, ``mountd.dav.facts_store``). The archives are at least ``RACY_WAIT`` seconds old when listed, as a
    store is between restarts (younger versions are not recorded on disk yet). Then mountd's ``VmRSS``
    and ``VmHWM`` with the 10,000 archives listed and indexed (the never-seen process, after its warm
    requests; its ``VmRSS`` after the listings with ``<prop>`` lists too is shown beside). Then
    ``first_rounds`` paired rounds (7; ``--quick`` 3) of fresh processes: rclone, mountd on an empty cache
    dir, that mountd restarted, one first PROPFIND each (``bench_first_rounds``). Goals: first ≤ 1.5x
    rclone's first (medians of the rounds), also after a restart; warm speed ≥ 2.5x rclone's; RSS ≤ 100 MB.
(d) mountd's peak RSS (``VmHWM`` of the server process) while one GET streams a 5 GiB payload
    (``--quick`` 1 GiB): a real ZIP64 archive packed with ``SyncBuilder.with_payload_file`` from a sparse
    source file, served by a fresh mountd process. Goal: under 150 MB.

Run ``.venv/bin/python bench/bench_mountd.py [--quick] [--json PATH] [--dir DIR]``. Needs curl, wrk, rclone
and nginx (Debian: curl wrk rclone nginx libnginx-mod-http-dav-ext); a server that cannot be started is
reported and left out. All data lives in a temp directory (under ``--dir``) that is removed at the end.
Exit status 0 whenever the benchmark ran; goals are reported (``met``/``NO``), not enforced. The machine
is shared: single runs vary by ±25 %, so compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import goals

from sync_format import SyncBuilder, open_archive
from sync_format.testing import make_archive, make_manifest

MIB = 1024 * 1024
GIB = 1024 * MIB
#: Seconds a server gets to listen after it was started.
START_TIMEOUT = 30.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Seconds one client command may take before the run is abandoned.
CLIENT_TIMEOUT = 600.0
#: Size of the small file of (b), in bytes.
SMALL_SIZE = 4096
#: Bytes of each listed file of (c).
LISTED_SIZE = 100
#: Goals of (b): two server processes, and one, against rclone's requests/s.
SMALL_GOAL = 0.7
SMALL_GOAL_ONE_PROCESS = 0.5
#: Server processes of the ``mountd x2`` row of (b).
PROCESSES = 2
#: Goal of (a): mountd's server CPU seconds per GB at most this times rclone's.
CPU_GOAL = 0.3
#: Peak RSS goal of (d), in bytes.
RSS_GOAL = 150 * 10**6
#: RSS goal of (c) with every listed archive indexed, in bytes.
LISTING_RSS_GOAL = 100 * 10**6
#: Goals of (c): mountd's first PROPFIND time ÷ rclone's at most; warm speed ÷ rclone's at least.
FIRST_GOAL = 1.5
WARM_GOAL = 2.5
#: Seconds the listed archives must be old before (c): younger versions are not recorded on disk (RACY_NS).
RACY_WAIT = 2.5
#: Disk the 5 GiB archive of (d) needs besides the rest, with headroom, as a multiple of its size.
DISK_FACTOR = 1.2
#: The nginx module that answers PROPFIND.
NGINX_DAV_EXT = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
BASELINE = "rclone"
#: Name of the sendfile floor in (a) (``serve_floor``).
FLOOR = "sendfile loop"

#: Manifest of every benchmark archive: never stale, so no read asks for a refresh.
#: ``<prop>`` lists real clients send with their PROPFIND (rclone sends none): davfs2's, and Windows'
#: mini-redirector's (23 names, most unknown to any of the servers).
PROP_LISTS = {
    "davfs2": b'<?xml version="1.0" encoding="utf-8" ?><propfind xmlns="DAV:"><prop><getlastmodified/>'
    b"<getcontentlength/><resourcetype/><getetag/></prop></propfind>",
    "windows": b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop'
    b' xmlns:Z="urn:schemas-microsoft-com:"><D:name/><D:parentname/><D:href/><D:ishidden/><D:isroot/>'
    b"<D:iscollection/><D:isreadonly/><D:getcontenttype/><D:contentclass/><D:getcontentlanguage/>"
    b"<D:creationdate/><D:lastaccessed/><D:getlastmodified/><D:getcontentlength/><D:resourcetype/>"
    b"<D:isstructureddocument/><D:defaultdocument/><D:displayname/><D:isreadonly/><Z:Win32FileAttributes/>"
    b"<Z:Win32CreationTime/><Z:Win32LastAccessTime/><Z:Win32LastModifiedTime/></D:prop></D:propfind>",
}
#: Timed PROPFINDs with each list (after one untimed), per server: the median is shown.
PROP_LIST_RUNS = 3
MANIFEST = make_manifest(
    content_type="application/octet-stream", display_ext="bin", created_at="2026-01-01T00:00:00Z", ttl=2**62
)


@dataclass(frozen=True)
class Sizes:
    """What one run measures, by mode."""

    big: int
    listed: int
    rss_payload: int
    get_runs: int
    propfind_runs: int
    wrk_seconds: int
    #: Paired rounds of first listings (``bench_first_rounds``), whose medians the first-listing goals use.
    first_rounds: int


FULL = Sizes(
    big=512 * MIB,
    listed=10_000,
    rss_payload=5 * GIB,
    get_runs=5,
    propfind_runs=5,
    wrk_seconds=5,
    first_rounds=7,
)
QUICK = Sizes(
    big=64 * MIB,
    listed=1_000,
    rss_payload=1 * GIB,
    get_runs=3,
    propfind_runs=3,
    wrk_seconds=2,
    first_rounds=3,
)


@dataclass
class Server:
    """A running server."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Results:
    """Every figure of one run, as written by ``--json``."""

    meta: dict[str, Any] = field(default_factory=dict)
    big_get: dict[str, dict[str, Any]] = field(default_factory=dict)
    small_gets: dict[str, dict[str, Any]] = field(default_factory=dict)
    propfind: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: One dict per paired round of ``bench_first_rounds``: ``rclone_ms``, ``mountd_ms``, ``restart_ms``.
    first_rounds: list[dict[str, float]] = field(default_factory=list)
    listing_rss: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    goals: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# --- the mountd process --------------------------------------------------------------------------------


def serve_mountd(store: Path, *, sendfile: bool, cache_dir: Path) -> int:
    """``--serve-mountd``: serve ``store`` on a free port, print ``ready URL``, stop on SIGTERM."""
    import logging  # noqa: PLC0415  (only the server process needs it)

    from broker import Settings  # noqa: PLC0415
    from mountd import NullFreshness, serve_background  # noqa: PLC0415
    from mountd.server import settle_heap  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Blocked before the server's threads exist, so that only sigwait below receives them.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    settings = Settings(host="127.0.0.1", port=0, cache_dir=cache_dir)
    with serve_background(settings, store, NullFreshness(), sendfile=sendfile) as handle:
        settle_heap()  # as syncctl serve does (mountd.server.run_until_signal)
        print(f"ready {handle.mount_url}", flush=True)
        signal.sigwait(signals)
    return 0


def serve_floor(path: Path) -> int:
    """``--serve-floor``: answer every GET with ``path`` through one blocking ``os.sendfile`` loop, one
    connection at a time (keep-alive kept); prints ``ready URL``, runs until killed."""
    size = path.stat().st_size
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(f"ready http://127.0.0.1:{server.getsockname()[1]}", flush=True)
        while True:
            conn, _ = server.accept()
            with conn, open(path, "rb") as source:
                try:
                    _answer_floor(conn, source.fileno(), size)
                except OSError as exc:
                    print(f"{FLOOR}: {exc!r}", file=sys.stderr, flush=True)


def _answer_floor(conn: socket.socket, fd: int, size: int) -> None:
    head = b""
    while True:
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        head = head.partition(b"\r\n\r\n")[2]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        sent = 0
        while sent < size:
            sent += os.sendfile(conn.fileno(), fd, sent, size - sent)


# --- starting and stopping servers ----------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not predicate():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {START_TIMEOUT:.0f} s")
        time.sleep(0.05)


def _spawn(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def start_mountd(name: str, store: Path, tmp: Path, *, sendfile: bool = True, cache: str = "") -> Server:
    """mountd over ``store`` in a subprocess of this script, its cache dir ``tmp/cache-<cache or name>``."""
    log = tmp / f"{name}.log"
    cache_dir = tmp / f"cache-{cache or name}"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-mountd",
        str(store),
        "--cache-dir",
        str(cache_dir),
    ]
    return _start_ready(name, [*argv, *([] if sendfile else ["--no-sendfile"])], log)


def start_floor(plain: Path, tmp: Path, name: str = FLOOR) -> Server:
    """The sendfile floor (``serve_floor``) of ``plain/big.bin``, a subprocess of this script."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(plain / "big.bin")]
    return _start_ready(name, argv, tmp / "floor.log")


def _start_ready(name: str, argv: list[str], log: Path) -> Server:
    """Start ``argv`` (this script in a serving mode), logging to ``log``, and wait for its ``ready URL``."""
    process = _spawn(argv, log)
    found: list[str] = []

    def ready() -> bool:
        match = re.search(r"ready (\S+)", log.read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return bool(match)

    _wait(ready, process, name)
    return Server(name, found[0], process, log)


def start_mountd_processes(name: str, store: Path, tmp: Path, processes: int) -> Server:
    """``syncctl serve --processes N`` over ``store``: embedded broker, no local workers, no scheduler."""
    log = tmp / f"{name.replace(' ', '-')}.log"
    argv = [
        sys.executable,
        "-m",
        "syncctl",
        "serve",
        str(store),
        "--port",
        "0",
        "--processes",
        str(processes),
    ]
    cache = tmp / f"cache-{processes}"
    process = _spawn([*argv, "--workers", "0", "--no-scheduler", "--cache-dir", str(cache)], log)
    found: list[str] = []

    def ready() -> bool:
        match = re.search(r"serving .* at (\S+) ", log.read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return bool(match)

    _wait(ready, process, name)
    return Server(name, found[0], process, log)


def start_wsgidav(root: Path, tmp: Path) -> Server:
    """wsgidav's command line with its defaults over ``root`` (FilesystemProvider, cheroot)."""
    port, log = free_port(), tmp / "wsgidav.log"
    wsgidav = Path(sys.executable).with_name("wsgidav")
    argv = [str(wsgidav), "--host", "127.0.0.1", "--port", str(port), "--root", str(root)]
    process = _spawn([*argv, "--auth", "anonymous", "--no-config"], log, cwd=tmp)
    _wait(lambda: _listening(port), process, "wsgidav")
    return Server("wsgidav", f"http://127.0.0.1:{port}", process, log)


def start_rclone(root: Path, tmp: Path, name: str = "rclone") -> Server:
    """``rclone serve webdav`` over ``root`` with an empty configuration (its log ``tmp/<name>.log``)."""
    port, log = free_port(), tmp / f"{name}.log"
    config = tmp / "rclone.conf"
    config.write_text("")
    argv = ["rclone", "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}", "--config", str(config)]
    process = _spawn(argv, log)
    _wait(lambda: _listening(port), process, "rclone")
    return Server("rclone", f"http://127.0.0.1:{port}", process, log)


def start_nginx(root: Path, tmp: Path) -> Server:
    """nginx + dav-ext over ``root`` (sendfile on, no access log), run in the foreground."""
    port, log = free_port(), tmp / "nginx.log"
    prefix = tmp / "nginx"
    prefix.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read the 0700 temp directory
    temp_paths = "\n".join(
        f"  {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
load_module {NGINX_DAV_EXT};
{user}
worker_processes auto;
daemon off;
pid {prefix / "nginx.pid"};
error_log {log} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp_paths}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ dav_ext_methods PROPFIND OPTIONS; }}
  }}
}}
""")
    process = _spawn(["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(log)], tmp / "nginx.out")
    _wait(lambda: _listening(port), process, "nginx")
    return Server("nginx", f"http://127.0.0.1:{port}", process, log)


def stop(server: Server) -> None:
    """SIGTERM the server, then SIGKILL its process group if it does not exit in time."""
    with suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@contextmanager
def running(starters: dict[str, Callable[[], Server]], results: Results) -> Iterator[dict[str, Server]]:
    """Start every server that can start (the others are recorded as skipped); stop them all after."""
    servers: dict[str, Server] = {}
    try:
        for name, start in starters.items():
            try:
                servers[name] = start()
            except (OSError, RuntimeError) as exc:
                results.skipped[name] = str(exc)
                print(f"  {name}: not started ({exc})", file=sys.stderr)
        yield servers
    finally:
        for server in servers.values():
            stop(server)


# --- data --------------------------------------------------------------------------------------------


def build_data(tmp: Path, sizes: Sizes) -> tuple[Path, Path]:
    """The store (archives) and the plain tree (the same bytes as files); returns both roots."""
    store, plain = tmp / "store", tmp / "plain"
    (store / "list").mkdir(parents=True)
    (plain / "list").mkdir(parents=True)
    big = plain / "big.bin"
    block = os.urandom(MIB)
    with big.open("wb") as out:
        for _ in range(sizes.big // MIB):
            out.write(block)
    SyncBuilder().with_manifest(MANIFEST).with_payload_file(big).write_to(store / "big.bin.sync")
    small = os.urandom(SMALL_SIZE)
    (plain / "small.bin").write_bytes(small)
    make_archive(store / "small.bin.sync", small, manifest=MANIFEST)
    listed = os.urandom(LISTED_SIZE)
    template = store / "template.sync.tmp"
    make_archive(template, listed, manifest=MANIFEST)
    for i in range(sizes.listed):
        shutil.copyfile(template, store / "list" / f"item{i:05d}.bin.sync")
        (plain / "list" / f"item{i:05d}.bin").write_bytes(listed)
    template.unlink()
    return store, plain


# --- clients -----------------------------------------------------------------------------------------


def curl_get(url: str) -> tuple[float, int]:
    """GET with curl into /dev/null: (MB/s, bytes)."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    ).stdout.split()
    size, seconds, code = int(out[0]), float(out[1]), out[2]
    if code != "200":
        raise RuntimeError(f"GET {url} answered {code}")
    return size / seconds / 1e6, size


def wrk(url: str, seconds: int) -> dict[str, float]:
    """``wrk -t2 -c16 --latency``: requests/s, p50 and p99 in ms, non-2xx count."""
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if rate is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output: {out!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "req_per_s": float(rate.group(1)),
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)],
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def propfind(url: str, path: str, body: bytes | None = None) -> tuple[float, int, int]:
    """PROPFIND Depth 1 (without a body, or with ``body``) on a fresh connection: (ms, status, body bytes)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT)
    try:
        started = time.perf_counter()
        headers = {"Depth": "1"} if body is None else {"Depth": "1", "Content-Type": "application/xml"}
        conn.request("PROPFIND", path, body=body, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return (time.perf_counter() - started) * 1000, resp.status, len(body)
    finally:
        conn.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (nginx's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is the state
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes (``VmHWM``)."""
    return proc_status_bytes(pid, "VmHWM")


def proc_status_bytes(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} for pid {pid}")
    return int(match.group(1)) * 1024


# --- the measurements --------------------------------------------------------------------------------


def bench_big_get(servers: dict[str, Server], sizes: Sizes, results: Results) -> None:
    """(a): interleaved curl GETs of the big payload: median MB/s, and server CPU seconds per GB sent."""
    runs: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    for server in servers.values():  # one untimed pass: page cache and connections warm
        curl_get(f"{server.url}/big.bin")
    for _ in range(sizes.get_runs):
        for name, server in servers.items():
            before = tree_cpu_seconds(server.process.pid)
            rate, size = curl_get(f"{server.url}/big.bin")
            cpu[name] += tree_cpu_seconds(server.process.pid) - before
            if size != sizes.big:
                raise RuntimeError(f"{name} sent {size} bytes of {sizes.big}")
            runs[name].append(rate)
    for name, rates in runs.items():
        results.big_get[name] = {
            "median_mb_s": statistics.median(rates),
            "runs_mb_s": rates,
            # CPU per byte does not depend on what else the machine runs, unlike the rate.
            "server_cpu_s_per_gb": cpu[name] / (sizes.get_runs * sizes.big / 1e9),
        }


def bench_small_gets(servers: dict[str, Server], sizes: Sizes, results: Results) -> None:
    """(b): wrk on the 4 KiB file, one server after the other."""
    for name, server in servers.items():
        results.small_gets[name] = wrk(f"{server.url}/small.bin", sizes.wrk_seconds)


def bench_propfind(
    servers: dict[str, Server], sizes: Sizes, results: Results, restart: Callable[[], Server]
) -> None:
    """(c): the first PROPFIND after start, then the median of the following ones; mountd's RSS; mountd's
    first PROPFIND again after ``restart`` (which replaces ``servers["mountd"]``)."""
    for name, server in list(servers.items()):
        first, status, size = propfind(server.url, "/list/")
        if status != 207:
            raise RuntimeError(f"{name} answered PROPFIND with {status}")
        warm = [propfind(server.url, "/list/")[0] for _ in range(sizes.propfind_runs)]
        results.propfind[name] = {
            "first_ms": first,
            "warm_median_ms": statistics.median(warm),
            "warm_ms": warm,
            "bytes": size,
        }
        if name == "mountd":  # the goal's figure: listed (bodyless, as before) and indexed
            results.listing_rss = {
                "archives": sizes.listed,
                "vmrss_bytes": proc_status_bytes(server.process.pid, "VmRSS"),
                "vmhwm_bytes": proc_status_bytes(server.process.pid, "VmHWM"),
            }
        for kind, body in PROP_LISTS.items():
            propfind(server.url, "/list/", body)  # the first with a list renders its members
            timed = [propfind(server.url, "/list/", body) for _ in range(PROP_LIST_RUNS)]
            if any(status != 207 for _, status, _ in timed):
                raise RuntimeError(f"{name} answered PROPFIND with {kind}'s list with {timed[0][1]}")
            results.propfind[name][f"{kind}_ms"] = statistics.median(ms for ms, _, _ in timed)
        if name != "mountd":
            continue
        results.listing_rss["vmrss_after_lists_bytes"] = proc_status_bytes(server.process.pid, "VmRSS")
        stop(server)
        servers[name] = restarted = restart()
        again, status, size_again = propfind(restarted.url, "/list/")
        if status != 207 or size_again != size:
            raise RuntimeError(f"restarted mountd answered PROPFIND with {status}, {size_again} bytes")
        results.propfind[name]["restart_first_ms"] = again


def bench_first_rounds(store: Path, plain: Path, tmp: Path, sizes: Sizes, results: Results) -> None:
    """(c), the goals' figures: ``sizes.first_rounds`` paired rounds of first listings. Each round starts a
    fresh rclone over ``plain`` and a fresh mountd over ``store`` on an empty cache dir (never seen), then
    restarts that mountd on the same cache dir; each answers one PROPFIND Depth 1 of the folder and stops.
    Which of the two goes first alternates, and dirty pages are written out (``os.sync``) before each round,
    so neither side always meets the machine in the same state. One first request is one sample of a figure
    that varies by ±25 % between runs here; the goals compare medians of these rounds."""
    expected = results.propfind.get("mountd", {}).get("bytes")

    def first(server: Server, same_as_mountd: bool = True) -> float:
        try:
            ms, status, size = propfind(server.url, "/list/")
        finally:
            stop(server)
        if status != 207 or (same_as_mountd and expected is not None and size != expected):
            raise RuntimeError(f"{server.name} answered the first PROPFIND with {status}, {size} bytes")
        return ms

    for index in range(sizes.first_rounds):
        os.sync()
        measured: dict[str, float] = {}
        cache = f"first-{index}"
        for side in ("rclone", "mountd") if index % 2 == 0 else ("mountd", "rclone"):
            if side == "rclone":
                measured["rclone_ms"] = first(start_rclone(plain, tmp, "rclone-first"), False)
            else:
                measured["mountd_ms"] = first(start_mountd("mountd-first", store, tmp, cache=cache))
                restarted = start_mountd("mountd-first-restarted", store, tmp, cache=cache)
                measured["restart_ms"] = first(restarted)
        shutil.rmtree(tmp / f"cache-{cache}", ignore_errors=True)
        results.first_rounds.append(measured)
        print(
            f"  round {index + 1}: rclone {measured['rclone_ms']:.0f} ms,"
            f" mountd {measured['mountd_ms']:.0f} ms, restarted {measured['restart_ms']:.0f} ms",
            file=sys.stderr,
        )


def first_medians(results: Results) -> dict[str, float | None]:
    """Medians of the paired rounds' first listings (``rclone_ms``, ``mountd_ms``, ``restart_ms``)."""
    keys = ("rclone_ms", "mountd_ms", "restart_ms")
    rounds = results.first_rounds
    return {key: statistics.median(r[key] for r in rounds) if rounds else None for key in keys}


def bench_rss(tmp: Path, sizes: Sizes, results: Results) -> None:
    """(d): a fresh mountd process streams a ZIP64 archive; its VmHWM before and after."""
    needed = int(sizes.rss_payload * DISK_FACTOR)
    free = shutil.disk_usage(tmp).free
    if free < needed:
        results.skipped["rss"] = f"needs {needed / GIB:.1f} GiB free in {tmp}, has {free / GIB:.1f}"
        return
    store = tmp / "rss-store"
    store.mkdir()
    source = tmp / "rss-source.bin"
    with source.open("wb") as out:  # sparse but for one random MiB at each end
        out.write(os.urandom(MIB))
        out.truncate(sizes.rss_payload - MIB)
        out.seek(0, os.SEEK_END)
        out.write(os.urandom(MIB))
    started = time.perf_counter()
    archive = store / "huge.bin.sync"
    SyncBuilder().with_manifest(MANIFEST).with_payload_file(source).write_to(archive)
    pack_s = time.perf_counter() - started
    source.unlink()
    with open_archive(archive) as snapshot:
        zip64 = snapshot.payload.size == sizes.rss_payload and sizes.rss_payload >= 2**32
    server = start_mountd("mountd-rss", store, tmp)
    try:
        before = vm_hwm(server.process.pid)
        rate, size = curl_get(f"{server.url}/huge.bin")
        after = vm_hwm(server.process.pid)
    finally:
        stop(server)
        shutil.rmtree(store)
    results.rss = {
        "payload_bytes": sizes.rss_payload,
        "zip64": zip64,
        "sent_bytes": size,
        "pack_s": pack_s,
        "get_mb_s": rate,
        "vmhwm_before_bytes": before,
        "vmhwm_after_bytes": after,
    }


# --- report ------------------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def judge(results: Results) -> None:
    """Fill ``results.goals`` from the figures."""
    figure = _figure
    get_ratio = _ratio(
        figure(results.big_get, "mountd", "median_mb_s"), figure(results.big_get, BASELINE, "median_mb_s")
    )
    small_base = figure(results.small_gets, BASELINE, "req_per_s")
    small_ratio = _ratio(figure(results.small_gets, f"mountd x{PROCESSES}", "req_per_s"), small_base)
    small_one = _ratio(figure(results.small_gets, "mountd", "req_per_s"), small_base)
    # Speed: a ratio above 1 means mountd is faster (rclone's time / mountd's time).
    list_ratio = _ratio(
        figure(results.propfind, BASELINE, "warm_median_ms"),
        figure(results.propfind, "mountd", "warm_median_ms"),
    )
    # Time: a ratio below 1 means mountd is faster (mountd's time / rclone's time).
    # The paired rounds' medians (``bench_first_rounds``).
    medians = first_medians(results)
    first_ratio = _ratio(medians["mountd_ms"], medians["rclone_ms"])
    restart_ratio = _ratio(medians["restart_ms"], medians["rclone_ms"])
    listing_rss = results.listing_rss.get("vmrss_bytes")
    peak = results.rss.get("vmhwm_after_bytes")
    cpu_ratio = _ratio(
        figure(results.big_get, "mountd", "server_cpu_s_per_gb"),
        figure(results.big_get, BASELINE, "server_cpu_s_per_gb"),
    )
    floor_ratio = _ratio(
        figure(results.big_get, FLOOR, "server_cpu_s_per_gb"),
        figure(results.big_get, BASELINE, "server_cpu_s_per_gb"),
    )
    results.goals = {
        "big_get_vs_rclone": {
            "ratio": get_ratio,
            "goal": 1.0,
            "met": get_ratio is not None and get_ratio >= 1.0,
        },
        "big_get_cpu_vs_rclone": {
            "ratio": cpu_ratio,
            "goal": CPU_GOAL,
            "at_most": True,
            "met": cpu_ratio is not None and cpu_ratio <= CPU_GOAL,
            # Not a goal: the same ratio for the bare sendfile loop, what sendfile itself costs here.
            "floor_ratio": floor_ratio,
        },
        "small_gets_vs_rclone": {
            "ratio": small_ratio,
            "goal": SMALL_GOAL,
            "met": small_ratio is not None and small_ratio >= SMALL_GOAL,
        },
        "small_gets_one_process_vs_rclone": {
            "ratio": small_one,
            "goal": SMALL_GOAL_ONE_PROCESS,
            "met": small_one is not None and small_one >= SMALL_GOAL_ONE_PROCESS,
        },
        "propfind_first_time_vs_rclone": {
            "ratio": first_ratio,
            "goal": FIRST_GOAL,
            "at_most": True,
            "met": first_ratio is not None and first_ratio <= FIRST_GOAL,
        },
        "propfind_restart_time_vs_rclone": {
            "ratio": restart_ratio,
            "goal": FIRST_GOAL,
            "at_most": True,
            "met": restart_ratio is not None and restart_ratio <= FIRST_GOAL,
        },
        "propfind_warm_speed_vs_rclone": {
            "ratio": list_ratio,
            "goal": WARM_GOAL,
            "met": list_ratio is not None and list_ratio >= WARM_GOAL,
        },
        "listing_rss": {
            "bytes": listing_rss,
            "goal": LISTING_RSS_GOAL,
            "at_most": True,
            "met": listing_rss is not None and listing_rss <= LISTING_RSS_GOAL,
        },
        "peak_rss": {"bytes": peak, "goal": RSS_GOAL, "met": peak is not None and peak < RSS_GOAL},
    }


def record_goals(results: Results) -> None:
    """Hand issue 15's goals of this run to ``report.py`` (``bench/goals.py``) with same-run figures."""
    get = _figure

    def met(name: str) -> bool | None:
        goal = results.goals.get(name, {})
        return None if goal.get("ratio", goal.get("bytes")) is None else bool(goal.get("met"))

    def ratio(name: str) -> str:
        return _fmt(results.goals.get(name, {}).get("ratio"), ".2f") + "x"

    medians = first_medians(results)
    first, restart, base_first = medians["mountd_ms"], medians["restart_ms"], medians["rclone_ms"]
    rounds = len(results.first_rounds)
    spread = {
        key: _spread([r[key] / r["rclone_ms"] for r in results.first_rounds])
        for key in ("mountd_ms", "restart_ms")
    }
    single = {
        key: _ratio(get(results.propfind, "mountd", key), get(results.propfind, BASELINE, "first_ms"))
        for key in ("first_ms", "restart_first_ms")
    }
    warm, base_warm = (
        get(results.propfind, "mountd", "warm_median_ms"),
        get(results.propfind, BASELINE, "warm_median_ms"),
    )
    listed = f"{results.listing_rss.get('archives', 0):,}"
    rows = [
        (
            "15.01-first-propfind",
            f"first PROPFIND Depth 1 of {listed} archives, never-seen store: time / rclone's first"
            f" (medians of {rounds} paired rounds of fresh processes)",
            f"{ratio('propfind_first_time_vs_rclone')} ({_fmt(first)} vs {_fmt(base_first)} ms; per round"
            f" {spread['mountd_ms']}; the servers' own first request {_fmt(single['first_ms'], '.2f')}x)",
            f"<= {FIRST_GOAL}x",
            met("propfind_first_time_vs_rclone"),
        ),
        (
            "15.02-first-propfind-restart",
            "first PROPFIND after a restart of mountd (same cache dir): time / rclone's first"
            f" (medians of {rounds} paired rounds)",
            f"{ratio('propfind_restart_time_vs_rclone')} ({_fmt(restart)} vs {_fmt(base_first)} ms; per round"
            f" {spread['restart_ms']}; the servers' own {_fmt(single['restart_first_ms'], '.2f')}x)",
            f"<= {FIRST_GOAL}x",
            met("propfind_restart_time_vs_rclone"),
        ),
        (
            "15.03-warm-propfind",
            "warm PROPFIND Depth 1: speed / rclone's",
            f"{ratio('propfind_warm_speed_vs_rclone')} ({_fmt(warm)} vs {_fmt(base_warm)} ms)",
            f">= {WARM_GOAL}x",
            met("propfind_warm_speed_vs_rclone"),
        ),
    ]
    small = {n: get(results.small_gets, n, "req_per_s") for n in (f"mountd x{PROCESSES}", "mountd", BASELINE)}
    rows.append(
        (
            "15.04-small-gets",
            f"4 KiB GETs, wrk -t2 -c16: req/s / rclone's (mountd --processes {PROCESSES})",
            f"{ratio('small_gets_vs_rclone')} ({_fmt(small[f'mountd x{PROCESSES}'])} vs"
            f" {_fmt(small[BASELINE])} req/s; one process {ratio('small_gets_one_process_vs_rclone')})",
            f">= {SMALL_GOAL}x",
            met("small_gets_vs_rclone"),
        )
    )
    mb = {n: get(results.big_get, n, "median_mb_s") for n in ("mountd", BASELINE)}
    cpu = {n: get(results.big_get, n, "server_cpu_s_per_gb") for n in ("mountd", BASELINE, FLOOR)}
    both = met("big_get_vs_rclone"), met("big_get_cpu_vs_rclone")
    floor = results.goals.get("big_get_cpu_vs_rclone", {}).get("floor_ratio")
    rows.append(
        (
            "15.06-big-get",
            "big GET: MB/s / rclone's (median); server CPU s/GB / rclone's",
            f"{ratio('big_get_vs_rclone')} ({_fmt(mb['mountd'])} vs {_fmt(mb[BASELINE])} MB/s); CPU"
            f" {ratio('big_get_cpu_vs_rclone')} ({_fmt(cpu['mountd'], '.3f')} vs"
            f" {_fmt(cpu[BASELINE], '.3f')} s/GB); a bare sendfile loop {_fmt(floor, '.2f')}x"
            f" ({_fmt(cpu[FLOOR], '.3f')} s/GB)",
            f">= 1.0x; CPU <= {CPU_GOAL}x",
            None if None in both else all(both),
        )
    )
    rss = results.listing_rss
    rows.append(
        (
            "15.12-listing-rss",
            f"mountd RSS with {listed} archives listed and indexed",
            f"VmRSS {_fmt((rss.get('vmrss_bytes') or 0) / 1e6)} MB,"
            f" VmHWM {_fmt((rss.get('vmhwm_bytes') or 0) / 1e6)} MB",
            f"<= {LISTING_RSS_GOAL / 1e6:.0f} MB",
            met("listing_rss"),
        )
    )
    for row in rows:
        goals.record(*row)


def _figure(table: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    """One server's figure of one table, as a float (None when it was not measured)."""
    value = table.get(name, {}).get(key)
    return float(value) if value is not None else None


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(results: Results, sizes: Sizes) -> None:
    """The tables and the goals."""
    meta = results.meta
    print(
        f"\nmountd benchmark  {meta['mode']}  python {meta['python']}  {meta['cpus']} CPUs  "
        f"total {meta['total_s']:.0f} s  (MB = 10^6 bytes; ratios against {BASELINE} in this run)"
    )
    base_get = results.big_get.get(BASELINE, {}).get("median_mb_s")
    print(f"\n(a) GET {sizes.big // MIB} MiB, curl, median of {sizes.get_runs}")
    print(f"  {'server':<13} {'MB/s':>8} {'vs ' + BASELINE:>10} {'CPU s/GB':>9}   runs")
    for name, row in results.big_get.items():
        runs = " ".join(f"{r:.0f}" for r in row["runs_mb_s"])
        ratio = _ratio(row["median_mb_s"], base_get)
        print(
            f"  {name:<13} {row['median_mb_s']:>8.0f} {_fmt(ratio, '.2f') + 'x':>10} "
            f"{row['server_cpu_s_per_gb']:>9.3f}   {runs}"
        )
    base_small = results.small_gets.get(BASELINE, {}).get("req_per_s")
    print(f"\n(b) {SMALL_SIZE // 1024} KiB GETs, wrk -t2 -c16 -d{sizes.wrk_seconds}s")
    print(f"  {'server':<12} {'req/s':>8} {'vs ' + BASELINE:>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in results.small_gets.items():
        ratio = _ratio(row["req_per_s"], base_small)
        print(
            f"  {name:<12} {row['req_per_s']:>8.0f} {_fmt(ratio, '.2f') + 'x':>10} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
            + (f"  non-2xx {row['non_2xx']:.0f}" if row["non_2xx"] else "")
        )
    base_list = results.propfind.get(BASELINE, {}).get("warm_median_ms")
    print(
        f"\n(c) PROPFIND Depth 1, {sizes.listed} entries: first request, then median of {sizes.propfind_runs}"
    )
    base_first = results.propfind.get(BASELINE, {}).get("first_ms")
    print(
        f"  {'server':<12} {'first ms':>9} {'vs ' + BASELINE:>10} {'restart ms':>11} {'vs ' + BASELINE:>10} "
        f"{'warm ms':>9} {'speed vs ' + BASELINE:>16} {'bytes':>10}"
    )
    for name, row in results.propfind.items():
        ratio = _ratio(base_list, row["warm_median_ms"])
        restart = row.get("restart_first_ms")
        first_ratio = _fmt(_ratio(row["first_ms"], base_first), ".2f") + "x"
        print(
            f"  {name:<12} {row['first_ms']:>9.0f} {first_ratio:>10} "
            f"{_fmt(restart):>11} {_fmt(_ratio(restart, base_first), '.2f') + 'x' if restart else '':>10} "
            f"{row['warm_median_ms']:>9.0f} {_fmt(ratio, '.2f') + 'x':>16} {row['bytes']:>10}"
        )
    print(
        "  warm, with the <prop> list a client sends (median ms; speed vs rclone): "
        + ", ".join(f"{kind} ({len(body)} bytes)" for kind, body in PROP_LISTS.items())
    )
    for name, row in results.propfind.items():
        cells = []
        for kind in PROP_LISTS:
            ms = row.get(f"{kind}_ms")
            speed = _ratio(results.propfind.get(BASELINE, {}).get(f"{kind}_ms"), ms)
            cells.append(f"{kind} {_fmt(ms)} ms {_fmt(speed, '.2f')}x")
        print(f"  {name:<12} " + "   ".join(cells))
    if results.first_rounds:
        print(
            f"  first listings, {len(results.first_rounds)} paired rounds of fresh processes"
            " (order alternating; the goals use the medians):"
        )
        for index, r in enumerate(results.first_rounds, 1):
            print(
                f"    round {index}: {BASELINE} {r['rclone_ms']:.0f} ms,"
                f" mountd never-seen {r['mountd_ms']:.0f} ms"
                f" ({r['mountd_ms'] / r['rclone_ms']:.2f}x), restarted {r['restart_ms']:.0f} ms"
                f" ({r['restart_ms'] / r['rclone_ms']:.2f}x)"
            )
        medians = first_medians(results)
        print(
            f"    medians: {BASELINE} {_fmt(medians['rclone_ms'])} ms,"
            f" mountd never-seen {_fmt(medians['mountd_ms'])} ms, restarted {_fmt(medians['restart_ms'])} ms"
        )
    if results.listing_rss:
        lrss = results.listing_rss
        print(
            f"  mountd with {lrss['archives']} archives listed and indexed: "
            f"VmRSS {lrss['vmrss_bytes'] / 1e6:.0f} MB, VmHWM {lrss['vmhwm_bytes'] / 1e6:.0f} MB; "
            f"after the listings with both <prop> lists too: VmRSS "
            f"{lrss['vmrss_after_lists_bytes'] / 1e6:.0f} MB"
        )
    if results.rss:
        rss = results.rss
        print(
            f"\n(d) mountd peak RSS streaming a {rss['payload_bytes'] / GIB:.0f} GiB payload "
            f"(ZIP64 {rss['zip64']}): VmHWM {rss['vmhwm_before_bytes'] / 1e6:.0f} MB before, "
            f"{rss['vmhwm_after_bytes'] / 1e6:.0f} MB after; GET {rss['get_mb_s']:.0f} MB/s; "
            f"packing took {rss['pack_s']:.0f} s"
        )
    print("\nGoals")
    for name, goal in results.goals.items():
        bound = "<=" if goal.get("at_most") else ">="
        if "ratio" in goal:
            shown, target = _fmt(goal["ratio"], ".2f") + "x", f"{bound} {goal['goal']}x"
        elif goal.get("at_most"):
            shown, target = _fmt((goal["bytes"] or 0) / 1e6) + " MB", f"<= {goal['goal'] / 1e6:.0f} MB"
        else:
            shown, target = _fmt((goal["bytes"] or 0) / 1e6) + " MB", f"< {goal['goal'] / 1e6:.0f} MB"
        floor = ""
        if "floor_ratio" in goal:
            floor = f"  (a bare sendfile loop: {_fmt(goal['floor_ratio'], '.2f')}x)"
        print(f"  {name:<32} {shown:>10}  goal {target:<10} {'met' if goal['met'] else 'NO'}{floor}")
    for name, why in results.skipped.items():
        print(f"  skipped {name}: {why}")


def run(args: argparse.Namespace, tmp: Path) -> Results:
    """Build the data, start the servers, measure (a) to (d)."""
    sizes = QUICK if args.quick else FULL
    results = Results()
    started = time.perf_counter()
    print(f"building data in {tmp} ...", file=sys.stderr)
    store, plain = build_data(tmp, sizes)
    built = time.monotonic()
    starters: dict[str, Callable[[], Server]] = {
        "mountd": lambda: start_mountd("mountd", store, tmp),
        "mountd-copy": lambda: start_mountd("mountd-copy", store, tmp, sendfile=False),
        f"mountd x{PROCESSES}": lambda: start_mountd_processes(f"mountd x{PROCESSES}", store, tmp, PROCESSES),
        "wsgidav": lambda: start_wsgidav(plain, tmp),
        "rclone": lambda: start_rclone(plain, tmp),
        "nginx": lambda: start_nginx(plain, tmp),
        FLOOR: lambda: start_floor(plain, tmp),
    }
    several = f"mountd x{PROCESSES}"
    with running(starters, results) as servers:
        others = {n: server for n, server in servers.items() if n not in ("mountd-copy", several, FLOOR)}
        print("(c) PROPFIND ...", file=sys.stderr)
        time.sleep(max(0.0, built + RACY_WAIT - time.monotonic()))
        # First: mountd's listing cache is still cold. The restarted mountd serves (a) and (b).
        bench_propfind(
            others, sizes, results, lambda: start_mountd("mountd-restarted", store, tmp, cache="mountd")
        )
        if "mountd" in others:
            servers["mountd"] = others["mountd"]
            if BASELINE in others:
                print("(c) first listings, paired rounds ...", file=sys.stderr)
                bench_first_rounds(store, plain, tmp, sizes, results)
        print("(a) big GETs ...", file=sys.stderr)
        bench_big_get({n: s for n, s in servers.items() if n != several}, sizes, results)
        print("(b) small GETs ...", file=sys.stderr)
        small = {n: s for n, s in servers.items() if n not in ("mountd-copy", FLOOR)}
        bench_small_gets(small, sizes, results)
    shutil.rmtree(store)
    shutil.rmtree(plain)
    print("(d) peak RSS ...", file=sys.stderr)
    bench_rss(tmp, sizes, results)
    judge(results)
    record_goals(results)
    results.meta = {
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "total_s": time.perf_counter() - started,
        "sizes": sizes.__dict__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve-mountd``, be the mountd server process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument("--dir", type=Path, help="parent of the temp directory (default: the system's)")
    parser.add_argument("--serve-mountd", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-sendfile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=Path(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor is not None:
        return serve_floor(args.serve_floor)
    if args.serve_mountd is not None:
        return serve_mountd(args.serve_mountd, sendfile=not args.no_sendfile, cache_dir=args.cache_dir)
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sync-bench-mountd-", dir=args.dir))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        results = run(args, tmp)
    print_report(results, QUICK if args.quick else FULL)
    if args.json is not None:
        args.json.write_text(json.dumps(results.__dict__, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
