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
  origin, on any hop that is not https, and on any hop (the first included) whose host and port the
  operator's binding of every secret used does not match (``secret_hosts``; no binding matches nothing).
  ``workers.guest_http`` refuses a plain-http request with a secret before this; dropping is the backstop.
  The body is dropped when a redirect turns the method into GET. Response headers are returned with
  lower-case names.
* Nothing outlives ``deadline`` (a ``time.monotonic()`` value): DNS, connect and every read are clipped to
  the time left, and a watchdog shuts the socket down at the deadline, so a server dripping bytes cannot hold
  the parent past it.
* At most ``max_requests`` calls per ``Egress``, refused ones included. Every body byte read counts against
  ``max_total_bytes``, also the bytes of a response that then failed (too large, cut short, too slow).
* One ``egress request`` event is logged per call with the URL (query and userinfo left out: they carry
  secrets), never the body.

ABI codes (``HttpResult.status``) and the stable ``error_code`` that explains each:

==========  ==========================================================================================
status      error_code
==========  ==========================================================================================
HTTP code   ``None``: a completed response, any status (a 3xx too when redirects are off or it has no
            ``Location``)
-2          ``host_not_allowed``, ``userinfo``, ``private_address`` (also metadata addresses),
            ``redirect_not_allowed`` (a ``Location`` that fails any of the checks above, is ``bad_url``
            or cannot be parsed at all)
-4          ``too_large`` (declared or read body over the cap), ``body_read_failed`` (connection broken
            mid-body)
-5          ``bad_url``, ``method_not_allowed``, ``too_many_requests``, ``too_many_redirects``,
            ``timeout``, ``dns_failed``, ``connect_failed``, ``tls_failed``, ``bad_response`` (also a
            ``Content-Length`` that is not ASCII digits)
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
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from sync_format.escape import escape_text
from sync_format.hosts import PrivateEntry, parse_private_entry, parse_url, url_allowed
from workers.addresses import Resolver, is_metadata_address, is_restricted_address, system_resolver
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
#: Seconds one ``Egress.request`` call may take in all (DNS, connect, redirects, body), clipped to the
#: job's deadline.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Seconds from sending a request until its response headers are complete (a header drip is cut here).
DEFAULT_HEADER_TIMEOUT = 20.0
#: Bytes per second a body must keep arriving at, measured over ``RATE_WINDOW`` (0 turns the check off).
DEFAULT_MIN_TRANSFER_RATE = 1024
#: Bytes all responses of one ``Egress`` (one run) may add up to.
DEFAULT_MAX_TOTAL_BYTES = 64 * 1024 * 1024
#: Seconds over which the transfer rate is measured, and between heartbeats while a request is in flight.
RATE_WINDOW = 5.0
HEARTBEAT_TICK = 1.0
#: Methods a guest may use; an empty method string means GET, what the reference always sent.
ALL_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")

#: ABI return codes of ``host.http_request`` (spec §7.2).
STATUS_DENIED = -2
STATUS_BODY_FAILED = -4
STATUS_FAILED = -5

