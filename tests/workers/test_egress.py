"""``workers.egress`` against real HTTP servers on separate network namespaces (and one on 127.0.0.1).

Names are mapped to the hosts by a recording resolver: ``allowed.test`` and ``example.com`` are servers the
manifests allow, ``other.test`` and ``notexample.com`` are a third server that must never be reached, and
``loop.test`` is a server on 127.0.0.1. The namespace addresses are private (10.231.x.x): no manifest can
reach them alone, so the tests run with the operator's ``SYNC_EGRESS_ALLOW_PRIVATE`` opening 10.231.0.0/16
(``NETNS_OPEN``) unless a test is about that rule; loopback is opened only by the tests that need it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
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


#: The operator's setting the tests run with: the namespace hosts' block is opened, loopback is not.
NETNS_OPEN = ("10.231.0.0/16:*",)


def egress(
    resolver: RecordingResolver, *allow: str, operator: tuple[str, ...] = NETNS_OPEN, **limits: Any
) -> Egress:
    """An Egress allowing ``allow``, with the operator opening ``operator``, with the given policy limits."""
    return Egress(EgressPolicy(allow_hosts=allow, allow_private=operator, **limits), resolver=resolver)


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


@pytest.mark.parametrize(
    "allow", [("*.test",), ("allowed.test",), ("allowed.test", "*.test")], ids=["wildcard", "exact", "both"]
)
def test_manifest_alone_never_reaches_a_private_address(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, allow: tuple[str, ...]
) -> None:
    """Without the operator's setting a private address is refused whatever the manifest lists: an exact
    entry used to unlock it (issue 11 finding 2)."""
    hosts["allowed"].serve({"/": Route.fixed(b"internal")})
    result = egress(resolver, *allow, operator=()).request("http://allowed.test/", "GET", deadline=soon())
    assert (result.status, result.error_code) == (-2, "private_address")
    assert hosts["allowed"].events() == []


def test_exact_ip_literal_entry_allows_that_address(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A manifest naming a private IP literal the operator opened may fetch from it, without any DNS
    lookup; without the operator's entry the same manifest is refused."""
    host = hosts["allowed"]
    host.serve({"/": Route.fixed(b"by address")})
    result = egress(resolver, host.address).request(host.url("/"), "GET", deadline=soon())
    assert (result.status, result.body) == (200, b"by address")
    assert resolver.calls == []
    refused = egress(resolver, host.address, operator=()).request(host.url("/"), "GET", deadline=soon())
    assert (refused.status, refused.error_code) == (-2, "private_address")


@pytest.mark.parametrize(
    ("allow", "operator", "code"),
    [
        (("loop.test",), (), "private_address"),
        (("*.test", "127.0.0.1"), (), "private_address"),
        (("loop.test",), ("127.0.0.1:{port}",), None),
        (("*.test",), ("127.0.0.0/8:*",), None),
        (("loop.test",), ("loop.test:*",), None),
        (("loop.test",), ("127.0.0.1:1",), "private_address"),
        (("loop.test",), ("other.test:*", "10.0.0.0/8:*"), "private_address"),
        (("allowed.test",), ("127.0.0.1:{port}",), "host_not_allowed"),
    ],
    ids=[
        "manifest-exact-name",
        "manifest-exact-ip",
        "operator-address-port",
        "operator-cidr-any-port",
        "operator-name",
        "operator-other-port",
        "operator-other-entries",
        "operator-without-manifest",
    ],
)
def test_loopback_needs_operator_and_manifest(
    hosts: dict[str, ServedHost],
    resolver: RecordingResolver,
    allow: tuple[str, ...],
    operator: tuple[str, ...],
    code: str | None,
) -> None:
    """A name resolving to 127.0.0.1 is fetched only when the operator's setting opens it and the manifest
    lists the host: the manifest alone (even an exact entry, the attack of finding 2) or the operator alone
    is refused, and the server sees nothing."""
    loop = hosts["loop"]
    loop.serve({"/": Route.fixed(b"local")})
    opened = tuple(entry.format(port=loop.port) for entry in operator)
    client = egress(resolver, *allow, operator=opened)
    result = client.request(loop.url("/", host="loop.test"), "GET", deadline=soon())
    assert result.error_code == code
    assert result.status == (200 if code is None else -2)
    assert len(loop.events()) == (2 if code is None else 0)


