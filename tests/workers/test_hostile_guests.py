"""Hostile guests through ``run_refresh`` with a strict-mode runtime: every case is contained in its own
confined child (the supervisor forks one per job), ends with a stable outcome, and leaves the parent and the
archive as they were.

After each case the pytest process is checked to be unharmed: not confined (no_new_privs, seccomp, network
namespace unchanged), still able to open files and sockets, no new child processes or zombies, and its peak
memory not grown by the guest's antics; the archive still opens with generation 0 and payload ``hello``.
Guests that probe host functions check every return value themselves and write what they saw only when it is
not what was expected (``guests.expect``), so a correct run is ``unchanged``.

HTTP goes to two hosts in network namespaces, ``allowed`` (``allowed.test``, ``example.com``) and ``evil``
(``evil.test``, ``notexample.com``), and one on 127.0.0.1 (``api.example.com``), named through a table.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import guests
import pytest
from guests import PAGE, STRINGS, NameTable, call, record, results
from netns_hosts import Route, ServedHost, loopback_host, netns_hosts

from broker.settings import Settings
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers.confine import ALL_LAYERS
from workers.engine import WASM_HEADER, GuestLimits
from workers.refresh import COMMITTED, FAILED, UNCHANGED, RefreshOutcome, run_refresh
from workers.runtime import GuestRuntime
from workers.spare import spare_pids
from workers.zygote import zygote_pids

#: Generous bound for any hostile run to come back; only reached when it was not stopped.
STOPPED_WITHIN_S = 30.0
#: How much the parent's peak RSS may grow during one case (the runtime itself, a response body in transit).
PARENT_RSS_GROWTH_KIB = 64 * 1024
#: Largest peak RSS of any child: a guest's memory (256 MiB) plus the forked interpreter, far below gigabytes.
CHILD_RSS_KIB = 1024 * 1024
#: The Landlock ABI of the kernel these tests are written for (measured on the kernels this project runs on).
EXPECTED_LANDLOCK_ABI = 7
LIMITS = GuestLimits()


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, ServedHost]]:
    """Two namespace hosts and one loopback host for the module."""
    with netns_hosts(["allowed", "evil"]) as served, loopback_host("loop") as loop:
        yield {**served, "loop": loop}


@pytest.fixture(scope="module")
def names(hosts: dict[str, ServedHost]) -> NameTable:
    """The test names pointed at the hosts."""
    return NameTable(
        {
            "allowed.test": [hosts["allowed"].address],
            "example.com": [hosts["allowed"].address],
            "evil.test": [hosts["evil"].address],
            "notexample.com": [hosts["evil"].address],
            "api.example.com": ["127.0.0.1"],
        }
    )


#: ``SYNC_TEST_SPARE_CHILD=1`` runs these guests through spare children (``workers.spare``; see conftest.py).
SPARE_CHILD = os.environ.get("SYNC_TEST_SPARE_CHILD", "") == "1"
#: ``SYNC_TEST_ZYGOTE=1``: through the sandbox zygote (``workers.zygote``).
ZYGOTE = os.environ.get("SYNC_TEST_ZYGOTE", "") == "1"


def make_runtime(cache: Path, names: NameTable | None = None, **settings: object) -> GuestRuntime:
    """A runtime with its own cache directory and the given settings (strict unless told otherwise)."""
    # The namespace hosts are private: the operator's setting opens their block (never loopback here).
    values = {"cache_dir": cache, "sandbox": "strict", "egress_allow_private": "10.231.0.0/16:*"}
    values |= {"sandbox_spare_child": SPARE_CHILD, "sandbox_zygote": ZYGOTE, **settings}
    runtime_settings = Settings.from_env(values, env={})
    return GuestRuntime(runtime_settings) if names is None else GuestRuntime(runtime_settings, resolver=names)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, names: NameTable) -> GuestRuntime:
    """The strict-mode runtime shared by the module."""
    return make_runtime(tmp_path_factory.mktemp("hostile-cache"), names)


@pytest.fixture(autouse=True)
def fresh_hosts(hosts: dict[str, ServedHost], names: NameTable) -> None:
    """Each case starts with empty server logs, no routes and no recorded lookups."""
    for host in hosts.values():
        host.reset()
    names.calls.clear()


def child_pids() -> set[int]:
    """Processes (running or zombie) whose parent is this process, from /proc, except the spare children
    runtimes hold for their next job (``workers.spare``) and their zygotes (``workers.zygote``)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        if int(stat.rpartition(")")[2].split()[1]) == me:
            found.add(int(entry.name))
    return found - spare_pids() - zygote_pids()


