"""Test "hosts": small HTTP servers, each in a network namespace of its own (or on 127.0.0.1), with logs.

Each namespace host gets a network namespace ``synct-<random>-<i>`` and a veth pair: the root end holds
``10.231.X.Y+1/30`` and the namespace end ``10.231.X.Y+2/30`` (a random free /30, so concurrent runs do not
collide), so the test process in the root namespace reaches every host directly, and different hosts are
different machines as far as a client can tell. A server listens on port 80 inside its namespace (the
namespace is ours, so the port is free); ``loopback_host`` runs the same server on 127.0.0.1 with a port
the kernel picks.

Servers answer from a routes file the test rewrites between cases (``ServedHost.serve``) and append one JSON
line per accepted connection and per request to a log *before* answering, so once a client has its answer
the log is complete, and a host a client never reached has an empty log. Everything created is removed on
exit, also when setup or the test fails (a SIGKILLed run leaves ``synct-*`` namespaces behind). Only ``ip``
(iproute2, which also starts the servers with ``ip netns exec``) and the standard library are used; the server
side is this file run as a script, so it imports nothing else at module level. Tests import it from
``support`` (or, as before, as ``netns_hosts``): pytest puts ``tests/`` on ``sys.path`` as
``tests/conftest.py`` lives there (prepend import mode).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import select
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Address block the /30 links are carved from.
LINK_BLOCK = ipaddress.ip_network("10.231.0.0/16")
#: Seconds a server may take to start listening and answer its readiness probe.
START_TIMEOUT = 10.0
#: Path of the readiness probe (its log lines are cleared once the server is ready).
READY_PATH = "/__ready"


@dataclass(frozen=True)
class Route:
    """What a server answers on one path.

    Attributes:
        kind: ``body``, ``large``, ``redirect``, ``hang``, ``drip``, ``trickle`` or ``truncated``.
        status: HTTP status.
        body: Fixed body (``body``).
        size: Body length in bytes (``large``, ``trickle``), bytes actually sent (``truncated``), header
            bytes dripped (``drip``).
        declare_length: Send ``Content-Length`` (``large``; without it the body ends when the connection
            closes).
        location: ``Location`` header (``redirect``).
        headers: Extra response headers.
        declared: ``Content-Length`` claimed (``truncated``).
        interval: Seconds between dripped bytes (``drip``, ``trickle``).
    """

    kind: str
    status: int = 200
    body: bytes = b""
    size: int = 0
    declare_length: bool = True
    location: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    declared: int = 0
    interval: float = 0.0

    @classmethod
    def fixed(cls, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Route:
        """Answer with ``body``."""
        return cls("body", status=status, body=body, headers=tuple((headers or {}).items()))

    @classmethod
    def large(cls, size: int, *, declare_length: bool = True) -> Route:
        """Answer 200 with ``size`` bytes of ``b"L"``, streamed."""
        return cls("large", size=size, declare_length=declare_length)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Route:
        """Answer a redirect to ``location``."""
        return cls("redirect", status=status, location=location)

    @classmethod
    def hang(cls) -> Route:
        """Read the request, log it, and never answer (until the client goes away)."""
        return cls("hang")

    @classmethod
    def drip(cls, count: int, interval: float) -> Route:
        """Send the status line, then one header byte every ``interval`` seconds, ``count`` times."""
        return cls("drip", size=count, interval=interval)

    @classmethod
    def trickle(cls, size: int, interval: float) -> Route:
        """Send complete headers (``Content-Length: size``), then the body one byte every ``interval`` s."""
        return cls("trickle", size=size, interval=interval)

    @classmethod
    def truncated(cls, declared: int, sent: int) -> Route:
        """Claim ``declared`` bytes in ``Content-Length``, send ``sent`` and close."""
        return cls("truncated", declared=declared, size=sent)

    def to_json(self) -> dict[str, Any]:
        """The route as the server reads it."""
        return {
            "kind": self.kind,
            "status": self.status,
            "body": base64.b64encode(self.body).decode(),
            "size": self.size,
            "declare_length": self.declare_length,
            "location": self.location,
            "headers": [list(h) for h in self.headers],
            "declared": self.declared,
            "interval": self.interval,
        }


@dataclass
class ServedHost:
    """One running test server and what it has seen.

    Attributes:
        label: The name the test gave it.
        address: The address a client connects to.
        port: The listening port.
        workdir: Where its routes file, log and stderr live.
        namespace: Its network namespace, or None for a loopback host.
        tls_port: The HTTPS port serving the same routes, when the host has a certificate.
    """

    label: str
    address: str
    port: int
    workdir: Path
    namespace: str | None = None
    tls_port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def routes_path(self) -> Path:
        """The JSON routes file the server reads on every request."""
        return self.workdir / "routes.json"

    @property
    def log_path(self) -> Path:
        """The JSON-lines log of connections and requests."""
        return self.workdir / "log.jsonl"

    def url(self, path: str = "/", *, host: str | None = None, tls: bool = False) -> str:
        """A URL for ``path`` on this server, naming it ``host`` (default: its address)."""
        name = host or (f"[{self.address}]" if ":" in self.address else self.address)
        scheme, port, default = ("https", self.tls_port, 443) if tls else ("http", self.port, 80)
        if port is None:
            raise ValueError(f"host {self.label} serves no HTTPS")
        return f"{scheme}://{name}{'' if port == default else f':{port}'}{path}"

    def serve(self, routes: Mapping[str, Route]) -> None:
        """Replace the routes (atomically: a request sees the old or the new set)."""
        tmp = self.routes_path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps({path: route.to_json() for path, route in routes.items()}))
        os.replace(tmp, self.routes_path)

    def events(self) -> list[dict[str, Any]]:
        """Every connection and request logged since the last reset, in order."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def requests(self) -> list[dict[str, Any]]:
        """The requests logged since the last reset (``method``, ``path``, ``host``, ``headers``)."""
        return [e for e in self.events() if e["event"] == "request"]

    def reset(self) -> None:
        """Forget the log and serve no routes (every path answers 404)."""
        self.serve({})
        self.log_path.write_text("")


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for one DNS name (also its own trust anchor).

    Attributes:
        name: The DNS name in the certificate's subjectAltName.
        cert: PEM certificate file.
        key: PEM private key file.
    """

    name: str
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A default-verifying client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path, name: str) -> Certificate:
    """Create a self-signed EC certificate for ``name`` with the ``openssl`` command.

    Args:
        directory: Where the PEM files go.
        name: The DNS name it certifies.

    Returns:
        The certificate.
    """
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    options = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subject = ["-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", *options, *subject, *files], check=True, capture_output=True)
    return Certificate(name, cert, key)


@contextlib.contextmanager
def loopback_host(label: str, certificate: Certificate | None = None) -> Iterator[ServedHost]:
    """Run a server on 127.0.0.1 (port chosen by the kernel) in the test's own namespace.

    Args:
        label: Name for the host.
        certificate: A certificate with which it also serves HTTPS (another port chosen by the kernel).

    Yields:
        The running host; stopped on exit.
    """
    with tempfile.TemporaryDirectory(prefix=f"netns-host-{label}-") as tmp, contextlib.ExitStack() as stack:
        host = ServedHost(label, "127.0.0.1", 0, Path(tmp))
        _start(host, [], "127.0.0.1", 0, certificate, stack)
        yield host


@contextlib.contextmanager
def netns_hosts(
    labels: Sequence[str], *, port: int = 80, certificates: Mapping[str, Certificate] | None = None
) -> Iterator[dict[str, ServedHost]]:
    """Create one network namespace with a server per label, reachable from the test process.

    Args:
        labels: Names of the hosts, distinct.
        port: Listening port inside each namespace.
        certificates: By label, a certificate with which that host also serves HTTPS on port 443.

    Yields:
        The running hosts by label; namespaces, veths and servers are removed on exit.

    Raises:
        RuntimeError: An ``ip`` command failed (not root, no netns support).
    """
    token = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="netns-hosts-") as tmp, contextlib.ExitStack() as stack:
        hosts: dict[str, ServedHost] = {}
        for index, (label, link) in enumerate(zip(labels, _free_links(len(labels)), strict=True)):
            namespace = f"synct-{token}-{index}"
            outer, inner = f"st{token}h{index}", f"st{token}h{index}p"
            root_address, host_address = str(link[1]), str(link[2])
            _ip("netns", "add", namespace)
            stack.callback(_ip, "netns", "del", namespace)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", namespace)
            stack.callback(_delete_link, outer)
            _ip("addr", "add", f"{root_address}/{link.prefixlen}", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", namespace, "addr", "add", f"{host_address}/{link.prefixlen}", "dev", inner)
            _ip("-n", namespace, "link", "set", inner, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            workdir = Path(tmp) / label
            workdir.mkdir()
            host = ServedHost(label, host_address, port, workdir, namespace)
            certificate = (certificates or {}).get(label)
            # 0.0.0.0 is the host's own namespace: nothing else listens there.
            _start(host, ["ip", "netns", "exec", namespace], "0.0.0.0", port, certificate, stack)  # noqa: S104
            hosts[label] = host
        yield hosts


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def _delete_link(name: str) -> None:
    """Delete the root end of a veth pair unless deleting the namespace already took it."""
    done = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True, check=False)
    if done.returncode != 0 and "Cannot find device" not in done.stderr:
        raise RuntimeError(f"ip link del {name} failed: {done.stderr.strip()}")


def _free_links(count: int) -> list[ipaddress.IPv4Network]:
    """Pick ``count`` random /30 networks in LINK_BLOCK that overlap no route of the root namespace."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    taken = []
    for route in routes:
        dst = route.get("dst", "")
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(dst, strict=False)
            if network.version == 4 and network.prefixlen > 0:
                taken.append(network)
    subnets = 1 << (30 - LINK_BLOCK.prefixlen)
    chosen: list[ipaddress.IPv4Network] = []
    while len(chosen) < count:
        base = int(LINK_BLOCK.network_address) + 4 * secrets.randbelow(subnets)
        link = ipaddress.IPv4Network((base, 30))
        if not any(link.overlaps(t) for t in taken) and link not in chosen:
            chosen.append(link)
    return chosen


