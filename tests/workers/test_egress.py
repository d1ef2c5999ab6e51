"""``workers.egress`` against real HTTP servers on separate network namespaces (and one on 127.0.0.1).

Names are mapped to the hosts by a recording resolver: ``allowed.test`` and ``example.com`` are servers the
manifests allow, ``other.test`` and ``notexample.com`` are a third server that must never be reached, and
``loop.test`` is a server on 127.0.0.1. The namespace addresses are private (10.231.x.x), so manifests name
these hosts exactly; a wildcard entry must not unlock them.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from netns_hosts import Certificate, Route, ServedHost, loopback_host, make_certificate, netns_hosts

from sync_format.testing import make_manifest
from workers.addresses import is_restricted_address, system_resolver
from workers.egress import (
    ALL_METHODS,
    Egress,
    EgressPolicy,
    HttpResult,
)

BINARY = bytes(range(256)) * 4 + b"\xff\xfe\xc3\x28 not utf-8"


class RecordingResolver:
    """Resolves test names from a table and remembers every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, timeout: float) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for ``allowed.test``."""
    return make_certificate(tmp_path_factory.mktemp("tls"), "allowed.test")


@pytest.fixture(scope="module")
def hosts(certificate: Certificate) -> Iterator[dict[str, ServedHost]]:
    """Three namespace hosts (``allowed`` also on HTTPS) and one loopback host for the whole module."""
    with (
        netns_hosts(["allowed", "other", "example"], certificates={"allowed": certificate}) as served,
        loopback_host("loop") as loop,
    ):
        yield {**served, "loop": loop}


@pytest.fixture(autouse=True)
def fresh_hosts(hosts: dict[str, ServedHost]) -> None:
    """Every test starts with empty logs and no routes."""
    for host in hosts.values():
        host.reset()


@pytest.fixture
def resolver(hosts: dict[str, ServedHost]) -> RecordingResolver:
    """The test names pointed at the hosts."""
    return RecordingResolver(
        {
            "allowed.test": [hosts["allowed"].address],
            "alias.test": [hosts["allowed"].address],
            "example.com": [hosts["example"].address],
            "other.test": [hosts["other"].address],
            "notexample.com": [hosts["other"].address],
            "loop.test": ["127.0.0.1"],
        }
    )


def egress(resolver: RecordingResolver, *allow: str, **limits: Any) -> Egress:
    """An Egress allowing ``allow`` with the given policy limits."""
    return Egress(EgressPolicy(allow_hosts=allow, **limits), resolver=resolver)


def soon(seconds: float = 5.0) -> float:
    """A deadline ``seconds`` from now."""
    return time.monotonic() + seconds


def test_allowed_host_returns_status_and_exact_bytes(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """An allowed host's response comes back with its status and byte-exact binary body."""
    hosts["allowed"].serve(
        {"/data": Route.fixed(BINARY, headers={"Content-Type": "text/plain; charset=utf-8"})}
    )
    result = egress(resolver, "allowed.test").request("http://allowed.test/data", "GET", deadline=soon())
    assert result == HttpResult(200, BINARY, final_url="http://allowed.test/data")
    [seen] = hosts["allowed"].requests()
    assert (seen["method"], seen["path"], seen["host"]) == ("GET", "/data", "allowed.test")