def proc_status(field: str) -> str:
    """A field of /proc/self/status."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return line.split()[1]


@dataclass
class Parent:
    """The pytest process's state before a case, to compare with afterwards."""

    children: set[int]
    netns: str
    max_rss_kib: int

    def assert_unharmed(self) -> None:
        """The parent is not confined, can still use files and the network, has no leftover children, and its
        peak memory did not grow by more than ``PARENT_RSS_GROWTH_KIB``."""
        assert (proc_status("NoNewPrivs"), proc_status("Seccomp")) == ("0", "0")
        assert os.readlink("/proc/self/ns/net") == self.netns
        assert Path("/etc/passwd").read_bytes()
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        assert child_pids() == self.children
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.max_rss_kib
        assert grown < PARENT_RSS_GROWTH_KIB
        assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < CHILD_RSS_KIB


@pytest.fixture
def parent() -> Parent:
    """The parent's state at the start of the case."""
    return Parent(
        children=child_pids(),
        netns=os.readlink("/proc/self/ns/net"),
        max_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )


def refresh(
    runtime: GuestRuntime,
    tmp_path: Path,
    wasm: bytes,
    *,
    timeout: int = 10,
    allow_hosts: tuple[str, ...] = (),
) -> tuple[RefreshOutcome, Path]:
    """Build an archive with payload ``hello`` and this guest and refresh it once, within a generous bound."""
    path = tmp_path / "hostile.txt.sync"
    make_archive(path, b"hello", manifest=make_manifest(timeout=timeout, allow_hosts=allow_hosts), wasm=wasm)
    started = time.monotonic()
    outcome = run_refresh(path, runtime)
    assert time.monotonic() - started < STOPPED_WITHIN_S
    return outcome, path


def assert_archive_unchanged(path: Path) -> None:
    """The archive opens and still has generation 0 and payload ``hello``."""
    with open_archive(path) as snap:
        assert (snap.generation, snap.read_payload()) == (0, b"hello")


def assert_contained(outcome: RefreshOutcome, path: Path, parent: Parent, status: str, *codes: str) -> None:
    """The refresh ended with ``status`` and one of ``codes`` (none for success), the archive is unchanged and
    the parent unharmed."""
    assert outcome.status == status, (outcome.error_code, outcome.error)
    assert outcome.error_code in (codes or (None,)), outcome.error
    assert_archive_unchanged(path)
    parent.assert_unharmed()


def assert_expected(
    outcome: RefreshOutcome, path: Path, parent: Parent, checks: list[tuple[str, int]]
) -> None:
    """An ``expect`` guest saw every expected value (else it committed what it saw), and was contained."""
    if outcome.status == COMMITTED:
        with open_archive(path) as snap:
            seen, _ = results(snap.read_payload(), len(checks))
        pytest.fail(f"the guest saw {seen}, expected {[value for _, value in checks]}")
    assert_contained(outcome, path, parent, UNCHANGED)


# Runaway and trapping guests


@dataclass(frozen=True)
class Runaway:
    """A guest that must be stopped: its module text, budget, and the error it must end with.

    Attributes:
        wat: Module fields after the host imports.
        codes: Acceptable error codes.
        error: Text the error must contain.
        timeout: The manifest's ``policy.timeout``.
    """

    wat: str
    codes: tuple[str, ...]
    error: str
    timeout: int = 10


STOPPED = ("guest_out_of_fuel", "guest_timeout")
TABLE = "(type $t (func)) (table 1 funcref)"
RUNAWAYS = [
    pytest.param(Runaway('(func (export "run") (loop (br 0)))', STOPPED, "", timeout=1), id="infinite-loop"),
    pytest.param(
        Runaway('(func $spin (loop (br 0))) (start $spin) (func (export "run"))', STOPPED, "", timeout=1),
        id="infinite-loop-in-start-function",
    ),
    pytest.param(
        Runaway('(func $f (export "run") (call $f))', ("guest_trap",), "STACK_OVERFLOW"), id="deep-recursion"
    ),
    pytest.param(
        Runaway(
            "(func $f (param i64 i64 i64 i64) (local v128 v128 v128 v128)"
            " (call $f (local.get 0) (local.get 1) (local.get 2) (local.get 3)))"
            ' (func (export "run") (call $f (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4)))',
            ("guest_trap",),
            "STACK_OVERFLOW",
        ),
        id="deep-recursion-with-big-frames",
    ),
    pytest.param(
        Runaway('(func (export "run") unreachable)', ("guest_trap",), "UNREACHABLE"), id="unreachable"
    ),
    pytest.param(
        Runaway(
            '(func (export "run") (drop (i32.div_s (i32.const 1) (i32.const 0))))',
            ("guest_trap",),
            "INTEGER_DIVISION_BY_ZERO",
        ),
        id="division-by-zero",
    ),
    pytest.param(
        Runaway(
            '(memory 1) (func (export "run") (drop (i32.load (i32.const 0x7ffffff0))))',
            ("guest_trap",),
            "MEMORY_OUT_OF_BOUNDS",
        ),
        id="load-far-out-of-bounds",
    ),
    pytest.param(
        Runaway(
            '(memory 1 1) (func (export "run") (i32.store (i32.const 0x10000) (i32.const 1)))',
            ("guest_trap",),
            "MEMORY_OUT_OF_BOUNDS",
        ),
        id="store-into-guard-region",
    ),
    pytest.param(
        Runaway(
            f'{TABLE} (func (export "run") (call_indirect (type $t) (i32.const 5)))',
            ("guest_trap",),
            "TABLE_OUT_OF_BOUNDS",
        ),
        id="indirect-call-out-of-table",
    ),
    pytest.param(
        Runaway(
            f'{TABLE} (func (export "run") (call_indirect (type $t) (i32.const 0)))',
            ("guest_trap",),
            "INDIRECT_CALL_TO_NULL",
        ),
        id="indirect-call-to-null",
    ),
    pytest.param(
        Runaway(
            f'(memory {LIMITS.memory_bytes // PAGE + 1}) (func (export "run"))', ("guest_trap",), "memory"
        ),
        id="initial-memory-over-limit",
    ),
    pytest.param(
        Runaway(
            f'(table {LIMITS.table_elements + 1} funcref) (func (export "run"))', ("guest_trap",), "table"
        ),
        id="table-over-limit",
    ),
    pytest.param(
        Runaway('(memory 1) (memory 1) (memory 1) (func (export "run"))', ("guest_trap",), "memory count"),
        id="too-many-memories",
    ),
]