#: Every way an attacker wrote a metadata address in the attack pass, and the other metadata services.
METADATA_FORMS = [
    "169.254.169.254",
    "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe",
    "::169.254.169.254",
    "64:ff9b::169.254.169.254",
    "64:ff9b:1:a9fe:a9:fe00::",
    "2002:a9fe:a9fe::1",
    "2001:0:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:5601:5601",
    "169.254.170.2",
    "169.254.170.23",
    "100.100.100.200",
    "168.63.129.16",
    "192.0.0.192",
    "fd00:ec2::254",
    "fd00:ec2:0:0:0:0:0:254",
    "fd00:0ec2::0254",
    "::ffff:100.100.100.200",
    "64:ff9b::168.63.129.16",
    "fd00:ec2::23",
]


@pytest.mark.parametrize("address", METADATA_FORMS)
def test_metadata_address_refused_even_when_listed_and_opened(
    resolver: RecordingResolver, address: str
) -> None:
    """Cloud metadata addresses, plain or embedded in mapped, compatible, NAT64, 6to4 and Teredo IPv6, are
    refused whether reached as a name (an AAAA record) or as the literal, listed exactly in the manifest, even
    with the operator opening every address (finding 1: ``[::ffff:169.254.169.254]`` got the secret)."""
    resolver.table["meta.test"] = [address]
    literal = f"[{address}]" if ":" in address else address
    client = egress(resolver, "meta.test", literal, operator=("0.0.0.0/0:*", "[::/0]:*", "meta.test:*"))
    for url in ("http://meta.test/latest/", f"http://{literal}/latest/"):
        result = client.request(url, "GET", deadline=soon())
        assert (result.status, result.error_code) == (-2, "private_address"), url
        assert "metadata" in result.reason


