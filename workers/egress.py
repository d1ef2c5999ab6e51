"""HTTP performed by the parent on a guest's behalf: the policy and the client behind ``host.http_request``.

A confined guest has no network; it asks the parent, and one ``Egress`` per job decides and performs each
request with the standard library's ``http.client`` (spec §7.2, §7.4; fixes §9 D2/D3). Invariants:

* Every URL, the guest's and every redirect ``Location`` (resolved against the current URL), is parsed
  with ``sync_format.hosts.parse_url`` (http/https only, userinfo refused) and checked with ``url_allowed``,
  the one allow-list rule, before any DNS lookup or connection. A refused host is never resolved.
* The parent resolves names. If any address of a host is not globally routable (loopback, RFC 1918, ULA,
  link-local, CGNAT 100.64/10, multicast, unspecified, reserved; IPv4 inside IPv6 mapped, NAT64 or 6to4
  addresses is judged as IPv4), the request is refused unless the manifest names the host, or that address,
  as an exact entry: a wildcard entry never unlocks such an address. Cloud metadata addresses
  (169.254.169.254, fd00:ec2::254) are refused whatever the manifest says: they hand out the worker's
  credentials, which no archive author may read.
* The connection goes to the vetted address itself, never to a second lookup of the name (no DNS rebinding);
  the name is sent in ``Host`` and, for https, used for SNI and certificate verification (default context).
* Redirects are followed by this module, not by the client, at most ``max_redirects`` times, each hop
  re-checked in full; 303 (and 301/302 after POST) continue as GET, 307/308 keep the method.
* Bodies are raw bytes, never decoded, and at most ``max_response_size``. A v1 request carries no body and
  no headers of the guest's; a v2 request (``request(..., headers=, body=)``) carries both, already checked by
  ``workers.guest_http``. Headers that carried an operator secret are dropped on a redirect to another
  origin, and on any hop (the first included) whose host and port the operator's binding of every secret
  used does not match (``secret_hosts``; no binding matches nothing). The body is dropped when a redirect
  turns the method into GET. Response headers are returned with lower-case names.
* Nothing outlives ``deadline`` (a ``time.monotonic()`` value): DNS, connect and every read are clipped to
  the time left, and a watchdog shuts the socket down at the deadline, so a server dripping bytes cannot hold
  the parent past it.
* At most ``max_requests`` calls per ``Egress``, refused ones included.
* One ``egress request`` event is logged per call with the URL (query and userinfo left out: they carry
  secrets), never the body.

ABI codes (``HttpResult.status``) and the stable ``error_code`` that explains each:

==========  ==========================================================================================
status      error_code
==========  ==========================================================================================
HTTP code   ``None``: a completed response, any status (a 3xx too when redirects are off or it has no
            ``Location``)
-2          ``host_not_allowed``, ``userinfo``, ``private_address`` (also metadata addresses),
            ``redirect_not_allowed`` (a ``Location`` that fails any of the checks above, or ``bad_url``)
-4          ``too_large`` (declared or read body over the cap), ``body_read_failed`` (connection broken
            mid-body)
-5          ``bad_url``, ``method_not_allowed``, ``too_many_requests``, ``too_many_redirects``,
            ``timeout``, ``dns_failed``, ``connect_failed``, ``tls_failed``, ``bad_response``
==========  ==========================================================================================

-5 ("request failed") is used for the budget and method refusals because a reference guest treats it as "no
response" without blaming the host; -2 stays "this destination is refused". -1 (unreadable memory, non-UTF-8
URL or method) belongs to the caller, which decodes guest memory; -3 (client could not be built) is never
produced: ``http.client`` has no client to build.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from sync_format.hosts import HostPattern, parse_pattern, parse_url, url_allowed
from workers.addresses import METADATA_ADDRESSES, Resolver, is_restricted_address, system_resolver
from workers.guest_http import bound_everywhere

if TYPE_CHECKING:
    from sync_format.manifest import Manifest

logger = logging.getLogger(__name__)

#: Largest response body kept, in bytes.
DEFAULT_MAX_RESPONSE_SIZE = 16 * 1024 * 1024
#: Calls to ``Egress.request`` allowed per job.
DEFAULT_MAX_REQUESTS = 64
#: Redirect hops followed per call.
DEFAULT_MAX_REDIRECTS = 5
#: Seconds to establish a TCP connection (and TLS), before clipping to the deadline.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a single read may wait for data, before clipping to the deadline (the reference's fixed 30 s).
DEFAULT_READ_TIMEOUT = 30.0
#: Methods a guest may use; an empty method string means GET, what the reference always sent.
ALL_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")

#: ABI return codes of ``host.http_request`` (spec §7.2).
STATUS_DENIED = -2
STATUS_BODY_FAILED = -4
STATUS_FAILED = -5

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
#: Characters left as they are when a URL's path and query are made ASCII for the request line.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True)
class EgressPolicy:
    """What one job's guest may fetch.

    Attributes:
        allow_hosts: The manifest's ``permissions.allow_hosts``.
        max_response_size: Largest body kept, in bytes.
        max_requests: Calls allowed per ``Egress``.
        max_redirects: Redirect hops followed per call.
        follow_redirects: Follow redirects (each hop re-checked); when False a 3xx is returned as is.
        allowed_methods: Upper-case methods a guest may use.
        connect_timeout: Seconds for connect and TLS handshake, clipped to the deadline.
        read_timeout: Seconds a read may wait for data, clipped to the deadline.
    """

    allow_hosts: tuple[str, ...]
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    follow_redirects: bool = True
    allowed_methods: tuple[str, ...] = ALL_METHODS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def __post_init__(self) -> None:
        limits = (self.max_response_size, self.max_requests, self.max_redirects)
        if min(limits) < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError(f"egress limits must be positive: {self}")
        if any(m != m.upper() for m in self.allowed_methods):
            raise ValueError(f"allowed_methods must be upper-case: {self.allowed_methods}")

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> EgressPolicy:
        """The policy for a manifest's guest with the default limits.

        Args:
            manifest: The archive's manifest.

        Returns:
            A policy allowing exactly ``permissions.allow_hosts``.
        """
        return cls(allow_hosts=tuple(manifest.permissions.allow_hosts))


@dataclass(frozen=True)
class HttpResult:
    """The outcome of one ``Egress.request`` call.

    Attributes:
        status: The HTTP status of a completed response, or a negative ABI code (module docstring).
        body: The raw response body (empty on failure and for HEAD).
        error_code: Why there is no completed response, a stable string; None when there is one.
        final_url: The last URL requested, or the redirect target that was refused.
        hops: Redirects followed.
        reason: What went wrong, for people (not stable; may name hosts and addresses); empty on success.
        headers: Response headers of a completed response, names lower-case (ABI v2).
    """

    status: int
    body: bytes = b""
    error_code: str | None = None
    final_url: str = ""
    hops: int = 0
    reason: str = ""
    # Not compared: equality is about the outcome; headers carry dates and server names.
    headers: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def completed(self) -> bool:
        """True when a server answered with an HTTP status."""
        return self.error_code is None


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]
    request_target: str


@dataclass(frozen=True)
class _Refusal:
    status: int
    error_code: str
    reason: str


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    location: str | None  # set only for a redirect to follow, whose body is not read
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Outgoing:
    """What a v2 guest adds to a request: its checked headers and body."""

    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    secret_headers: frozenset[str] = frozenset()
    secret_hosts: tuple[tuple[str, ...], ...] = ()

    def after_redirect(
        self, verb: str, same_origin: bool, host: str = "", port: int | None = None
    ) -> _Outgoing:
        """What is sent after a hop: no body once the method is GET or HEAD, no secrets to another origin
        nor to a destination (``host``, ``port``) outside the secrets' bindings."""
        body = b"" if verb in {"GET", "HEAD"} else self.body
        kept = _Outgoing(self.headers, body, self.secret_headers, self.secret_hosts)
        return kept.bound_to(host, port) if same_origin else kept.without_secrets()

    def bound_to(self, host: str, port: int | None) -> _Outgoing:
        """These headers for a hop to ``host:port``: the secret ones only if every binding matches it."""
        if not self.secret_headers or bound_everywhere(self.secret_hosts, host, port):
            return self
        return self.without_secrets()

    def without_secrets(self) -> _Outgoing:
        """The same request with every header that carried a secret left out."""
        headers = tuple(h for h in self.headers if h[0].lower() not in self.secret_headers)
        return _Outgoing(headers, self.body)