@pytest.mark.parametrize("case", RUNAWAYS)
def test_runaway_guest_is_stopped(
    runtime: GuestRuntime, tmp_path: Path, parent: Parent, case: Runaway
) -> None:
    """A looping, recursing, trapping or oversized guest ends failed with its stable error code, contained."""
    outcome, path = refresh(runtime, tmp_path, guests.module(case.wat, memory=""), timeout=case.timeout)
    assert_contained(outcome, path, parent, FAILED, *case.codes)
    assert case.error in (outcome.error or "")


@pytest.mark.parametrize(
    ("imports", "named"),
    [
        (
            '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
            "fd_write",
        ),
        ('(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))', "proc_exit"),
        (
            '(import "wasi_snapshot_preview1" "path_open"'
            " (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))",
            "path_open",
        ),
        (
            '(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))',
            "sock_accept",
        ),
        ('(import "env" "abort" (func))', "env::abort"),
        ('(import "host" "exec" (func (param i32 i32) (result i32)))', "host::exec"),
        ('(import "host" "payload_size" (func (param i32) (result i32)))', "host::payload_size"),
        ('(import "host" "payload_size" (memory 1))', "host::payload_size"),
        ('(import "host" "memory" (memory 1))', "host::memory"),
    ],
    ids=[
        "wasi-fd_write",
        "wasi-proc_exit",
        "wasi-path_open",
        "wasi-sock_accept",
        "other-module",
        "unknown-host-function",
        "host-function-wrong-signature",
        "host-function-as-memory",
        "host-memory",
    ],
)
def test_foreign_imports_fail_instantiation(
    runtime: GuestRuntime, tmp_path: Path, parent: Parent, imports: str, named: str
) -> None:
    """Any import other than the six host functions with their own types fails as guest_trap naming it."""
    wasm = guests.module('(func (export "run"))', imports=imports, memory="")
    outcome, path = refresh(runtime, tmp_path, wasm)
    assert_contained(outcome, path, parent, FAILED, "guest_trap")
    assert named in (outcome.error or "")


def test_memory_grows_only_to_the_limit(runtime: GuestRuntime, tmp_path: Path, parent: Parent) -> None:
    """memory.grow returns -1 at the store limit (256 MiB), the guest touches every page it got and
    finishes, and only the child's memory was used."""
    pages = LIMITS.memory_bytes // PAGE
    wasm = guests.module(
        f"""(func (export "run")
    (if (i32.ne (memory.grow (i32.const 65536)) (i32.const -1)) (then unreachable))
    (block $full (loop $more
      (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    (if (i32.ne (memory.size) (i32.const {pages})) (then unreachable))
    (memory.fill (i32.const 0) (i32.const 0x5a) (i32.const {LIMITS.memory_bytes})))""",
        memory='(memory (export "memory") 0)',
    )
    outcome, path = refresh(runtime, tmp_path, wasm)
    assert_contained(outcome, path, parent, UNCHANGED)


# Bad arguments to every host function