def _start(
    host: ServedHost,
    prefix: list[str],
    bind: str,
    port: int,
    certificate: Certificate | None,
    stack: contextlib.ExitStack,
) -> None:
    """Start the server for ``host``, register its shutdown, and wait until it answers from outside."""
    # Imported here: the server side (this file run as a script in a namespace) uses the stdlib only.
    from support.polling import wait_for

    host.reset()
    stderr = (host.workdir / "stderr.log").open("wb")
    stack.callback(stderr.close)
    command = [
        *prefix,
        sys.executable,
        str(Path(__file__).resolve()),
        "serve",
        "--bind",
        bind,
        "--port",
        str(port),
        "--workdir",
        str(host.workdir),
    ]
    if certificate is not None:
        command += ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
    host.process = process
    stack.callback(_stop, process)
    line = _read_line(process, START_TIMEOUT)
    if not line.startswith(b"listening "):
        raise RuntimeError(f"server {host.label} did not start: {(host.workdir / 'stderr.log').read_text()}")
    _, plain, tls = line.split()
    host.port = int(plain)
    host.tls_port = int(tls) or None
    # The probe only checks reachability; it does not verify the certificate.
    probe_context = ssl._create_unverified_context()  # noqa: S323
    probes = [http.client.HTTPConnection(host.address, host.port, timeout=1)]
    if host.tls_port is not None:
        probes.append(
            http.client.HTTPSConnection(host.address, host.tls_port, timeout=1, context=probe_context)
        )

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server {host.label} exited: {(host.workdir / 'stderr.log').read_text()}")
        try:
            for conn in probes:
                conn.request("GET", READY_PATH)
                if conn.getresponse().status != 404:
                    return False
        except OSError:
            return False
        finally:
            for conn in probes:
                conn.close()
        return True

    wait_for(answers, START_TIMEOUT, what=f"server {host.label} at {host.address}:{host.port}")
    host.log_path.write_text("")


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    if process.stdout is None:
        raise RuntimeError("server started without a stdout pipe")
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else b""


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


