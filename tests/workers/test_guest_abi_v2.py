"""Guest ABI version 2 (docs/guest-abi.md) through ``run_refresh`` on real archives in confined children.

Guests are WAT programs from ``guests`` importing ``V2_IMPORTS``; they record what each host call returned
in their new payload. HTTP goes to two servers on 127.0.0.1 (``loop.test`` and ``other.test``, different
ports, so different origins), whose logs show exactly what was sent. Header rules and secrets are applied in
the parent: a refused request never reaches a server. Bad pointers and lengths of every v2 call are in
``test_hostile_guests.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import guests
import pytest
from guests import NameTable, call, record, result, results
from netns_hosts import Certificate, Route, ServedHost, loopback_host, make_certificate

from broker.settings import Settings, SettingsError
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers.guest_http import HeaderRefusal, prepare_headers
from workers.host_abi import MAX_LOG_LINES
from workers.refresh import COMMITTED, UNCHANGED, RefreshOutcome, run_refresh
from workers.runtime import GuestRuntime

#: Where strings (URL, method, headers, body, header names) are placed, and where guests copy bytes to.
URL_AT, METHOD_AT, HEADERS_AT, BODY_AT, NAME_AT, OUT = 0x100, 0x300, 0x400, 0x1400, 0x1800, 0x2000
SECRET = "s3cret-value-never-seen"  # noqa: S105  (a test value)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for ``loop.test``."""
    return make_certificate(tmp_path_factory.mktemp("v2-tls"), "loop.test")


@pytest.fixture(scope="module")
def servers(certificate: Certificate) -> Iterator[dict[str, ServedHost]]:
    """Two servers on 127.0.0.1 for the module, the first also on https (as ``loop.test``)."""
    with loopback_host("v2", certificate) as one, loopback_host("v2-other") as other:
        yield {"loop": one, "other": other}