S, URL = STRINGS, b"http://allowed.test/"
#: Where the method, a non-UTF-8 URL and a non-UTF-8 method are placed.
METHOD, BAD_URL, BAD_METHOD = S + 0x80, S + 0x100, S + 0x180
BAD_ARGUMENTS = [
    ("payload_read-negative-offset", call("payload_read", -1, 5, 0), -1),
    ("payload_read-negative-length", call("payload_read", 0, -1, 0), -1),
    ("payload_read-negative-out-ptr", call("payload_read", 0, 5, -1), -1),
    ("payload_read-i32-min-out-ptr", call("payload_read", 0, 5, 0x80000000), -1),
    ("payload_read-out-ptr-beyond-memory", call("payload_read", 0, 5, PAGE), -1),
    ("payload_read-out-ptr-straddles-end", call("payload_read", 0, 5, PAGE - 4), -1),
    ("payload_read-out-ptr-i32-max", call("payload_read", 0, 5, 0x7FFFFFFF), -1),
    ("payload_write-negative-offset", call("payload_write", -1, 1, 0), -1),
    ("payload_write-i32-min-offset", call("payload_write", 0x80000000, 1, 0), -1),
    ("payload_write-negative-length", call("payload_write", 0, -1, 0), -1),
    ("payload_write-negative-data-ptr", call("payload_write", 0, 1, -1), -1),
    ("payload_write-data-beyond-memory", call("payload_write", 0, 1, PAGE), -1),
    ("payload_write-data-straddles-end", call("payload_write", 0, 2, PAGE - 1), -1),
    ("payload_write-length-i32-max", call("payload_write", 0, 0x7FFFFFFF, 0), -1),
    ("payload_write-offset-i32-max", call("payload_write", 0x7FFFFFFF, 1, 0), -1),
    ("http_request-negative-url-ptr", call("http_request", -1, len(URL), METHOD, 3), -1),
    ("http_request-negative-url-len", call("http_request", S, -1, METHOD, 3), -1),
    ("http_request-negative-method-ptr", call("http_request", S, len(URL), -1, 3), -1),
    ("http_request-negative-method-len", call("http_request", S, len(URL), METHOD, -1), -1),
    ("http_request-url-beyond-memory", call("http_request", PAGE, 1, METHOD, 3), -1),
    ("http_request-url-straddles-end", call("http_request", PAGE - 2, len(URL), METHOD, 3), -1),
    ("http_request-url-len-i32-max", call("http_request", S, 0x7FFFFFFF, METHOD, 3), -1),
    ("http_request-method-beyond-memory", call("http_request", S, len(URL), PAGE, 3), -1),
    ("http_request-url-not-utf8", call("http_request", BAD_URL, 9, METHOD, 3), -1),
    ("http_request-method-not-utf8", call("http_request", S, len(URL), BAD_METHOD, 2), -1),
    ("last_response_read-negative-out-ptr", call("last_response_read", -1, 1), -1),
    ("last_response_read-negative-max-len", call("last_response_read", 0, -1), -1),
    ("last_response_read-beyond-memory", call("last_response_read", PAGE + 1, 10), -1),
    ("last_response_read-i32-max", call("last_response_read", 0x7FFFFFFF, 0x7FFFFFFF), -1),
    # Nothing to copy at the very end of memory is not an error (and must not crash the host).
    ("last_response_read-empty-at-end", call("last_response_read", PAGE, 10), 0),
]
BAD_ARGUMENT_DATA = {S: URL, METHOD: b"GET", BAD_URL: b"http://\xff/", BAD_METHOD: b"\xff\xfe"}


@pytest.mark.parametrize(("expr", "expected"), [pytest.param(e, v, id=i) for i, e, v in BAD_ARGUMENTS])
def test_bad_arguments_return_an_error_code(
    runtime: GuestRuntime,
    names: NameTable,
    hosts: dict[str, ServedHost],
    tmp_path: Path,
    parent: Parent,
    expr: str,
    expected: int,
) -> None:
    """Negative, out-of-bounds and non-UTF-8 arguments to every host function return -1 (never a crash, never
    a request), and the guest carries on."""
    checks = [(expr, expected), (call("payload_size"), 5)]
    outcome, path = refresh(
        runtime, tmp_path, guests.expect(checks, data=BAD_ARGUMENT_DATA), allow_hosts=("allowed.test",)
    )
    assert_expected(outcome, path, parent, checks)
    assert outcome.requests == 0
    assert names.calls == []
    assert hosts["allowed"].events() == []


# Bad arguments to every version-2 host function (the archive has a 2-byte context.json: ``{}``)