# The server side: this file run as a script inside the namespace.


def _serve(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="netns_hosts test server")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    routes_path: Path = args.workdir / "routes.json"
    log_path: Path = args.workdir / "log.jsonl"

    def record(entry: dict[str, Any]) -> None:
        with log_path.open("a") as log:
            log.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            tls = isinstance(self.connection, ssl.SSLSocket)
            record({"event": "connect", "peer": self.client_address[0], "tls": tls})

        def log_message(self, format: str, *args: Any) -> None:  # the base class's parameter name
            """The JSON log is the record; keep stderr for real errors."""

        def respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            record(
                {
                    "event": "request",
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("Host"),
                    "headers": dict(self.headers.items()),
                    "body": base64.b64encode(self.rfile.read(length)).decode(),
                    "tls": isinstance(self.connection, ssl.SSLSocket),
                }
            )
            spec = json.loads(routes_path.read_text()).get(urlsplit(self.path).path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if spec is None:
                    self._fixed(404, b"not found", [])
                elif spec["kind"] == "hang":
                    while self.connection.recv(4096):
                        pass
                elif spec["kind"] == "drip":
                    self._drip(spec["size"], spec["interval"])
                elif spec["kind"] == "trickle":
                    self._trickle(spec["size"], spec["interval"])
                elif spec["kind"] == "redirect":
                    self._fixed(spec["status"], b"", [*spec["headers"], ["Location", spec["location"]]])
                elif spec["kind"] in {"large", "truncated"}:
                    self._stream(spec)
                else:
                    self._fixed(spec["status"], base64.b64decode(spec["body"]), spec["headers"])

        def _fixed(self, status: int, body: bytes, headers: list[list[str]]) -> None:
            etag = next((value for name, value in headers if name.lower() == "etag"), None)
            if status == 200 and etag is not None and self.headers.get("If-None-Match") == etag:
                # A conditional request for what the client has: 304 without a body, as real servers do.
                status, body = 304, b""
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and status != 304:
                self.wfile.write(body)

        def _stream(self, spec: dict[str, Any]) -> None:
            self.send_response(spec["status"])
            if spec["kind"] == "truncated":
                self.send_header("Content-Length", str(spec["declared"]))
            elif spec["declare_length"]:
                self.send_header("Content-Length", str(spec["size"]))
            self.end_headers()
            if self.command == "HEAD":
                return
            chunk = b"L" * 65536
            left = spec["size"]
            while left > 0:
                self.wfile.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)

        def _drip(self, count: int, interval: float) -> None:
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Drip: ")
            for _ in range(count):
                # The server's behaviour under test is slowness itself; no test waits on this.
                time.sleep(interval)
                self.wfile.write(b"d")
            self.wfile.write(b"\r\nContent-Length: 4\r\n\r\ndone")

        def _trickle(self, size: int, interval: float) -> None:
            self.wfile.write(f"HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size):
                # Slowness is the behaviour under test; no test waits on this.
                time.sleep(interval)
                self.wfile.write(b"t")
                self.wfile.flush()

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = respond

    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    tls_port = 0
    if args.tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                """Handshake in the connection's own thread, so a failing client blocks nobody."""
                try:
                    tls = context.wrap_socket(request, server_side=True)
                except OSError as exc:
                    record({"event": "tls_failed", "peer": client_address[0], "error": str(exc)})
                    return
                with tls:
                    super().finish_request(tls, client_address)

        tls_server = TLSServer((args.bind, 443 if args.port == 80 else 0), Handler)
        tls_port = tls_server.server_address[1]
        threading.Thread(target=tls_server.serve_forever, daemon=True).start()
    print(f"listening {server.server_address[1]} {tls_port}", flush=True)  # the readiness signal
    server.serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1:])