@pytest.fixture(autouse=True)
def trusted(certificate: Certificate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's egress trusts the test certificate (its default context reads ``SSL_CERT_FILE``)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, ServedHost]) -> GuestRuntime:
    """A strict runtime where the operator supplies the secret ``TOKEN``, bound to ``loop.test`` on the loop
    server's https port only, ``PLAIN``, bound to ``loop.test`` on its plain http port, and ``LOOSE``, bound
    to nothing (and no other secret). Loopback is opened by the operator (``SYNC_EGRESS_ALLOW_PRIVATE``), as
    a manifest alone cannot."""
    settings = Settings.from_env(
        {
            "cache_dir": tmp_path_factory.mktemp("v2-cache"),
            "sandbox": "strict",
            "guest_secrets": {"TOKEN": SECRET, "LOOSE": SECRET, "PLAIN": SECRET},
            "guest_secret_hosts": {
                "TOKEN": f"loop.test:{servers['loop'].tls_port}",
                "PLAIN": f"loop.test:{servers['loop'].port}",
            },
        },
        env={"SYNC_EGRESS_ALLOW_PRIVATE": "127.0.0.1:*"},
    )
    return GuestRuntime(
        settings, resolver=NameTable({"loop.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    )


@pytest.fixture(autouse=True)
def fresh(servers: dict[str, ServedHost]) -> None:
    """Each test starts with empty logs; ``/json`` answers with an ETag, ``/hop`` redirects to the other."""
    for host in servers.values():
        host.reset()
    servers["loop"].serve(
        {
            "/json": Route.fixed(
                b'{"ok": true}', headers={"ETag": '"v1"', "Content-Type": "application/json"}
            ),
            "/hop": Route.redirect(servers["other"].url("/json", host="other.test")),
            # The other server under the bound name: same host, another port (another origin, unbound).
            "/hop-port": Route.redirect(servers["other"].url("/json", host="loop.test")),
            "/hop-self": Route.redirect("/json"),
        }
    )
    servers["other"].serve({"/json": Route.fixed(b"other")})


def url(servers: dict[str, ServedHost], path: str = "/json") -> bytes:
    return servers["loop"].url(path, host="loop.test").encode()


def secure_url(servers: dict[str, ServedHost], path: str = "/json") -> bytes:
    """The loop server's https URL, where ``TOKEN`` is bound."""
    return servers["loop"].url(path, host="loop.test", tls=True).encode()


def hosts(servers: dict[str, ServedHost]) -> tuple[str, ...]:
    plain = tuple(f"{name}.test:{servers[name].port}" for name in ("loop", "other"))
    return (*plain, f"loop.test:{servers['loop'].tls_port}")


def run(
    runtime: GuestRuntime,
    tmp_path: Path,
    wasm: bytes,
    *,
    context: bytes | None = None,
    allow_hosts: tuple[str, ...] = (),
    allow_env: tuple[str, ...] = (),
) -> tuple[RefreshOutcome, Path]:
    """Refresh an archive (payload ``hello``) holding this guest once."""
    manifest = make_manifest(allow_hosts=allow_hosts)
    manifest = dataclasses.replace(
        manifest, permissions=dataclasses.replace(manifest.permissions, allow_env=allow_env)
    )
    path = tmp_path / "v2.sync"
    make_archive(path, b"hello", manifest=manifest, wasm=wasm, context=context)
    return run_refresh(path, runtime), path


def payload_of(path: Path) -> bytes:
    with open_archive(path) as snap:
        return snap.read_payload()


def send(
    target: bytes, method: bytes = b"GET", headers: bytes = b"", body: bytes = b""
) -> tuple[str, dict[int, bytes]]:
    """An ``http_send`` call and its data segments."""
    expr = call(
        "http_send", URL_AT, len(target), METHOD_AT, len(method), HEADERS_AT, len(headers), BODY_AT, len(body)
    )
    return expr, {URL_AT: target, METHOD_AT: method, HEADERS_AT: headers, BODY_AT: body}


def test_context_read_returns_context_json(runtime: GuestRuntime, tmp_path: Path) -> None:
    """``context_size``/``context_read`` give the archive's context.json byte for byte, also in parts."""
    context = b'{"url": "https://example.com/a.csv", "n": 3}'
    wasm = record(
        call("context_size"),
        call("context_read", 0, 1000, OUT),
        call("context_read", 8, 5, OUT + 100),
        regions=[(OUT, result(1)), (OUT + 100, 5)],
        imports=guests.V2_IMPORTS,
    )
    outcome, path = run(runtime, tmp_path, wasm, context=context)
    assert outcome.status == COMMITTED, outcome.error
    values, rest = results(payload_of(path), 3)
    assert values == [len(context), len(context), 5]
    assert rest == context + context[8:13]


def test_context_is_empty_without_context_json(runtime: GuestRuntime, tmp_path: Path) -> None:
    """Without context.json both calls say 0."""
    wasm = record(call("context_size"), call("context_read", 0, 10, OUT), imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm)
    assert results(payload_of(path), 2) == ([0, 0], b"")
    assert outcome.status == COMMITTED


def test_post_with_headers_and_body_and_response_headers(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A POST carries the guest's headers and body; the guest reads the status, body and response headers."""
    body = b'{"query": "temperature"}'
    request, data = send(
        url(servers), b"POST", b"Accept: application/json\nContent-Type: application/json\n", body
    )
    wasm = record(
        request,
        call("last_response_header", NAME_AT, 4, OUT, 64),
        call("last_response_read_at", 1, 4, OUT + 64),
        call("last_response_headers_size"),
        regions=[(OUT, result(1)), (OUT + 64, 4)],
        data={**data, NAME_AT: b"ETag"},
        imports=guests.V2_IMPORTS,
    )
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers))
    assert outcome.status == COMMITTED, outcome.error
    values, rest = results(payload_of(path), 4)
    assert values[:3] == [200, 4, 4]
    assert values[3] > 0
    assert rest == b'"v1"' + b'"ok"'
    (seen,) = servers["loop"].requests()
    assert seen["method"] == "POST"
    assert seen["headers"]["Accept"] == "application/json"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert base64.b64decode(seen["body"]) == body


def test_a_lower_case_content_type_is_the_only_one_sent(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A body whose type the guest names in lower case gets no second, default ``Content-Type``."""
    request, data = send(url(servers), b"POST", b"content-type: text/csv\n", b"a,b\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers))
    assert results(payload_of(path), 1) == ([200], b""), outcome.error
    (seen,) = servers["loop"].requests()
    types = [value for name, value in seen["headers"].items() if name.lower() == "content-type"]
    assert types == ["text/csv"]


def test_response_headers_over_the_cap_are_a_failed_request_not_a_failed_run(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A server sending more header bytes than a guest is handed (``MAX_RESPONSE_HEADERS_BYTES``; 1.2 MB
    here) fails that request with -4 ``headers_too_large``; the run goes on (it used to end with a channel
    error, the guest never knowing why)."""
    big = {f"X-H{i}": "v" * 60_000 for i in range(20)}
    servers["loop"].serve({"/big": Route.fixed(b"ok", headers=big), "/json": Route.fixed(b"fine")})
    first, data = send(url(servers, "/big"))
    again = url(servers)  # a second request, from its own address
    second = call("http_send", 0x1C00, len(again), METHOD_AT, 3, HEADERS_AT, 0, BODY_AT, 0)
    wasm = record(
        first,
        call("last_response_headers_size"),
        second,
        data={**data, 0x1C00: again},
        imports=guests.V2_IMPORTS,
    )
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers))
    assert outcome.status == COMMITTED, outcome.error
    assert results(payload_of(path), 3) == ([-4, 0, 200], b"")
    assert outcome.egress_errors == ("headers_too_large",)


def test_conditional_request_gets_304_without_a_body(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """``If-None-Match`` with the current ETag gets 304 and no body; the guest keeps its payload."""
    request, data = send(url(servers), headers=b'If-None-Match: "v1"\n')
    wasm = record(request, call("last_response_size"), data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers))
    assert results(payload_of(path), 2) == ([304, 0], b"")
    assert outcome.status == COMMITTED
    assert servers["loop"].requests()[0]["headers"]["If-None-Match"] == '"v1"'


REFUSED_HEADERS = [
    ("too-many-headers", b"".join(b"X-N%d: 1\n" % i for i in range(33))),
    ("host", b"Host: evil.test\n"),
    ("content-length", b"Content-Length: 0\n"),
    ("transfer-encoding", b"Transfer-Encoding: chunked\n"),
    ("connection", b"Connection: keep-alive\n"),
    ("crlf-smuggled-host", b"X-A: 1\r\nHost: evil.test\r\n"),
    ("malformed-line", b"NoColonHere\n"),
    ("space-in-name", b"Bad Name: 1\n"),
    ("nul-in-value", b"X-A: a\x00b\n"),
    ("not-utf8", b"X-A: \xff\n"),
    ("beyond-latin-1", "X-A: \u6f22\n".encode()),
    ("authorization-from-archive", b"Authorization: Bearer abc\n"),
    ("cookie-from-archive", b"Cookie: session=abc\n"),
    ("api-key-from-archive", b"X-Api-Key: abc\n"),
    ("secret-not-granted", b"X-A: ${OTHER}\n"),
    ("credential-secret-not-granted", b"Authorization: Bearer ${OTHER}\n"),
]


@pytest.mark.parametrize("block", [pytest.param(b, id=i) for i, b in REFUSED_HEADERS])
def test_header_rules_refuse_before_anything_is_sent(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost], block: bytes
) -> None:
    """Too many, forbidden, malformed and credential headers (unless from a granted secret) get -3; nothing
    reaches the server."""
    request, data = send(url(servers), headers=block)
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("TOKEN",))
    assert results(payload_of(path), 1) == ([-3], b"")
    assert outcome.status == COMMITTED
    assert servers["loop"].events() == []