HEADERS, BODY_AT, NAME = S + 0x200, S + 0x280, S + 0x300
V2_BAD_ARGUMENTS = [
    ("context_read-negative-offset", call("context_read", -1, 2, 0), -1),
    ("context_read-negative-length", call("context_read", 0, -1, 0), -1),
    ("context_read-negative-out-ptr", call("context_read", 0, 2, -1), -1),
    ("context_read-out-ptr-beyond-memory", call("context_read", 0, 2, PAGE), -1),
    ("context_read-out-ptr-straddles-end", call("context_read", 0, 2, PAGE - 1), -1),
    ("context_read-length-i32-max", call("context_read", 0, 0x7FFFFFFF, 0x7FFFFFFF), -1),
    ("context_read-offset-past-end", call("context_read", 10, 2, 0), 0),
    ("http_send-negative-url-ptr", call("http_send", -1, len(URL), METHOD, 3, HEADERS, 0, BODY_AT, 0), -1),
    ("http_send-url-beyond-memory", call("http_send", PAGE, 4, METHOD, 3, HEADERS, 0, BODY_AT, 0), -1),
    ("http_send-url-not-utf8", call("http_send", BAD_URL, 9, METHOD, 3, HEADERS, 0, BODY_AT, 0), -1),
    ("http_send-method-not-utf8", call("http_send", S, len(URL), BAD_METHOD, 2, HEADERS, 0, BODY_AT, 0), -1),
    (
        "http_send-negative-headers-len",
        call("http_send", S, len(URL), METHOD, 3, HEADERS, -1, BODY_AT, 0),
        -1,
    ),
    ("http_send-negative-body-len", call("http_send", S, len(URL), METHOD, 3, HEADERS, 0, BODY_AT, -1), -1),
    (
        "http_send-headers-beyond-memory",
        call("http_send", S, len(URL), METHOD, 3, PAGE - 4, 8, BODY_AT, 0),
        -1,
    ),
    ("http_send-body-beyond-memory", call("http_send", S, len(URL), METHOD, 3, HEADERS, 0, PAGE - 4, 8), -1),
    # Over the caps: refused before anything is read or allocated.
    ("http_send-headers-len-i32-max", call("http_send", S, len(URL), METHOD, 3, 0, 0x7FFFFFFF, 0, 0), -3),
    ("http_send-body-len-i32-max", call("http_send", S, len(URL), METHOD, 3, 0, 0, 0, 0x7FFFFFFF), -3),
    ("last_response_read_at-negative-offset", call("last_response_read_at", -1, 1, 0), -1),
    ("last_response_read_at-negative-out-ptr", call("last_response_read_at", 0, 1, -1), -1),
    ("last_response_read_at-beyond-memory", call("last_response_read_at", 0, 1, PAGE + 1), -1),
    ("last_response_header-negative-max-len", call("last_response_header", NAME, 4, 0, -1), -1),
    ("last_response_header-negative-out-ptr", call("last_response_header", NAME, 4, -1, 4), -1),
    ("last_response_header-name-beyond-memory", call("last_response_header", PAGE - 1, 4, 0, 4), -1),
    ("last_response_header-name-huge", call("last_response_header", NAME, 0x7FFFFFFF, 0, 4), -1),
    ("last_response_header-absent", call("last_response_header", NAME, 4, 0, 4), -3),
    ("last_response_headers_read-negative", call("last_response_headers_read", 0, -1, 0), -1),
    ("last_response_headers_read-beyond-memory", call("last_response_headers_read", 0, 1, PAGE + 1), -1),
    ("log-negative-ptr", call("log", -1, 4), -1),
    ("log-negative-len", call("log", S, -1), -1),
    ("log-beyond-memory", call("log", PAGE - 2, 4), -1),
    ("log-len-i32-max", call("log", S, 0x7FFFFFFF), -1),
    ("unchanged-twice-is-fine", call("unchanged"), 0),
]


@pytest.mark.parametrize(("expr", "expected"), [pytest.param(e, v, id=i) for i, e, v in V2_BAD_ARGUMENTS])
def test_v2_bad_arguments_return_an_error_code(
    runtime: GuestRuntime,
    names: NameTable,
    hosts: dict[str, ServedHost],
    tmp_path: Path,
    parent: Parent,
    expr: str,
    expected: int,
) -> None:
    """Negative, out-of-bounds, oversized and non-UTF-8 arguments to every v2 host function return -1 (-3 for
    lengths over the request caps), never crash, allocate or request anything, and the guest carries on."""
    checks = [(expr, expected), (call("payload_size"), 5), (call("context_size"), 2)]
    data = {**BAD_ARGUMENT_DATA, NAME: b"etag"}
    wasm = guests.expect(checks, data=data, imports=guests.V2_IMPORTS)
    path = tmp_path / "v2.sync"
    manifest = make_manifest(allow_hosts=("allowed.test",))
    make_archive(path, b"hello", manifest=manifest, wasm=wasm, context=b"{}")
    outcome = run_refresh(path, runtime)
    assert_expected(outcome, path, parent, checks)
    assert outcome.requests == 0
    assert names.calls == []
    assert hosts["allowed"].events() == []


def test_expecting_guest_reports_what_it_saw(runtime: GuestRuntime, tmp_path: Path) -> None:
    """The checking guest used above really checks: a wrong expectation commits the values it saw."""
    checks = [(call("payload_size"), 5), (call("payload_read", -1, 1, 0), 0)]
    outcome, path = refresh(runtime, tmp_path, guests.expect(checks))
    assert outcome.status == COMMITTED
    with open_archive(path) as snap:
        assert results(snap.read_payload(), 2) == ([5, -1], b"")