class Egress:
    """Performs a job's guest HTTP requests under an ``EgressPolicy``; one per job, not thread-safe."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver = system_resolver,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare an egress for one job.

        Args:
            policy: What the guest may fetch.
            resolver: Name resolution (the system resolver unless a test points names elsewhere).
            tls_context: TLS settings for https; ``ssl.create_default_context()`` when None, built on the
                first https request only (it reads the CA bundle: ~25 ms, most of a job without requests).
        """
        self._policy = policy
        self._resolver = resolver
        self._tls_context = tls_context
        self._exact: tuple[HostPattern, ...] = tuple(
            p
            for p in (parse_pattern(entry) for entry in policy.allow_hosts)
            if p is not None and not p.wildcard
        )
        self._calls = 0

    @property
    def requests_made(self) -> int:
        """Calls to ``request`` so far, refused ones included."""
        return self._calls

    def request(
        self,
        url: str,
        method: str,
        *,
        deadline: float,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        secret_headers: frozenset[str] = frozenset(),
        secret_hosts: tuple[tuple[str, ...], ...] = (),
    ) -> HttpResult:
        """Perform a guest's request, following allowed redirects.

        Args:
            url: Absolute http(s) URL from the guest.
            method: HTTP method; case-insensitive, empty means GET.
            deadline: ``time.monotonic()`` value after which nothing may still be running.
            headers: Request headers (v2), already checked by ``workers.guest_http.prepare_headers``.
            body: Request body (v2).
            secret_headers: Lower-case names of headers carrying a secret: not sent to another origin.
            secret_hosts: The operator's binding (host patterns) of each secret used: the secret headers go
                only to hops every binding matches; with none they go nowhere.

        Returns:
            The completed response, or a negative ABI code with its ``error_code``; never raises for
            anything a guest or a server can cause.
        """
        started = time.monotonic()
        self._calls += 1
        verb = method.strip().upper() or "GET"
        result = self._perform(url, verb, deadline, _Outgoing(headers, body, secret_headers, secret_hosts))
        level = logging.INFO if result.completed else logging.WARNING
        logger.log(
            level,
            "egress request url=%s method=%s status=%d error=%s reason=%s bytes=%d hops=%d duration_ms=%d",
            _loggable(result.final_url or url),
            ascii(verb)[1:-1][:16],
            result.status,
            result.error_code,
            ascii(result.reason)[1:-1][:300] or None,
            len(result.body),
            result.hops,
            (time.monotonic() - started) * 1000,
        )
        return result

    def _perform(self, url: str, verb: str, deadline: float, extra: _Outgoing) -> HttpResult:
        if self._calls > self._policy.max_requests:
            return _failed(_Refusal(STATUS_FAILED, "too_many_requests", "request budget spent"), url, 0)
        if verb not in self._policy.allowed_methods:
            return _failed(_Refusal(STATUS_FAILED, "method_not_allowed", "method not allowed"), url, 0)
        checked = self._vet(url, deadline)
        if isinstance(checked, _Refusal):
            return _failed(checked, url, 0)
        target, hops = checked, 0
        extra = extra.bound_to(target.host, target.port)
        while True:
            answer = self._exchange(target, verb, deadline, extra)
            if isinstance(answer, _Refusal):
                return _failed(answer, target.url, hops)
            if answer.location is None:
                return HttpResult(
                    answer.status, answer.body, final_url=target.url, hops=hops, headers=answer.headers
                )
            if hops >= self._policy.max_redirects:
                refusal = _Refusal(STATUS_FAILED, "too_many_redirects", f"more than {hops} redirects")
                return _failed(refusal, target.url, hops)
            next_url = urljoin(target.url, answer.location)
            checked = self._vet(next_url, deadline)
            if isinstance(checked, _Refusal):
                if checked.status == STATUS_DENIED or checked.error_code == "bad_url":
                    checked = _Refusal(STATUS_DENIED, "redirect_not_allowed", f"redirect: {checked.reason}")
                # Otherwise DNS or the deadline failed for an allowed hop: reported as such.
                return _failed(checked, next_url, hops)
            verb = _redirect_method(answer.status, verb)
            same_origin = (checked.scheme, checked.host, checked.port) == (
                target.scheme,
                target.host,
                target.port,
            )
            extra = extra.after_redirect(verb, same_origin, checked.host, checked.port)
            target, hops = checked, hops + 1

    def _vet(self, url: str, deadline: float) -> _Target | _Refusal:
        """Apply every check to one URL: syntax, userinfo, allow-list, then resolution and addresses."""
        target = parse_url(url)
        if target is None:
            if _has_userinfo(url):
                return _Refusal(STATUS_DENIED, "userinfo", "the URL carries userinfo")
            return _Refusal(STATUS_FAILED, "bad_url", "not an absolute http(s) URL")
        if not url_allowed(url, self._policy.allow_hosts):
            return _Refusal(STATUS_DENIED, "host_not_allowed", f"host {target.host} is not on the allow-list")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _Refusal(STATUS_FAILED, "timeout", "deadline passed before connecting")
        addresses = self._resolve(target.host, target.port, remaining)
        if isinstance(addresses, _Refusal):
            return addresses
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if ip in METADATA_ADDRESSES or (
                is_restricted_address(address) and not self._listed_exactly(target.host, str(ip), target.port)
            ):
                return _Refusal(STATUS_DENIED, "private_address", f"{target.host} resolves to {ip}")
        parts = urlsplit(url)
        request_target = quote(parts.path or "/", safe=_URL_SAFE)
        if parts.query:
            request_target += "?" + quote(parts.query, safe=_URL_SAFE)
        return _Target(url, target.scheme, target.host, target.port, addresses, request_target)

    def _resolve(self, host: str, port: int, remaining: float) -> tuple[str, ...] | _Refusal:
        if _is_ip_literal(host):
            return (host,)
        try:
            answers = self._resolver(host, port, remaining)
            addresses = tuple(str(ipaddress.ip_address(a)) for a in answers)
        except TimeoutError:
            return _Refusal(STATUS_FAILED, "timeout", f"resolving {host} ran out of time")
        except (OSError, UnicodeError, ValueError) as exc:
            return _Refusal(STATUS_FAILED, "dns_failed", f"resolving {host}: {exc}")
        if not addresses:
            return _Refusal(STATUS_FAILED, "dns_failed", f"{host} has no address")
        return addresses

    def _listed_exactly(self, host: str, address: str, port: int) -> bool:
        """Whether an exact (non-wildcard) entry names the host or the address: what unlocks a private one."""
        return any(p.matches(host, port) or p.matches(address, port) for p in self._exact)

    def _exchange(
        self, target: _Target, verb: str, deadline: float, extra: _Outgoing = _Outgoing()
    ) -> _Response | _Refusal:
        """Send one request to the first vetted address that accepts a connection."""
        failure = _Refusal(STATUS_FAILED, "connect_failed", "no address")
        for address in target.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _Refusal(STATUS_FAILED, "timeout", "deadline passed before connecting")
            conn = self._connection(target, address, min(self._policy.connect_timeout, remaining))
            watchdog = _Watchdog(conn, remaining)
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    if watchdog.fired or time.monotonic() >= deadline:
                        return _Refusal(STATUS_FAILED, "timeout", "deadline passed while connecting")
                    if isinstance(exc, ssl.SSLError):
                        return _Refusal(STATUS_FAILED, "tls_failed", str(exc))
                    code = "timeout" if isinstance(exc, TimeoutError) else "connect_failed"
                    failure = _Refusal(STATUS_FAILED, code, f"{address}: {exc}")
                    continue
                answer = self._converse(conn, target, verb, deadline, extra)
            finally:
                watchdog.stop()
                conn.close()
            if watchdog.fired:
                return _Refusal(STATUS_FAILED, "timeout", "deadline passed during the exchange")
            return answer
        return failure

    def _connection(self, target: _Target, address: str, timeout: float) -> http.client.HTTPConnection:
        if target.scheme == "https":
            if self._tls_context is None:
                self._tls_context = ssl.create_default_context()
            return _PinnedHTTPSConnection(target.host, target.port, address, timeout, self._tls_context)
        return _PinnedHTTPConnection(target.host, target.port, address, timeout)

    def _converse(
        self,
        conn: http.client.HTTPConnection,
        target: _Target,
        verb: str,
        deadline: float,
        extra: _Outgoing = _Outgoing(),
    ) -> _Response | _Refusal:
        """Send the request and read the response within the deadline and the size cap."""

        def arm() -> None:
            if conn.sock is not None:
                conn.sock.settimeout(max(0.001, min(self._policy.read_timeout, deadline - time.monotonic())))

        cap = self._policy.max_response_size
        try:
            arm()
            conn.request(verb, target.request_target, body=extra.body or None, headers=_send_headers(extra))
            arm()
            response = conn.getresponse()
        except TimeoutError:
            return _Refusal(STATUS_FAILED, "timeout", "no response in time")
        except (http.client.HTTPException, OSError) as exc:
            return _Refusal(STATUS_FAILED, "bad_response", str(exc))
        location = response.getheader("Location")
        if response.status in _REDIRECTS and location and self._policy.follow_redirects:
            return _Response(response.status, b"", location)
        declared = response.getheader("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            return _Refusal(STATUS_BODY_FAILED, "too_large", f"declared {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                arm()
                chunk = response.read1(min(_READ_CHUNK, cap + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    return _Refusal(STATUS_BODY_FAILED, "too_large", f"more than {cap} bytes")
                chunks.append(chunk)
        except TimeoutError:
            return _Refusal(STATUS_FAILED, "timeout", "body not read in time")
        except (http.client.HTTPException, OSError) as exc:
            return _Refusal(STATUS_BODY_FAILED, "body_read_failed", str(exc))
        if response.length:
            # read1 reports a connection closed before Content-Length as end of body; the length left says so.
            return _Refusal(STATUS_BODY_FAILED, "body_read_failed", f"{response.length} bytes missing")
        return _Response(response.status, b"".join(chunks), None, _response_headers(response))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a vetted address, with the host name kept for the ``Host`` header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a vetted address; SNI and certificate checks use the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _Watchdog:
    """Shuts a connection's socket down at the deadline, so no blocked read outlives it."""

    def __init__(self, conn: http.client.HTTPConnection, delay: float) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._stopped = False
        self.fired = False
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            sock = self._conn.sock
            if sock is None:
                return
            try:
                # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would tear down its state
                # under the reading thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                logger.debug("egress watchdog: socket already closed")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._timer.cancel()
        # Joined so that no thread outlives the request: the supervisor forks children between requests
        # and refuses to fork while other threads run.
        self._timer.join()


def _send_headers(extra: _Outgoing) -> dict[str, str]:
    """The request headers: the guest's (checked by ``guest_http``), then ours, which always win."""
    headers = dict(extra.headers)
    # Names are case-insensitive: a guest's ``content-type`` must not get a second, default one.
    if extra.body and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/octet-stream"
    headers["Connection"] = "close"
    return headers


def _response_headers(response: http.client.HTTPResponse) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in response.getheaders())


def _failed(refusal: _Refusal, url: str, hops: int) -> HttpResult:
    return HttpResult(
        refusal.status, error_code=refusal.error_code, final_url=url, hops=hops, reason=refusal.reason
    )


def _redirect_method(status: int, verb: str) -> str:
    if status == 303 and verb != "HEAD":
        return "GET"
    if status in {301, 302} and verb == "POST":
        return "GET"
    return verb


def _has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loggable(url: str) -> str:
    """The URL without userinfo, query and fragment, ASCII-escaped so a guest cannot forge log lines."""
    try:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    except ValueError:
        shown = url
    return ascii(shown)[1:-1][:300]