def test_error_status_is_a_completed_response(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A 404 is returned as status 404 with its body, not as a failure."""
    result = egress(resolver, "allowed.test").request("http://allowed.test/missing", "GET", deadline=soon())
    assert (result.status, result.body, result.error_code) == (404, b"not found", None)


def test_name_resolved_once_and_pinned(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """The name is resolved once by the parent and the vetted address is used, with the name in Host."""
    hosts["example"].serve({"/": Route.fixed(b"ok")})
    result = egress(resolver, "example.com").request("http://EXAMPLE.com./", "get", deadline=soon())
    assert (result.status, result.body) == (200, b"ok")
    assert resolver.calls == ["example.com"]
    assert [r["host"] for r in hosts["example"].requests()] == ["example.com"]


@pytest.mark.parametrize(
    ("url", "allow", "code"),
    [
        ("http://other.test/", ("allowed.test",), "host_not_allowed"),
        ("http://notexample.com/", ("example.com",), "host_not_allowed"),
        ("http://notexample.com/", ("*.example.com",), "host_not_allowed"),
        ("http://allowed.test:80@other.test/", ("allowed.test",), "userinfo"),
        ("http://user@other.test/", ("other.test",), "userinfo"),
    ],
    ids=[
        "not-listed",
        "suffix-without-dot",
        "wildcard-not-apex-suffix",
        "userinfo-bypass",
        "userinfo-listed",
    ],
)
def test_refused_destination_is_never_contacted(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, url: str, allow: tuple[str, ...], code: str
) -> None:
    """A URL the allow-list refuses returns -2 before any lookup, and the server behind it sees nothing."""
    hosts["other"].serve({"/": Route.fixed(b"secret")})
    result = egress(resolver, *allow).request(url, "GET", deadline=soon())
    assert (result.status, result.error_code, result.body) == (-2, code, b"")
    assert resolver.calls == []
    assert hosts["other"].events() == []


def test_wildcard_does_not_unlock_private_address(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A host allowed only by a wildcard but resolving to a private address is refused with -2."""
    hosts["allowed"].serve({"/": Route.fixed(b"internal")})
    result = egress(resolver, "*.test").request("http://allowed.test/", "GET", deadline=soon())
    assert (result.status, result.error_code) == (-2, "private_address")
    assert hosts["allowed"].events() == []


def test_exact_ip_literal_entry_allows_that_address(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A manifest naming a private IP literal exactly may fetch from it, without any DNS lookup."""
    host = hosts["allowed"]
    host.serve({"/": Route.fixed(b"by address")})
    result = egress(resolver, host.address).request(host.url("/"), "GET", deadline=soon())
    assert (result.status, result.body) == (200, b"by address")
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("allow", "status"),
    [
        (("*.test",), -2),
        (("loop.test",), 200),
        (("*.test", "127.0.0.1"), 200),
        (("*.test", "allowed.test", "127.0.0.2"), -2),
    ],
    ids=["wildcard-refused", "exact-name-allowed", "exact-ip-allowed", "other-exact-entries-refused"],
)
def test_name_resolving_to_loopback(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, allow: tuple[str, ...], status: int
) -> None:
    """A name resolving to 127.0.0.1 is refused unless the manifest lists that exact name or that exact IP."""
    loop = hosts["loop"]
    loop.serve({"/": Route.fixed(b"local")})
    ok = status == 200
    result = egress(resolver, *allow).request(loop.url("/", host="loop.test"), "GET", deadline=soon())
    assert result.status == status
    assert result.error_code == (None if ok else "private_address")
    assert len(loop.events()) == (2 if ok else 0)


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254"],
)
def test_metadata_address_refused_even_when_listed(resolver: RecordingResolver, address: str) -> None:
    """Cloud metadata addresses are refused whether listed as a name or as the IP literal."""
    resolver.table["meta.test"] = [address]
    client = egress(resolver, "meta.test", address)
    literal = f"[{address}]" if ":" in address else address
    for url in ("http://meta.test/latest/", f"http://{literal}/latest/"):
        result = client.request(url, "GET", deadline=soon())
        assert (result.status, result.error_code) == (-2, "private_address")


@pytest.mark.parametrize(
    ("address", "restricted"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("169.254.1.1", True),
        ("224.0.0.1", True),
        ("239.1.1.1", True),
        ("0.0.0.0", True),  # noqa: S104 (an address classified, not bound)
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fd12:3456::1", True),
        ("fe80::1", True),
        ("ff0e::1", True),
        ("::ffff:127.0.0.1", True),
        ("64:ff9b::a00:1", True),
        ("2002:a00:1::", True),
        ("8.8.8.8", False),
        ("2606:4700::1", False),
    ],
)
def test_private_address_classification(address: str, restricted: bool) -> None:
    """Non-global addresses, including IPv4 hidden in IPv6 forms, are classified as restricted."""
    assert is_restricted_address(address) is restricted


def test_redirect_to_refused_host_stops_before_contacting_it(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A redirect from an allowed host to a non-listed host returns -2 and the target sees nothing."""
    hosts["allowed"].serve({"/go": Route.redirect("http://other.test/loot")})
    hosts["other"].serve({"/loot": Route.fixed(b"secret")})
    result = egress(resolver, "allowed.test").request("http://allowed.test/go", "GET", deadline=soon())
    assert (result.status, result.error_code, result.hops) == (-2, "redirect_not_allowed", 0)
    assert result.final_url == "http://other.test/loot"
    assert len(hosts["allowed"].requests()) == 1
    assert hosts["other"].events() == []


@pytest.mark.parametrize(
    "location",
    ["http://allowed.test:80@other.test/", "http://other.test/", "ftp://allowed.test/", "file:///etc/passwd"],
    ids=["userinfo", "wildcard-private", "other-scheme", "file-scheme"],
)
def test_redirect_hop_rechecked_in_full(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, location: str
) -> None:
    """Each redirect target goes through every check (userinfo, private rule, scheme) again."""
    hosts["allowed"].serve({"/go": Route.redirect(location)})
    result = egress(resolver, "allowed.test", "*.test").request(
        "http://allowed.test/go", "GET", deadline=soon()
    )
    assert (result.status, result.error_code) == (-2, "redirect_not_allowed")
    assert hosts["other"].events() == []


def test_redirect_between_allowed_hosts_followed(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """Redirects to allowed hosts, absolute and relative, are followed to the final response."""
    hosts["allowed"].serve({"/start": Route.redirect("http://example.com/next", status=301)})
    hosts["example"].serve(
        {"/next": Route.redirect("/final?x=1", status=307), "/final": Route.fixed(b"done")}
    )
    client = egress(resolver, "allowed.test", "example.com")
    result = client.request("http://allowed.test/start", "GET", deadline=soon())
    assert (result.status, result.body, result.hops) == (200, b"done", 2)
    assert result.final_url == "http://example.com/final?x=1"
    assert [r["path"] for r in hosts["example"].requests()] == ["/next", "/final?x=1"]


SECRET_HEADERS = (("Authorization", "Bearer t0k"), ("Accept", "a/b"))


@pytest.mark.parametrize(
    ("binding", "sent"),
    [
        ((("allowed.test",),), "Bearer t0k"),
        ((("allowed.test:80",), ("*.test",)), "Bearer t0k"),
        ((("example.com",),), None),
        ((("allowed.test:8080",),), None),
        ((("allowed.test",), ("example.com",)), None),
        ((), None),
    ],
)
def test_secret_headers_go_only_where_every_binding_matches(
    hosts: dict[str, ServedHost],
    resolver: RecordingResolver,
    binding: tuple[tuple[str, ...], ...],
    sent: str | None,
) -> None:
    """Egress checks the operator's bindings itself, on the first hop too: a secret header goes only to a
    host and port that the binding of every secret used matches (none at all matches nothing); the other
    headers go regardless."""
    hosts["allowed"].serve({"/": Route.fixed(b"ok")})
    result = egress(resolver, "allowed.test").request(
        "http://allowed.test/",
        "GET",
        deadline=soon(),
        headers=SECRET_HEADERS,
        secret_headers=frozenset({"authorization"}),
        secret_hosts=binding,
    )
    assert result.status == 200
    (seen,) = hosts["allowed"].requests()
    assert seen["headers"].get("Authorization") == sent
    assert seen["headers"]["Accept"] == "a/b"


@pytest.mark.parametrize(
    ("location", "kept"),
    [("/b", True), ("http://alias.test/b", False), ("http://example.com/b", False)],
)
def test_secret_headers_rechecked_on_every_redirect(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, location: str, kept: bool
) -> None:
    """A hop within the origin keeps the secret header (still bound); a hop to another origin drops it, even
    to the same address under another name, and even when that name is bound too."""
    hosts["allowed"].serve({"/a": Route.redirect(location), "/b": Route.fixed(b"b")})
    hosts["example"].serve({"/b": Route.fixed(b"b")})
    result = egress(resolver, "allowed.test", "alias.test", "example.com").request(
        "http://allowed.test/a",
        "GET",
        deadline=soon(),
        headers=SECRET_HEADERS,
        secret_headers=frozenset({"authorization"}),
        secret_hosts=(("allowed.test", "alias.test", "example.com"),),
    )
    assert (result.status, result.hops) == (200, 1)
    final = [*hosts["allowed"].requests(), *hosts["example"].requests()][-1]
    assert final["headers"].get("Authorization") == ("Bearer t0k" if kept else None)
    assert final["headers"]["Accept"] == "a/b"


@pytest.mark.parametrize(
    ("status", "method", "followed_with"),
    [(303, "PUT", "GET"), (302, "POST", "GET"), (307, "POST", "POST"), (308, "DELETE", "DELETE")],
)
def test_redirect_method_rules(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, status: int, method: str, followed_with: str
) -> None:
    """303 (and 301/302 after POST) continue as GET; 307 and 308 keep the method."""
    hosts["allowed"].serve({"/a": Route.redirect("/b", status=status), "/b": Route.fixed(b"b")})
    result = egress(resolver, "allowed.test").request("http://allowed.test/a", method, deadline=soon())
    assert result.status == 200
    assert [r["method"] for r in hosts["allowed"].requests()] == [method, followed_with]


def test_too_many_redirects(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """A redirect loop stops after max_redirects hops with -5."""
    hosts["allowed"].serve({"/loop": Route.redirect("/loop")})
    client = egress(resolver, "allowed.test", max_redirects=3)
    result = client.request("http://allowed.test/loop", "GET", deadline=soon())
    assert (result.status, result.error_code, result.hops) == (-5, "too_many_redirects", 3)
    assert len(hosts["allowed"].requests()) == 4


def test_redirect_returned_when_following_is_off(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """With follow_redirects off, the 3xx itself is the completed response."""
    hosts["allowed"].serve(
        {"/go": Route.fixed(b"moved", status=302, headers={"Location": "http://other.test/"})}
    )
    client = egress(resolver, "allowed.test", follow_redirects=False)
    result = client.request("http://allowed.test/go", "GET", deadline=soon())
    assert (result.status, result.body, result.error_code) == (302, b"moved", None)
    assert hosts["other"].events() == []


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "streamed"])
def test_body_over_cap_is_refused(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, declare_length: bool
) -> None:
    """A body one byte over max_response_size returns -4, declared or not."""
    hosts["allowed"].serve({"/big": Route.large(100_001, declare_length=declare_length)})
    client = egress(resolver, "allowed.test", max_response_size=100_000)
    result = client.request("http://allowed.test/big", "GET", deadline=soon())
    assert (result.status, result.error_code, result.body) == (-4, "too_large", b"")


def test_body_at_cap_is_kept(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """A body of exactly max_response_size bytes is returned whole."""
    hosts["allowed"].serve({"/big": Route.large(100_000, declare_length=False)})
    client = egress(resolver, "allowed.test", max_response_size=100_000)
    result = client.request("http://allowed.test/big", "GET", deadline=soon())
    assert (result.status, result.body) == (200, b"L" * 100_000)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_is_honoured(hosts: dict[str, ServedHost], resolver: RecordingResolver, method: str) -> None:
    """The guest's method reaches the server, with no request body; HEAD yields an empty body."""
    hosts["allowed"].serve({"/m": Route.fixed(b"answer")})
    result = egress(resolver, "allowed.test").request(
        "http://allowed.test/m", method.lower(), deadline=soon()
    )
    assert (result.status, result.body) == (200, b"" if method == "HEAD" else b"answer")
    [seen] = hosts["allowed"].requests()
    assert (seen["method"], seen["body"]) == (method, "")


def test_empty_method_means_get(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """An empty method string is a GET, what every reference guest got."""
    egress(resolver, "allowed.test").request("http://allowed.test/", "", deadline=soon())
    assert [r["method"] for r in hosts["allowed"].requests()] == ["GET"]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "G ET"])
def test_method_not_allowed(hosts: dict[str, ServedHost], resolver: RecordingResolver, method: str) -> None:
    """A method outside the policy returns -5 without contacting the server."""
    result = egress(resolver, "allowed.test").request("http://allowed.test/", method, deadline=soon())
    assert (result.status, result.error_code) == (-5, "method_not_allowed")
    assert hosts["allowed"].events() == []


@pytest.mark.parametrize(
    "url", ["ftp://allowed.test/", "allowed.test/", "http:///x", "http://allowed.test:99999/"]
)
def test_bad_url(resolver: RecordingResolver, url: str) -> None:
    """A URL that is not an absolute http(s) URL returns -5 bad_url."""
    result = egress(resolver, "allowed.test").request(url, "GET", deadline=soon())
    assert (result.status, result.error_code) == (-5, "bad_url")


def test_deadline_passed_means_no_connection(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A deadline already in the past returns -5 timeout without resolving or connecting."""
    result = egress(resolver, "allowed.test").request(
        "http://allowed.test/", "GET", deadline=time.monotonic() - 1
    )
    assert (result.status, result.error_code) == (-5, "timeout")
    assert resolver.calls == []
    assert hosts["allowed"].events() == []


def test_silent_server_times_out_at_deadline(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A server that accepts the request and never answers yields -5 timeout once the deadline passes."""
    hosts["allowed"].serve({"/hang": Route.hang()})
    deadline = soon(0.4)
    result = egress(resolver, "allowed.test").request("http://allowed.test/hang", "GET", deadline=deadline)
    assert (result.status, result.error_code) == (-5, "timeout")
    assert time.monotonic() >= deadline
    assert len(hosts["allowed"].requests()) == 1


def test_read_timeout_caps_a_single_wait(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """read_timeout bounds one wait for data even when the deadline is far away."""
    hosts["allowed"].serve({"/hang": Route.hang()})
    client = egress(resolver, "allowed.test", read_timeout=0.2)
    result = client.request("http://allowed.test/hang", "GET", deadline=soon(60))
    assert (result.status, result.error_code) == (-5, "timeout")


def test_dripping_server_cannot_outlast_the_deadline(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A server sending its headers a byte at a time is cut off at the deadline instead of completing."""
    hosts["allowed"].serve({"/drip": Route.drip(count=100, interval=0.05)})
    result = egress(resolver, "allowed.test").request("http://allowed.test/drip", "GET", deadline=soon(0.4))
    assert (result.status, result.error_code) == (-5, "timeout")


def test_truncated_body(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """A connection closed before Content-Length bytes arrived returns -4 body_read_failed."""
    hosts["allowed"].serve({"/short": Route.truncated(declared=1000, sent=10)})
    result = egress(resolver, "allowed.test").request("http://allowed.test/short", "GET", deadline=soon())
    assert (result.status, result.error_code, result.body) == (-4, "body_read_failed", b"")


def test_https_uses_the_name_for_sni_and_verification(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, certificate: Certificate
) -> None:
    """HTTPS to the pinned address verifies the certificate against the URL's name and returns the body."""
    host = hosts["allowed"]
    host.serve({"/s": Route.fixed(BINARY)})
    client = Egress(
        EgressPolicy(allow_hosts=("allowed.test",)),
        resolver=resolver,
        tls_context=certificate.client_context(),
    )
    result = client.request(host.url("/s", host="allowed.test", tls=True), "GET", deadline=soon())
    assert (result.status, result.body) == (200, BINARY)
    [seen] = host.requests()
    assert (seen["tls"], seen["host"]) == (True, "allowed.test")


def test_https_certificate_for_another_name_fails(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, certificate: Certificate
) -> None:
    """A certificate that does not name the requested host returns -5 tls_failed and no request is sent."""
    host = hosts["allowed"]
    client = Egress(
        EgressPolicy(allow_hosts=("alias.test",)), resolver=resolver, tls_context=certificate.client_context()
    )
    result = client.request(host.url("/", host="alias.test", tls=True), "GET", deadline=soon())
    assert (result.status, result.error_code) == (-5, "tls_failed")
    assert host.requests() == []


def test_connection_refused(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """A port nobody listens on returns -5 connect_failed."""
    result = egress(resolver, "allowed.test").request("http://allowed.test:81/", "GET", deadline=soon())
    assert (result.status, result.error_code) == (-5, "connect_failed")


def test_unresolvable_name(resolver: RecordingResolver) -> None:
    """A listed name that does not resolve returns -5 dns_failed."""
    result = egress(resolver, "nowhere.test").request("http://nowhere.test/", "GET", deadline=soon())
    assert (result.status, result.error_code) == (-5, "dns_failed")
    assert resolver.calls == ["nowhere.test"]


def test_system_resolver_used_by_default(hosts: dict[str, ServedHost]) -> None:
    """Without an injected resolver the parent resolves with getaddrinfo (``localhost`` from /etc/hosts)."""
    loop = hosts["loop"]
    loop.serve({"/": Route.fixed(b"via getaddrinfo")})
    assert "127.0.0.1" in system_resolver("localhost", loop.port, 5.0)
    client = Egress(EgressPolicy(allow_hosts=("localhost",)))
    result = client.request(loop.url("/", host="localhost"), "GET", deadline=soon())
    assert (result.status, result.body) == (200, b"via getaddrinfo")


def test_policy_from_manifest() -> None:
    """A manifest's allow_hosts become the policy's, with the default limits."""
    policy = EgressPolicy.from_manifest(make_manifest(allow_hosts=("api.example.com", "*.cdn.test")))
    assert policy == EgressPolicy(allow_hosts=("api.example.com", "*.cdn.test"))
    with pytest.raises(ValueError, match="positive"):
        EgressPolicy(allow_hosts=(), max_requests=-1)


def test_request_budget_enforced(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """After max_requests calls, further calls return -5 too_many_requests without any traffic."""
    hosts["allowed"].serve({"/": Route.fixed(b"x")})
    client = egress(resolver, "allowed.test", max_requests=2)
    statuses = [client.request("http://allowed.test/", "GET", deadline=soon()).status for _ in range(3)]
    assert statuses == [200, 200, -5]
    assert len(hosts["allowed"].requests()) == 2
    assert client.requests_made == 3


def test_log_event_has_keys_and_no_body(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call logs one egress event with url, status, bytes and duration, without query or body."""
    hosts["allowed"].serve({"/p": Route.fixed(b"BODY-SECRET")})
    with caplog.at_level(logging.INFO, logger="workers.egress"):
        egress(resolver, "allowed.test").request("http://allowed.test/p?token=abc", "GET", deadline=soon())
    [record] = [r for r in caplog.records if r.name == "workers.egress"]
    message = record.getMessage()
    assert message.startswith("egress request url=http://allowed.test/p method=GET status=200 ")
    assert "bytes=11" in message
    assert "duration_ms=" in message
    assert "BODY-SECRET" not in message
    assert "token" not in message