def test_huge_write_offsets_allocate_nothing(runtime: GuestRuntime, tmp_path: Path, parent: Parent) -> None:
    """Writes ending past the payload cap return -1 without allocating: neither the parent's nor any child's
    peak memory grows by gigabytes."""
    cap = LIMITS.max_payload_size
    checks = [
        (call("payload_write", 0x7FFFFFFF, 1, 0), -1),
        (call("payload_write", 0x7FFFFFF0, 16, 0), -1),
        (call("payload_write", cap, 1, 0), -1),
        (call("payload_write", cap - 1, 2, 0), -1),
    ]
    outcome, path = refresh(runtime, tmp_path, guests.expect(checks))
    assert_expected(outcome, path, parent, checks)


def test_new_payload_over_the_setting_is_refused(tmp_path: Path, parent: Parent) -> None:
    """With ``max_payload_size`` lowered in Settings, writes up to it succeed and any byte beyond gets -1."""
    runtime = make_runtime(tmp_path / "cache", max_payload_size=1024)
    wasm = record(
        call("payload_write", 0, 1024, 0),
        call("payload_write", 1024, 1, 0),
        call("payload_write", 0, 1025, 0),
        call("payload_write", 1023, 2, 0),
    )
    outcome, path = refresh(runtime, tmp_path, wasm)
    assert (outcome.status, outcome.payload_size) == (COMMITTED, 1024)
    with open_archive(path) as snap:
        values, rest = results(snap.read_payload(), 4)
    assert values == [1024, -1, -1, -1]
    assert len(rest) == 1024 - 16
    parent.assert_unharmed()


# Guest HTTP


@pytest.mark.parametrize(
    ("url", "allow_hosts", "reaches_allowed"),
    [
        pytest.param("http://evil.test/", ("allowed.test",), False, id="not-listed"),
        pytest.param("http://notexample.com/", ("example.com",), False, id="suffix-of-listed-name"),
        pytest.param("http://allowed.test:80@evil.test/", ("allowed.test",), False, id="userinfo"),
        pytest.param("http://allowed.test/go", ("allowed.test",), True, id="redirect-to-not-listed"),
        pytest.param(
            "http://api.example.com:{loop}/", ("*.example.com",), False, id="wildcard-name-on-loopback"
        ),
        pytest.param("http://127.0.0.1:{loop}/", ("*.example.com",), False, id="loopback-literal"),
        pytest.param("http://EVIL.test./", ("allowed.test",), False, id="case-and-trailing-dot"),
    ],
)
def test_refused_destination_sees_nothing(
    runtime: GuestRuntime,
    hosts: dict[str, ServedHost],
    tmp_path: Path,
    parent: Parent,
    url: str,
    allow_hosts: tuple[str, ...],
    reaches_allowed: bool,
) -> None:
    """A URL whose destination is not allowed, directly or after a redirect, gives the guest -2 and no body,
    and the refused server is never contacted."""
    hosts["allowed"].serve({"/go": Route.redirect("http://evil.test/loot")})
    hosts["evil"].serve({"/": Route.fixed(b"evil"), "/loot": Route.fixed(b"loot")})
    hosts["loop"].serve({"/": Route.fixed(b"local")})
    request, data = guests.http_request(url.format(loop=hosts["loop"].port))
    checks = [(request, -2), (call("last_response_size"), 0)]
    outcome, path = refresh(runtime, tmp_path, guests.expect(checks, data=data), allow_hosts=allow_hosts)
    assert_expected(outcome, path, parent, checks)
    assert hosts["evil"].events() == []
    assert hosts["loop"].events() == []
    assert len(hosts["allowed"].requests()) == (1 if reaches_allowed else 0)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "streamed"])
def test_response_over_the_cap(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path, parent: Parent, declare_length: bool
) -> None:
    """A body one byte over the response cap gives the guest -4 and no body, declared or streamed."""
    hosts["allowed"].serve({"/big": Route.large(LIMITS.max_response_size + 1, declare_length=declare_length)})
    request, data = guests.http_request("http://allowed.test/big")
    checks = [(request, -4), (call("last_response_size"), 0)]
    outcome, path = refresh(
        runtime, tmp_path, guests.expect(checks, data=data), allow_hosts=("allowed.test",)
    )
    assert_expected(outcome, path, parent, checks)
    assert len(hosts["allowed"].requests()) == 1


def test_request_budget(runtime: GuestRuntime, names: NameTable, tmp_path: Path, parent: Parent) -> None:
    """After ``max_requests`` calls (refused ones count) every further request returns -5."""
    request, data = guests.http_request("http://evil.test/")
    checks = [(request, -2)] * LIMITS.max_requests + [(request, -5)] * 2
    outcome, path = refresh(
        runtime, tmp_path, guests.expect(checks, data=data), allow_hosts=("allowed.test",)
    )
    assert_expected(outcome, path, parent, checks)
    assert names.calls == []