def test_mapped_metadata_aaaa_is_refused_before_connecting(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A name whose only record is ``::ffff:169.254.169.254``, listed exactly, is refused without any
    connection; the same name pointed at a public-looking mapped address of a test host is judged as that
    IPv4 (private, opened by the operator) and fetched."""
    resolver.table["creds.test"] = ["::ffff:169.254.169.254"]
    result = egress(resolver, "creds.test").request("http://creds.test/creds", "GET", deadline=soon())
    assert (result.status, result.error_code) == (-2, "private_address")
    hosts["allowed"].serve({"/creds": Route.fixed(b"not a secret")})
    resolver.table["creds.test"] = [f"::ffff:{hosts['allowed'].address}"]
    assert (
        egress(resolver, "creds.test", operator=())
        .request("http://creds.test/creds", "GET", deadline=soon())
        .error_code
        == "private_address"
    )
    assert hosts["allowed"].events() == []


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
        ("::ffff:169.254.169.254", True),
        ("64:ff9b:1::1", True),
        ("2001:0:4136:e378:8000:63bf:5601:5601", True),
        ("168.63.129.16", True),
        ("100.100.100.200", True),
        ("::ffff:8.8.8.8", False),
        ("64:ff9b::808:808", False),
        ("2002:808:808::1", False),
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
    [
        "http://allowed.test:80@other.test/",
        "http://loop.test/",
        "http://[::ffff:169.254.169.254]/creds",
        "ftp://allowed.test/",
        "file:///etc/passwd",
    ],
    ids=["userinfo", "loopback", "mapped-metadata", "other-scheme", "file-scheme"],
)
def test_redirect_hop_rechecked_in_full(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, location: str
) -> None:
    """Each redirect target goes through every check (userinfo, private rule, scheme) again."""
    hosts["allowed"].serve({"/go": Route.redirect(location)})
    result = egress(resolver, "allowed.test", "*.test", "[::ffff:169.254.169.254]").request(
        "http://allowed.test/go", "GET", deadline=soon()
    )
    assert (result.status, result.error_code) == (-2, "redirect_not_allowed")
    assert hosts["other"].events() == []
    assert hosts["loop"].events() == []


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


def tls_egress(resolver: RecordingResolver, certificate: Certificate, *allow: str) -> Egress:
    """An Egress allowing ``allow`` that trusts the test certificate (secrets go over https only)."""
    policy = EgressPolicy(allow_hosts=allow, allow_private=NETNS_OPEN)
    return Egress(policy, resolver=resolver, tls_context=certificate.client_context())


@pytest.mark.parametrize(
    ("binding", "sent"),
    [
        ((("allowed.test",),), "Bearer t0k"),
        ((("allowed.test:443",), ("*.test",)), "Bearer t0k"),
        ((("example.com",),), None),
        ((("allowed.test:8080",),), None),
        ((("allowed.test",), ("example.com",)), None),
        ((), None),
    ],
)
def test_secret_headers_go_only_where_every_binding_matches(
    hosts: dict[str, ServedHost],
    resolver: RecordingResolver,
    certificate: Certificate,
    binding: tuple[tuple[str, ...], ...],
    sent: str | None,
) -> None:
    """Egress checks the operator's bindings itself, on the first hop too: a secret header goes only to a
    host and port that the binding of every secret used matches (none at all matches nothing); the other
    headers go regardless."""
    hosts["allowed"].serve({"/": Route.fixed(b"ok")})
    result = tls_egress(resolver, certificate, "allowed.test").request(
        hosts["allowed"].url("/", host="allowed.test", tls=True),
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


def test_secret_headers_never_go_over_plain_http(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """Egress's own backstop for the https rule: over plain http a secret header is left out even where its
    binding matches (a binding names no scheme), and the other headers still go."""
    hosts["allowed"].serve({"/": Route.fixed(b"ok")})
    result = egress(resolver, "allowed.test").request(
        "http://allowed.test/",
        "GET",
        deadline=soon(),
        headers=SECRET_HEADERS,
        secret_headers=frozenset({"authorization"}),
        secret_hosts=(("allowed.test",),),
    )
    assert result.status == 200
    (seen,) = hosts["allowed"].requests()
    assert "Authorization" not in seen["headers"]
    assert seen["headers"]["Accept"] == "a/b"


@pytest.mark.parametrize(
    ("location", "kept"),
    [
        ("/b", True),
        ("http://allowed.test/b", False),
        ("http://alias.test/b", False),
        ("http://example.com/b", False),
    ],
)
def test_secret_headers_rechecked_on_every_redirect(
    hosts: dict[str, ServedHost],
    resolver: RecordingResolver,
    certificate: Certificate,
    location: str,
    kept: bool,
) -> None:
    """A hop within the (https) origin keeps the secret header (still bound); a hop to another origin drops
    it: to plain http on the same name, to the same address under another name, and to another host, even
    when that name is bound too."""
    hosts["allowed"].serve({"/a": Route.redirect(location), "/b": Route.fixed(b"b")})
    hosts["example"].serve({"/b": Route.fixed(b"b")})
    result = tls_egress(resolver, certificate, "allowed.test", "alias.test", "example.com").request(
        hosts["allowed"].url("/a", host="allowed.test", tls=True),
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
        EgressPolicy(allow_hosts=("allowed.test",), allow_private=NETNS_OPEN),
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
        EgressPolicy(allow_hosts=("alias.test",), allow_private=NETNS_OPEN),
        resolver=resolver,
        tls_context=certificate.client_context(),
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
    client = Egress(EgressPolicy(allow_hosts=("localhost",), allow_private=(f"localhost:{loop.port}",)))
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


def test_header_drip_is_cut_at_the_header_timeout(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A server dripping one header byte at a time (each within the read timeout) is cut once the headers
    have taken ``header_timeout``, long before a far deadline (finding 3)."""
    hosts["allowed"].serve({"/drip": Route.drip(count=1000, interval=0.1)})
    deadline = soon(120)
    client = egress(resolver, "allowed.test", header_timeout=1.0)
    result = client.request("http://allowed.test/drip", "GET", deadline=deadline)
    assert (result.status, result.error_code) == (-5, "too_slow")
    assert "headers" in result.reason
    assert time.monotonic() < deadline


def test_body_below_the_minimum_rate_is_cut(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A body trickling in below ``min_transfer_rate`` over a rate window is cut (finding 3)."""
    hosts["allowed"].serve({"/slow": Route.trickle(size=1000, interval=0.1)})
    client = egress(resolver, "allowed.test", min_transfer_rate=100, rate_window=1.0)
    result = client.request("http://allowed.test/slow", "GET", deadline=soon(120))
    assert (result.status, result.error_code) == (-5, "too_slow")
    assert "below 100 B/s" in result.reason


def test_trickling_body_cannot_outlast_the_deadline(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """A body arriving a byte at a time is cut at the deadline: the watchdog keeps the socket even after
    ``http.client`` lets go of it once the headers are read."""
    hosts["allowed"].serve({"/slow": Route.trickle(size=1000, interval=0.05)})
    client = egress(resolver, "allowed.test", min_transfer_rate=0)
    result = client.request("http://allowed.test/slow", "GET", deadline=soon(1.0))
    assert (result.status, result.error_code) == (-5, "timeout")


def test_request_timeout_bounds_one_call(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """``request_timeout`` bounds a call whose server answers nothing, whatever the job's deadline."""
    hosts["allowed"].serve({"/hang": Route.hang()})
    client = egress(resolver, "allowed.test", request_timeout=0.5)
    result = client.request("http://allowed.test/hang", "GET", deadline=soon(120))
    assert (result.status, result.error_code) == (-5, "timeout")


def test_heartbeat_runs_while_a_request_is_in_flight(
    hosts: dict[str, ServedHost], resolver: RecordingResolver
) -> None:
    """The job's heartbeat is called while the parent waits on a slow server, so the claim cannot expire
    mid-request (finding 3: heartbeats only ran between guest messages)."""
    hosts["allowed"].serve({"/hang": Route.hang()})
    beats: list[float] = []
    client = Egress(
        EgressPolicy(allow_hosts=("allowed.test",), allow_private=NETNS_OPEN),
        resolver=resolver,
        heartbeat=lambda: beats.append(time.monotonic()),
    )
    result = client.request("http://allowed.test/hang", "GET", deadline=soon(2.5))
    assert result.error_code == "timeout"
    assert len(beats) >= 2


def test_total_bytes_of_a_run_are_capped(hosts: dict[str, ServedHost], resolver: RecordingResolver) -> None:
    """All responses of one Egress together stay under ``max_total_bytes``, each one under its own cap."""
    hosts["allowed"].serve({"/big": Route.large(60_000)})
    client = egress(resolver, "allowed.test", max_total_bytes=100_000)
    first = client.request("http://allowed.test/big", "GET", deadline=soon())
    second = client.request("http://allowed.test/big", "GET", deadline=soon())
    assert (first.status, len(first.body)) == (200, 60_000)
    assert (second.status, second.error_code) == (-4, "total_too_large")


def test_failures_are_recorded_escaped(resolver: RecordingResolver) -> None:
    """Every refused or failed call is kept for the status record: rule, host, ABI code, escaped reason."""
    resolver.table["meta.test"] = ["::ffff:169.254.169.254"]
    client = egress(resolver, "meta.test", "nowhere.test")
    client.request("http://meta.test/creds", "GET", deadline=soon())
    client.request("http://nowhere.test/\u202e\x1b[8m", "GET", deadline=soon())
    client.request("http://other.test/", "GET", deadline=soon())
    rules = [(f["rule"], f["host"], f["code"]) for f in client.failures]
    assert rules == [
        ("private_address", "meta.test", -2),
        ("bad_url", "", -5),
        ("host_not_allowed", "other.test", -2),
    ]
    assert all("\x1b" not in str(v) and "\u202e" not in str(v) for f in client.failures for v in f.values())


@contextlib.contextmanager
def raw_server(answer: bytes) -> Iterator[int]:
    """A server on 127.0.0.1 answering each connection with ``answer`` as is (what ``http.server`` would not
    send); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    "declared", [b"\xb2", b"1\xb9", b"+5"], ids=["superscript-two", "one-superscript", "sign"]
)
def test_a_content_length_that_is_not_ascii_digits_is_a_bad_response(
    resolver: RecordingResolver, declared: bytes
) -> None:
    """``Content-Length: \\xb2`` (Latin-1 superscript two: ``str.isdigit`` says yes, ``int`` says no) is a
    -5 ``bad_response``, not an exception out of ``request``."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: " + declared + b"\r\nConnection: close\r\n\r\nhello"
    with raw_server(answer) as port:
        client = egress(resolver, "loop.test", operator=("127.0.0.1:*",))
        result = client.request(f"http://loop.test:{port}/", "GET", deadline=soon())
    assert (result.status, result.error_code, result.body) == (-5, "bad_response", b"")


@pytest.mark.parametrize(
    ("route", "after"),
    [
        (Route.truncated(declared=60_000, sent=59_000), ["body_read_failed", "total_too_large", None]),
        (Route.large(70_000, declare_length=False), ["too_large", "total_too_large", "total_too_large"]),
    ],
    ids=["cut-short", "over-its-cap"],
)
def test_bytes_of_failed_responses_count_against_the_run_budget(
    hosts: dict[str, ServedHost], resolver: RecordingResolver, route: Route, after: list[str | None]
) -> None:
    """Body bytes read are charged to ``max_total_bytes`` whatever became of the response: a body that ended
    early (59,000 bytes read) or ran over its own cap (60,001 read) leaves the next one only the rest of the
    budget, and a run cannot download a budget per request."""
    hosts["allowed"].serve({"/fail": route, "/small": Route.fixed(b"x" * 1000)})
    client = egress(resolver, "allowed.test", max_response_size=60_000, max_total_bytes=100_000)
    paths = ["/fail", "/fail", "/small"]
    results = [client.request(f"http://allowed.test{p}", "GET", deadline=soon()) for p in paths]
    assert [r.error_code for r in results] == after