def test_a_secret_beyond_latin_1_is_refused_not_raised() -> None:
    """An operator secret HTTP cannot carry (non-Latin-1, or a control character) refuses the request (-3)
    instead of raising in the parent; the refusal does not show the value."""
    bound = {"url": "https://a.test/", "bindings": {"K": ("a.test",)}}
    latin = prepare_headers(b"X-Key: ${K}\n", allow_env=("K",), secrets={"K": "p\u00e4ss"}, **bound)
    assert not isinstance(latin, HeaderRefusal)
    assert latin.headers == (("X-Key", "p\u00e4ss"),)
    for value in ("\u6f22-token", "a\rb"):
        refused = prepare_headers(b"X-Key: ${K}\n", allow_env=("K",), secrets={"K": value}, **bound)
        assert isinstance(refused, HeaderRefusal)
        assert refused.error_code == "bad_header"
        assert value not in refused.reason


def test_granted_secret_missing_from_the_operator_is_refused(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A secret the manifest grants but the operator does not supply: -3, nothing sent."""
    request, data = send(url(servers), headers=b"Authorization: Bearer ${ABSENT}\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("ABSENT",))
    assert results(payload_of(path), 1) == ([-3], b"")
    assert outcome.egress_errors == ("secret_missing",)
    assert servers["loop"].events() == []


@pytest.mark.parametrize("other_host", ["other.test", "loop.test"])
def test_secret_goes_only_where_the_operator_bound_it(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost], other_host: str
) -> None:
    """The attack: an archive lists ``TOKEN`` in allow_env and its own host in allow_hosts. The operator bound
    ``TOKEN`` to ``loop.test`` on the loop server's port, so a request elsewhere (another name, or the bound
    name on another port) is refused with -3 ``secret_not_bound`` and that server never sees anything."""
    target = servers["other"].url("/json", host=other_host).encode()
    request, data = send(target, headers=b"Authorization: Bearer ${TOKEN}\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    own = f"{other_host}:{servers['other'].port}"
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=(*hosts(servers), own), allow_env=("TOKEN",))
    assert results(payload_of(path), 1) == ([-3], b"")
    assert outcome.egress_errors == ("secret_not_bound",)
    assert servers["other"].events() == []
    assert SECRET not in str(outcome.to_json())


def test_secret_without_a_binding_is_never_sent(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """``LOOSE`` is supplied by the operator and granted by the manifest but bound to no host: refused
    (-3 ``secret_not_bound``) even to a host the manifest allows; nothing reaches the server."""
    request, data = send(url(servers), headers=b"X-Api-Key: ${LOOSE}\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("LOOSE",))
    assert results(payload_of(path), 1) == ([-3], b"")
    assert outcome.egress_errors == ("secret_not_bound",)
    assert servers["loop"].events() == []


def test_granted_secret_is_sent_and_never_seen(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost], caplog: pytest.LogCaptureFixture
) -> None:
    """``${TOKEN}`` granted by allow_env and supplied by the operator reaches the server in Authorization; the
    guest's memory, the status record and the worker log never hold the value."""
    caplog.set_level(logging.DEBUG)
    headers = b"Authorization: Bearer ${TOKEN}\n"
    request, data = send(secure_url(servers), headers=headers)
    wasm = record(
        request,
        call("last_response_headers_read", 0, 4096, OUT),
        regions=[(0, 0x4000)],  # the guest's whole low memory, where a secret would be if it leaked there
        data=data,
        pages=1,
        imports=guests.V2_IMPORTS,
    )
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("TOKEN",))
    assert outcome.status == COMMITTED, outcome.error
    assert results(payload_of(path), 2)[0][0] == 200
    assert servers["loop"].requests()[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET.encode() not in payload_of(path)
    assert SECRET not in str(outcome.to_json())
    assert SECRET not in caplog.text


def test_secret_headers_do_not_follow_a_redirect_to_another_origin(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A redirect to another origin drops the headers that carried a secret; other headers still go."""
    request, data = send(
        secure_url(servers, "/hop"), headers=b"Authorization: Bearer ${TOKEN}\nAccept: text/plain\n"
    )
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("TOKEN",))
    assert results(payload_of(path), 1) == ([200], b"")
    assert servers["loop"].requests()[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    (moved,) = servers["other"].requests()
    assert "Authorization" not in moved["headers"]
    assert moved["headers"]["Accept"] == "text/plain"
    assert outcome.status == COMMITTED


@pytest.mark.parametrize("path", ["/hop", "/hop-port"])
def test_secret_never_follows_a_redirect_off_its_binding(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost], path: str
) -> None:
    """From the bound host, a redirect to an unbound destination (another name, or the bound name on another
    port) is followed without the secret header, though the manifest allows that destination."""
    request, data = send(secure_url(servers, path), headers=b"Authorization: Bearer ${TOKEN}\nAccept: a/b\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    allow = (*hosts(servers), f"loop.test:{servers['other'].port}")
    outcome, _ = run(runtime, tmp_path, wasm, allow_hosts=allow, allow_env=("TOKEN",))
    assert outcome.status == COMMITTED, outcome.error
    assert servers["loop"].requests()[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    (moved,) = servers["other"].requests()
    assert "Authorization" not in moved["headers"]
    assert moved["headers"]["Accept"] == "a/b"


def test_secret_follows_a_same_origin_redirect_on_its_binding(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """A redirect within the bound origin keeps the secret (the binding is checked again and still holds)."""
    request, data = send(secure_url(servers, "/hop-self"), headers=b"Authorization: Bearer ${TOKEN}\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    _, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("TOKEN",))
    assert results(payload_of(path), 1) == ([200], b"")
    sent = [r["headers"].get("Authorization") for r in servers["loop"].requests()]
    assert sent == [f"Bearer {SECRET}", f"Bearer {SECRET}"]


def test_unchanged_discards_writes_and_commits_nothing(runtime: GuestRuntime, tmp_path: Path) -> None:
    """A guest that writes and then says ``unchanged`` leaves generation and payload as they were."""
    wasm = record(call("payload_size"), imports=guests.V2_IMPORTS, after="(drop (call $unchanged))")
    outcome, path = run(runtime, tmp_path, wasm)
    assert outcome.status == UNCHANGED
    with open_archive(path) as snap:
        assert (snap.generation, snap.read_payload()) == (0, b"hello")


def test_log_lines_are_escaped_and_bounded(runtime: GuestRuntime, tmp_path: Path) -> None:
    """Log lines land in the status record escaped (no raw newline or escape sequence) and at most
    ``MAX_LOG_LINES`` of them, then one line saying the rest were dropped."""
    line = b"hi\n\x1b[31mred\xff"
    wasm = guests.module(
        f"""(func (export "run") (local $i i32)
    (loop $more
      (drop (call $log (i32.const {URL_AT}) (i32.const {len(line)})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 100)))))""",
        data={URL_AT: line},
        imports=guests.V2_IMPORTS,
    )
    outcome, _ = run(runtime, tmp_path, wasm)
    assert outcome.status == UNCHANGED
    assert len(outcome.guest_log) == MAX_LOG_LINES + 1
    assert outcome.guest_log[0] == "hi\\n\\x1b[31mred\\ufffd"
    assert "dropped" in outcome.guest_log[-1]
    assert all(c.isprintable() for entry in outcome.guest_log for c in entry)


def test_log_survives_a_trap(runtime: GuestRuntime, tmp_path: Path) -> None:
    """Lines logged before a trap are in the failed refresh's record: that is when an author needs them."""
    wasm = guests.module(
        f"""(func (export "run")
    (drop (call $log (i32.const {URL_AT}) (i32.const 8)))
    unreachable)""",
        data={URL_AT: b"about to"},
        imports=guests.V2_IMPORTS,
    )
    outcome, _ = run(runtime, tmp_path, wasm)
    assert (outcome.error_code, outcome.guest_log) == ("guest_trap", ("about to",))


def test_time_unix_is_the_wall_clock(runtime: GuestRuntime, tmp_path: Path) -> None:
    """``time_unix`` returns seconds since the epoch (i64; its low 32 bits recorded here)."""
    before = int(time.time())
    wasm = record("(i32.wrap_i64 (call $time_unix))", imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm)
    after = int(time.time())
    (seen,), _ = results(payload_of(path), 1)
    assert before <= seen % 2**32 <= after
    assert outcome.status == COMMITTED


def test_secrets_come_from_the_environment_and_are_not_printed() -> None:
    """``SYNC_GUEST_SECRET_<NAME>`` supplies NAME; the settings' repr never shows a value."""
    settings = Settings.from_env(env={"SYNC_GUEST_SECRET_TOKEN": SECRET, "SYNC_GUEST_SECRET_": "x"})
    assert settings.guest_secrets == {"TOKEN": SECRET}
    assert SECRET not in repr(settings)


def test_secret_bindings_come_from_the_environment() -> None:
    """``SYNC_GUEST_SECRET_<NAME>_HOSTS`` binds NAME (comma-separated host patterns); it is no secret itself,
    and a secret left unbound is reported as unusable."""
    settings = Settings.from_env(
        env={
            "SYNC_GUEST_SECRET_TOKEN": SECRET,
            "SYNC_GUEST_SECRET_TOKEN_HOSTS": " api.example.com:443, *.example.org ",
            "SYNC_GUEST_SECRET_SPARE": SECRET,
        }
    )
    assert settings.guest_secrets == {"TOKEN": SECRET, "SPARE": SECRET}
    assert settings.guest_secret_hosts == {"TOKEN": ("api.example.com:443", "*.example.org")}
    assert settings.unbound_secrets() == ("SPARE",)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("binding", "problem"),
    [
        ("", "at least one host pattern"),
        (" , ", "at least one host pattern"),
        ("*", "'*' is not a host pattern"),
        ("api.example.com,", "'' is not a host pattern"),
        ("https://api.example.com/", "is not a host pattern"),
        ("api.example.com:99999", "is not a host pattern"),
        ("*.10.0.0.1", "is not a host pattern"),
    ],
)
def test_malformed_binding_is_a_settings_error(binding: str, problem: str) -> None:
    """A binding that is empty or holds an entry that is not a host pattern stops startup with a message
    naming the variable, instead of leaving the secret silently unusable or bound to something unmeant."""
    env = {"SYNC_GUEST_SECRET_TOKEN": SECRET, "SYNC_GUEST_SECRET_TOKEN_HOSTS": binding}
    with pytest.raises(SettingsError, match="SYNC_GUEST_SECRET_TOKEN_HOSTS") as caught:
        Settings.from_env(env=env)
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_binding_of_an_absent_secret_is_a_settings_error() -> None:
    """A binding whose secret is not set is a misspelling (``TOKN``): refused, naming both variables."""
    env = {"SYNC_GUEST_SECRET_TOKEN": SECRET, "SYNC_GUEST_SECRET_TOKN_HOSTS": "api.example.com"}
    with pytest.raises(SettingsError, match="SYNC_GUEST_SECRET_TOKN is not set"):
        Settings.from_env(env=env)