def test_guest_blocked_in_a_host_call_is_killed_at_the_deadline(
    runtime: GuestRuntime, hosts: dict[str, ServedHost], tmp_path: Path, parent: Parent
) -> None:
    """A guest waiting on a server that never answers is failed with guest_timeout at its 1 s deadline, and
    its child is gone (no process or zombie left)."""
    hosts["allowed"].serve({"/hang": Route.hang()})
    request, data = guests.http_request("http://allowed.test/hang")
    wasm = guests.module(f'(func (export "run") (loop (drop {request}) (br 0)))', data=data)
    outcome, path = refresh(runtime, tmp_path, wasm, timeout=1, allow_hosts=("allowed.test",))
    assert_contained(outcome, path, parent, FAILED, "guest_timeout")
    assert len(hosts["allowed"].requests()) == 1


# Strict and permissive modes


RAN = guests.module(
    f'(func (export "run") (drop {call("payload_write", 0, 3, STRINGS)}))', data={STRINGS: b"RAN"}
)


def layers(outcome: RefreshOutcome) -> dict[str, dict[str, object]]:
    """The sandbox report's layers by name."""
    assert outcome.sandbox is not None
    return {item["layer"]: item for item in outcome.sandbox["layers"]}


def test_normal_run_reports_every_layer(runtime: GuestRuntime, tmp_path: Path, parent: Parent) -> None:
    """A normal run's sandbox report lists all five layers active, with Landlock ABI 7."""
    outcome, _ = refresh(runtime, tmp_path, RAN)
    assert outcome.status == COMMITTED
    assert outcome.sandbox is not None
    assert outcome.sandbox["landlock_abi"] == EXPECTED_LANDLOCK_ABI
    assert list(layers(outcome)) == [layer.value for layer in ALL_LAYERS]
    assert all(item["active"] for item in layers(outcome).values())
    parent.assert_unharmed()


def test_strict_mode_refuses_without_seccomp(tmp_path: Path, parent: Parent) -> None:
    """In strict mode a missing layer (no seccomp program) fails the job as sandbox_unavailable naming it,
    before the guest runs."""
    runtime = make_runtime(tmp_path / "cache")
    runtime.seccomp_program = None
    outcome, path = refresh(runtime, tmp_path, RAN)
    assert_contained(outcome, path, parent, FAILED, "sandbox_unavailable")
    error = outcome.error or ""
    assert error.startswith("seccomp: ")
    assert error.count("seccomp") == 1, error
    assert outcome.entry is None
    assert layers(outcome)["seccomp"]["active"] is False


def test_permissive_mode_runs_without_seccomp_and_says_so(tmp_path: Path, parent: Parent) -> None:
    """In permissive mode the same job runs, and its report shows seccomp inactive with the reason."""
    runtime = make_runtime(tmp_path / "cache", sandbox="permissive")
    runtime.seccomp_program = None
    outcome, path = refresh(runtime, tmp_path, RAN)
    assert (outcome.status, outcome.entry) == (COMMITTED, "run")
    with open_archive(path) as snap:
        assert snap.read_payload() == b"RAN"
    report = layers(outcome)
    assert report["seccomp"]["active"] is False
    assert "no filter program" in str(report["seccomp"]["reason"])
    assert [name for name, item in report.items() if item["active"]] == [
        layer.value for layer in ALL_LAYERS[:-1]
    ]
    parent.assert_unharmed()


#: What a guest's names tried to slip into the worker log: a forged success line, and a concealing escape.
FORGED = b"x\nINFO/ForkPoolWorker-1] refresh done status=committed\x1b[8m\xe2\x80\xae"


@pytest.mark.parametrize(
    ("label", "functions", "code"),
    [
        ("unreachable", ['(func (export "run") (call $evil))', "(func $evil unreachable)"], "UNREACHABLE"),
        (
            "div-zero",
            [
                '(func (export "run") (call $evil))',
                "(func $evil (drop (i32.div_u (i32.const 1) (i32.const 0))))",
            ],
            "INTEGER_DIVISION_BY_ZERO",
        ),
        ("stack", ['(func (export "run") (call $evil))', "(func $evil (call $evil))"], "STACK_OVERFLOW"),
        ("start", ['(func (export "run"))', "(func $evil unreachable)", "(start $evil)"], "UNREACHABLE"),
    ],
)
def test_guest_names_never_reach_errors_or_logs(
    runtime: GuestRuntime,
    tmp_path: Path,
    parent: Parent,
    caplog: pytest.LogCaptureFixture,
    label: str,
    functions: list[str],
    code: str,
) -> None:
    """A trapping guest whose name section carries a forged log line and escape sequences fails with
    wasmtime's trap code; no name reaches the error, the status document or a log line (finding 5)."""
    wasm = guests.with_name_section(guests.module(*functions), FORGED, functions=8)
    with caplog.at_level(logging.INFO):
        outcome, path = refresh(runtime, tmp_path, wasm)
    assert_contained(outcome, path, parent, FAILED, "guest_trap")
    assert outcome.error is not None
    assert outcome.error.endswith(code)
    assert "refresh done status=committed" not in outcome.error
    assert "refresh done status=committed" not in json.dumps(outcome.to_json())
    for logged in caplog.records:
        message = logged.getMessage()
        assert not set(message) & {"\n", "\x1b", "\u202e"}, message
        assert "status=committed" not in message