#: Refused or failed calls kept per run for the status record.
MAX_RECORDED_FAILURES = 32

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
#: A Content-Length value: ASCII digits only (``\d`` and ``str.isdigit`` take other scripts' digits too).
_ASCII_DIGITS = re.compile(r"[0-9]+")
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
        allow_private: The operator's ``SYNC_EGRESS_ALLOW_PRIVATE`` entries: the only way to reach a
            non-public address (the manifest must still allow the host); never a metadata address.
        request_timeout: Seconds one ``request`` call may take in all, clipped to the deadline.
        header_timeout: Seconds for a response's headers to arrive once the request is sent.
        min_transfer_rate: Bytes per second a body must arrive at over each ``RATE_WINDOW``; 0: no check.
        max_total_bytes: Bytes all responses of this ``Egress`` may add up to.
        rate_window: Seconds over which ``min_transfer_rate`` is measured.
    """

    allow_hosts: tuple[str, ...]
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    follow_redirects: bool = True
    allowed_methods: tuple[str, ...] = ALL_METHODS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    # Address screening and slow-source limits (issue 11).
    allow_private: tuple[str, ...] = ()
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    min_transfer_rate: int = DEFAULT_MIN_TRANSFER_RATE
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    rate_window: float = RATE_WINDOW

    def __post_init__(self) -> None:
        limits = (self.max_response_size, self.max_requests, self.max_redirects, self.min_transfer_rate)
        if min(limits) < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError(f"egress limits must be positive: {self}")
        if min(self.request_timeout, self.header_timeout, self.max_total_bytes, self.rate_window) <= 0:
            raise ValueError(f"egress limits must be positive: {self}")
        for entry in self.allow_private:
            parse_private_entry(entry)
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
        self, verb: str, same_origin: bool, scheme: str = "", host: str = "", port: int | None = None
    ) -> _Outgoing:
        """What is sent after a hop: no body once the method is GET or HEAD, no secrets to another origin
        nor to a destination (``host``, ``port``) outside the secrets' bindings."""
        body = b"" if verb in {"GET", "HEAD"} else self.body
        kept = _Outgoing(self.headers, body, self.secret_headers, self.secret_hosts)
        return kept.bound_to(scheme, host, port) if same_origin else kept.without_secrets()

    def bound_to(self, scheme: str, host: str, port: int | None) -> _Outgoing:
        """These headers for a hop to ``scheme://host:port``: the secret ones only over https and only if
        every binding matches it (a binding names no scheme; ``workers.guest_http`` says why https)."""
        if not self.secret_headers or (scheme == "https" and bound_everywhere(self.secret_hosts, host, port)):
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
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        """Prepare an egress for one job.

        Args:
            policy: What the guest may fetch.
            resolver: Name resolution (the system resolver unless a test points names elsewhere).
            tls_context: TLS settings for https; ``ssl.create_default_context()`` when None, built on the
                first https request only (it reads the CA bundle: ~25 ms, most of a job without requests).
            heartbeat: Called about every ``HEARTBEAT_TICK`` seconds while a request is in flight, so that a
                slow source cannot let the job's claim expire while the parent waits on it.
        """
        self._policy = policy
        self._resolver = resolver
        self._tls_context = tls_context
        self._heartbeat = heartbeat
        self._private: tuple[PrivateEntry, ...] = tuple(parse_private_entry(e) for e in policy.allow_private)
        self._calls = 0
        self._received = 0
        #: Every refused or failed call of this run, for the status record (escaped, bounded).
        self.failures: list[dict[str, object]] = []

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
        result = self._perform(
            url,
            verb,
            min(deadline, started + self._policy.request_timeout),
            _Outgoing(headers, body, secret_headers, secret_hosts),
        )
        if not result.completed:
            self._record_failure(result)
        level = logging.INFO if result.completed else logging.WARNING
        logger.log(
            level,
            "egress request url=%s method=%s status=%d error=%s reason=%s bytes=%d hops=%d duration_ms=%d",
            _loggable(result.final_url or url),
            escape_text(verb, 16),
            result.status,
            result.error_code,
            escape_text(result.reason, 300) or None,
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
        extra = extra.bound_to(target.scheme, target.host, target.port)
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
            try:
                next_url = urljoin(target.url, answer.location)
            except ValueError:
                # A Location the URL parser cannot read (``http://[x/``) is the server's, so it is a refused
                # redirect like any other bad target, never an exception out of ``request``.
                refusal = _Refusal(STATUS_DENIED, "redirect_not_allowed", "redirect: Location is not a URL")
                return _failed(refusal, target.url, hops)
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
            extra = extra.after_redirect(verb, same_origin, checked.scheme, checked.host, checked.port)
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
        # DNS gets the connect timeout at most: the watchdog (and its heartbeat) is not running yet.
        addresses = self._resolve(target.host, target.port, min(remaining, self._policy.connect_timeout))
        if isinstance(addresses, _Refusal):
            return addresses
        refused = self._screen(target.host, target.port, addresses)
        if refused is not None:
            return refused
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

    def _screen(self, host: str, port: int, addresses: tuple[str, ...]) -> _Refusal | None:
        """The address rule, applied to every address a request may connect to (the ones it will use).

        A metadata address (in any embedded form) is refused always. Any other non-public address is refused
        unless an operator entry opens it for this host or address and port; the manifest has no say here
        (its allow-list was applied before the lookup). One refused address refuses the request.
        """
        for address in addresses:
            what = address if host == address else f"{host} resolves to {address}, which"
            if is_metadata_address(address):
                reason = f"{what} is a cloud metadata address"
                return _Refusal(STATUS_DENIED, "private_address", reason)
            if is_restricted_address(address) and not self._operator_opens(host, address, port):
                reason = f"{what} is not public (not opened by SYNC_EGRESS_ALLOW_PRIVATE)"
                return _Refusal(STATUS_DENIED, "private_address", reason)
        return None

    def _operator_opens(self, host: str, address: str, port: int) -> bool:
        """Whether an operator entry opens this non-public destination."""
        return any(entry.opens(host, address, port) for entry in self._private)

    def _record_failure(self, result: HttpResult) -> None:
        """Keep one escaped, bounded line per refused or failed call for the status record."""
        if len(self.failures) >= MAX_RECORDED_FAILURES:
            return
        target = parse_url(result.final_url)
        self.failures.append(
            {
                "rule": result.error_code,
                "host": escape_text(target.host if target is not None else "", 255),
                "code": result.status,
                "url": _loggable(result.final_url),
                "reason": escape_text(result.reason, 300),
            }
        )

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
            watchdog = _Watchdog(conn, remaining, self._heartbeat, self._policy)
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    if watchdog.fired == _SLOW:
                        return _Refusal(STATUS_FAILED, "too_slow", watchdog.why)
                    if watchdog.fired or time.monotonic() >= deadline:
                        return _Refusal(STATUS_FAILED, "timeout", "deadline passed while connecting")
                    if isinstance(exc, ssl.SSLError):
                        return _Refusal(STATUS_FAILED, "tls_failed", str(exc))
                    code = "timeout" if isinstance(exc, TimeoutError) else "connect_failed"
                    failure = _Refusal(STATUS_FAILED, code, f"{address}: {exc}")
                    continue
                answer = self._converse(conn, target, verb, deadline, watchdog, extra)
            finally:
                watchdog.stop()
                conn.close()
            if watchdog.fired == _SLOW:
                return _Refusal(STATUS_FAILED, "too_slow", watchdog.why)
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
        watchdog: _Watchdog,
        extra: _Outgoing = _Outgoing(),
    ) -> _Response | _Refusal:
        """Send the request and read the response within the deadline and the size cap."""

        def arm() -> None:
            if conn.sock is not None:
                conn.sock.settimeout(max(0.001, min(self._policy.read_timeout, deadline - time.monotonic())))

        cap = min(self._policy.max_response_size, self._policy.max_total_bytes - self._received)
        if cap < 0:
            return _Refusal(STATUS_BODY_FAILED, "total_too_large", "the run's egress byte budget is spent")
        try:
            arm()
            conn.request(verb, target.request_target, body=extra.body or None, headers=_send_headers(extra))
            watchdog.waiting_for_headers()
            arm()
            response = conn.getresponse()
            watchdog.headers_done()
        except TimeoutError:
            return _Refusal(STATUS_FAILED, "timeout", "no response in time")
        except (http.client.HTTPException, OSError) as exc:
            return _Refusal(STATUS_FAILED, "bad_response", str(exc))
        location = response.getheader("Location")
        if response.status in _REDIRECTS and location and self._policy.follow_redirects:
            return _Response(response.status, b"", location)
        declared = response.getheader("Content-Length", "").strip()
        if declared and not _ASCII_DIGITS.fullmatch(declared):
            # ``str.isdigit`` accepts superscripts and other scripts' digits that ``int`` refuses; RFC 9110
            # makes a Content-Length that is not ASCII digits an unrecoverable framing error.
            return _Refusal(STATUS_FAILED, "bad_response", f"Content-Length {escape_text(declared, 40)}")
        if declared and int(declared) > cap:
            return self._over(cap, f"declared {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                arm()
                chunk = response.read1(min(_READ_CHUNK, cap + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                # Charged as read, whatever the outcome: a body cut off for its size or ended early was
                # downloaded all the same, and an uncharged one would let each request take a full budget.
                self._received += len(chunk)
                watchdog.received(len(chunk))
                if size > cap:
                    return self._over(cap, f"more than {cap} bytes")
                chunks.append(chunk)
        except TimeoutError:
            return _Refusal(STATUS_FAILED, "timeout", "body not read in time")
        except (http.client.HTTPException, OSError) as exc:
            return _Refusal(STATUS_BODY_FAILED, "body_read_failed", str(exc))
        if response.length:
            # read1 reports a connection closed before Content-Length as end of body; the length left says so.
            return _Refusal(STATUS_BODY_FAILED, "body_read_failed", f"{response.length} bytes missing")
        return _Response(response.status, b"".join(chunks), None, _response_headers(response))

    def _over(self, cap: int, reason: str) -> _Refusal:
        """A body over the cap: over this response's own cap, or over what is left of the run's budget."""
        if cap < self._policy.max_response_size:
            left = f"{reason}; the run's egress budget has {cap} of {self._policy.max_total_bytes} bytes left"
            return _Refusal(STATUS_BODY_FAILED, "total_too_large", left)
        return _Refusal(STATUS_BODY_FAILED, "too_large", reason)


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


_DEADLINE = "deadline"
_SLOW = "slow"


class _Watchdog:
    """Watches one connection from a thread of its own while the parent is blocked on it.

    It heartbeats the job's claim every ``HEARTBEAT_TICK`` seconds (a parent blocked in a read must not let
    the claim expire, or the broker's redelivery would start a second run of the job), and shuts the socket
    down, which ends any blocked read, when the deadline passes (``fired == "deadline"``), when the response
    headers take longer than ``header_timeout`` (a header drip) or when the body arrives slower than
    ``min_transfer_rate`` over a ``RATE_WINDOW`` (``fired == "slow"``, ``why`` says which).
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        delay: float,
        heartbeat: Callable[[], None] | None,
        policy: EgressPolicy,
    ) -> None:
        self._conn = conn
        self._heartbeat = heartbeat
        self._policy = policy
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._end = time.monotonic() + delay
        self._headers_by: float | None = None
        self._sock: socket.socket | None = None
        self._window_start = 0.0
        self._window_bytes = 0
        self._in_body = False
        self.fired: str | None = None
        self.why = ""
        self._thread = threading.Thread(target=self._run, name="egress-watchdog", daemon=True)
        self._thread.start()

    def waiting_for_headers(self) -> None:
        """The request is sent: its response headers must now arrive within ``header_timeout``."""
        with self._lock:
            self._headers_by = time.monotonic() + self._policy.header_timeout
            # Kept: ``getresponse`` drops ``conn.sock`` when the response will close the connection (every
            # response here), and the socket must still be shut down if the body stalls.
            self._sock = self._conn.sock

    def headers_done(self) -> None:
        """The headers arrived: from now on the body's transfer rate is measured."""
        with self._lock:
            self._headers_by = None
            self._in_body = True
            self._window_start = time.monotonic()
            self._window_bytes = 0

    def received(self, size: int) -> None:
        """``size`` more body bytes arrived."""
        with self._lock:
            self._window_bytes += size

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            wait = min(self._end - now, HEARTBEAT_TICK)
            if wait <= 0:
                self._fire(_DEADLINE, "deadline passed")
                return
            if self._stopped.wait(wait):
                return
            if self._heartbeat is not None:
                try:
                    self._heartbeat()
                except Exception:  # a failed heartbeat must not kill the watchdog; the caller logs its own
                    logger.exception("egress heartbeat failed")
            why = self._too_slow(time.monotonic())
            if why:
                self._fire(_SLOW, why)
                return

    def _too_slow(self, now: float) -> str:
        with self._lock:
            if self._headers_by is not None and now >= self._headers_by:
                return f"response headers not complete within {self._policy.header_timeout:g} s"
            rate = self._policy.min_transfer_rate
            if not self._in_body or rate == 0 or now - self._window_start < self._policy.rate_window:
                return ""
            seconds = now - self._window_start
            if self._window_bytes < rate * seconds:
                return f"body arrived at {self._window_bytes / seconds:.0f} B/s, below {rate} B/s"
            self._window_start, self._window_bytes = now, 0
            return ""

    def _fire(self, kind: str, why: str) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self.fired, self.why = kind, why
            sock = self._conn.sock or self._sock
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
            self._stopped.set()
        # Joined so that no thread outlives the request: the supervisor forks children between requests
        # and refuses to fork while other threads run.
        self._thread.join()


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
    return escape_text(shown, 300)