def test_unbound_secret_is_one_warning_at_startup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A worker's runtime says once which secrets are unusable until bound (names only)."""
    caplog.set_level(logging.WARNING, logger="workers.runtime")
    env = {"SYNC_GUEST_SECRET_SPARE": SECRET, "SYNC_CACHE_DIR": str(tmp_path)}
    GuestRuntime(Settings.from_env(env=env))
    (line,) = [r.getMessage() for r in caplog.records if "unusable until bound" in r.getMessage()]
    assert "names=SPARE" in line
    assert SECRET not in caplog.text


def test_refused_sends_spend_the_request_budget_and_are_recorded_boundedly(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost], caplog: pytest.LogCaptureFixture
) -> None:
    """A guest looping on a refused ``http_send`` (a header the client owns) spends the run's 64 requests:
    the 65th call and any later one, a valid one included, is -5 at once; the parent logs 64 refusals and
    keeps 64 error codes, not one per call."""
    target, refused_headers = url(servers), b"Host: x\n"
    refused = call(
        "http_send", URL_AT, len(target), METHOD_AT, 3, HEADERS_AT, len(refused_headers), BODY_AT, 0
    )
    valid = call("http_send", URL_AT, len(target), METHOD_AT, 3, HEADERS_AT, 0, BODY_AT, 0)
    looped = f"""(block (result i32)
      (local.set $len (i32.const 0))
      (loop $again
        (drop {refused})
        (local.set $len (i32.add (local.get $len) (i32.const 1)))
        (br_if $again (i32.lt_u (local.get $len) (i32.const 200))))
      {refused})"""
    data = {URL_AT: target, METHOD_AT: b"GET", HEADERS_AT: refused_headers}
    wasm = record(looped, valid, data=data, imports=guests.V2_IMPORTS)
    with caplog.at_level(logging.INFO, logger="workers.supervisor"):
        outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers))
    assert results(payload_of(path), 2) == ([-5, -5], b"")
    assert servers["loop"].events() == []
    assert outcome.egress_errors == ("forbidden_header",) * 64
    refusals = [r for r in caplog.records if "egress request refused" in r.getMessage()]
    assert len(refusals) == 64


def test_a_secret_is_never_sent_over_plain_http(
    runtime: GuestRuntime, tmp_path: Path, servers: dict[str, ServedHost]
) -> None:
    """The operator bound ``PLAIN`` to ``loop.test`` on the port the guest uses, but the guest asks for plain
    http: refused with -3 ``secret_needs_https`` before connecting, so the secret never crosses the network
    in clear text (a binding names host and port, never a scheme)."""
    request, data = send(url(servers), headers=b"Authorization: Bearer ${PLAIN}\n")
    wasm = record(request, data=data, imports=guests.V2_IMPORTS)
    outcome, path = run(runtime, tmp_path, wasm, allow_hosts=hosts(servers), allow_env=("PLAIN",))
    assert results(payload_of(path), 1) == ([-3], b"")
    assert outcome.egress_errors == ("secret_needs_https",)
    assert servers["loop"].events() == []