def test_guest_import_names_are_escaped(
    runtime: GuestRuntime, tmp_path: Path, parent: Parent, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown import whose module and field names hold a newline, a forged log line and ESC fails with
    those names escaped and bounded in the error and in every log line."""
    field = FORGED.decode()
    imports = f'(import "host\\1b[2J" {guests.wat_string(FORGED)} (func))'
    wasm = guests.module('(func (export "run"))', imports=imports)
    with caplog.at_level(logging.INFO):
        outcome, path = refresh(runtime, tmp_path, wasm)
    assert_contained(outcome, path, parent, FAILED, "guest_trap")
    assert outcome.error is not None
    assert not set(outcome.error) & {"\n", "\x1b", "\u202e"}
    assert "unknown import host\\x1b[2J::x\\x0aINFO/ForkPoolWorker-1]" in outcome.error
    assert field not in outcome.error
    for logged in caplog.records:
        assert not set(logged.getMessage()) & {"\n", "\x1b", "\u202e"}


def duplicate_exports(name: bytes) -> bytes:
    """A module exporting one function twice under ``name``: wasmtime's validation error quotes the name."""
    leb, section = guests.leb, guests.section
    export = leb(len(name)) + name + b"\x00" + leb(0)
    return (
        WASM_HEADER
        + section(1, leb(1) + b"\x60\x00\x00")
        + section(3, leb(1) + leb(0))
        + section(7, leb(2) + export * 2)
        + section(10, leb(1) + leb(2) + b"\x00\x0b")
    )


def test_compile_errors_quoting_guest_names_are_escaped_and_bounded(
    runtime: GuestRuntime, tmp_path: Path, parent: Parent, caplog: pytest.LogCaptureFixture
) -> None:
    """A module whose export names hold a forged log line, ESC and a bidi control fails validation with
    wasmtime quoting those names: the refresh error and every log line hold them escaped, and a long name
    is cut."""
    with caplog.at_level(logging.INFO):
        outcome, path = refresh(runtime, tmp_path, duplicate_exports(FORGED + b"n" * 2000))
    assert_contained(outcome, path, parent, FAILED, "guest_trap")
    assert outcome.error is not None
    assert outcome.error.startswith("invalid module")
    assert "x\\x0aINFO/ForkPoolWorker-1] refresh done status=committed\\x1b[8m\\u202e" in outcome.error
    assert not set(outcome.error) & {"\n", "\x1b", "\u202e"}
    assert len(outcome.error) <= 500
    for logged in caplog.records:
        assert not set(logged.getMessage()) & {"\n", "\x1b", "\u202e"}


def slow_to_compile(functions: int = 4000) -> bytes:
    """A valid guest with ``functions`` small exported functions: about a second of compiling for 4000."""
    body = "".join(
        f'(func (export "f{i}") (param i32) (result i32) (i32.add (i32.mul (local.get 0) (i32.const {i})) '
        "(i32.const 7)))"
        for i in range(functions)
    )
    return guests.module('(func (export "run"))', body)


def test_a_module_over_the_size_limit_is_refused_before_compiling(
    tmp_path: Path, names: NameTable, parent: Parent
) -> None:
    """A ``sync.wasm`` over ``max_module_size`` fails with ``module_too_large`` and is never compiled
    (finding 8: compiling happened in the parent, before any budget)."""
    runtime = make_runtime(tmp_path / "cache", names, max_module_size=10_000)
    wasm = slow_to_compile(600)
    assert len(wasm) > 10_000
    outcome, path = refresh(runtime, tmp_path, wasm)
    assert_contained(outcome, path, parent, FAILED, "module_too_large")
    assert "10000" in (outcome.error or "")
    assert list((tmp_path / "cache" / "modules").glob("*.cwasm")) == []


def test_a_module_slow_to_compile_is_stopped_at_the_compile_timeout(
    tmp_path: Path, names: NameTable, parent: Parent
) -> None:
    """A module whose compilation outlasts ``compile_timeout`` is stopped (the compiler runs in a forked
    child that is killed) and fails with ``compile_timeout``; nothing is cached and no child is left."""
    runtime = make_runtime(tmp_path / "cache", names, compile_timeout=0.2)
    outcome, path = refresh(runtime, tmp_path, slow_to_compile())
    assert_contained(outcome, path, parent, FAILED, "compile_timeout")
    assert list((tmp_path / "cache" / "modules").glob("*.cwasm")) == []


def test_an_invalid_module_still_reports_why(tmp_path: Path, names: NameTable, parent: Parent) -> None:
    """Compiling in a child keeps the validation error of a broken module."""
    runtime = make_runtime(tmp_path / "cache", names)
    outcome, path = refresh(runtime, tmp_path, b"\x00asm\x01\x00\x00\x00\x01\xff")
    assert_contained(outcome, path, parent, FAILED, "guest_trap")
    assert (outcome.error or "").startswith("invalid module")
