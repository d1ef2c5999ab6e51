"""The guest ABI (spec §7, TV-12) through ``run_refresh`` on real archives, each guest in its confined child.

Guests are WAT programs from ``guests``: most record what each host call returned as little-endian i32s in
their new payload, which the test reads back from the committed archive. HTTP goes to one server on
127.0.0.1, reached as ``loop.test`` (listed exactly, which unlocks a loopback address) or, refused, as
``evil.test``; the name table and the server's log show whether anything was looked up or contacted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import guests
import pytest
import wasmtime
from guests import PAGE, NameTable, call, i32s, record, result, results
from netns_hosts import Route, ServedHost, loopback_host

from sync_format.builder import EMPTY_WASM
from sync_format.reader import open_archive
from sync_format.testing import make_archive, make_manifest
from workers.egress import HttpResult
from workers.refresh import (
    COMMITTED,
    FAILED,
    NO_UPDATE_LOGIC,
    UNCHANGED,
    RefreshOutcome,
    execute_guest,
    run_refresh,
)
from workers.runtime import GuestRuntime

#: Generous bound for a guest stopped by its 1 s budget to come back; only reached when it did not stop.
STOPPED_WITHIN_S = 30.0
#: A body that is not UTF-8 and has NUL bytes, so any decoding or truncation shows.
BODY = b"0123456789\xff\xfe\x00binary\xc3\x28"
#: Where guests in these tests put bytes read from the host.
SCRATCH = 0x2000


@pytest.fixture(scope="module")
def server() -> Iterator[ServedHost]:
    """One HTTP server on 127.0.0.1 for the module."""
    with loopback_host("abi") as host:
        yield host


@pytest.fixture(scope="module")
def names() -> NameTable:
    """``loop.test`` and ``evil.test`` both resolve to 127.0.0.1."""
    return NameTable({"loop.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})


@pytest.fixture(scope="module")
def runtime(
    tmp_path_factory: pytest.TempPathFactory, names: NameTable, make_runtime: Callable[..., GuestRuntime]
) -> GuestRuntime:
    """A strict-mode runtime shared by the module, resolving through ``names``."""
    # The server is on loopback: the operator's setting opens it, as it must since issue 11.
    return make_runtime(tmp_path_factory.mktemp("abi-cache"), names, egress_allow_private="127.0.0.1:*")


@pytest.fixture(autouse=True)
def quiet_network(server: ServedHost, names: NameTable) -> None:
    """Each test starts with an empty server log, ``/body`` and ``/missing`` served, and no lookups."""
    server.reset()
    server.serve({"/body": Route.fixed(BODY), "/missing": Route.fixed(b"gone", status=404)})
    names.calls.clear()


def refresh(
    runtime: GuestRuntime,
    tmp_path: Path,
    wasm: bytes,
    *,
    timeout: int = 10,
    allow_hosts: tuple[str, ...] = (),
) -> tuple[RefreshOutcome, Path]:
    """Build an archive with payload ``hello`` and this guest, refresh it once; the outcome and the path."""
    path = tmp_path / "guest.txt.sync"
    make_archive(path, b"hello", manifest=make_manifest(timeout=timeout, allow_hosts=allow_hosts), wasm=wasm)
    return run_refresh(path, runtime), path


def current(path: Path) -> tuple[int, bytes]:
    """The archive's generation and payload, read through a fresh open."""
    with open_archive(path) as snap:
        return snap.generation, snap.read_payload()


def committed_payload(outcome: RefreshOutcome, path: Path) -> bytes:
    """Assert the refresh committed generation 1 and return the new payload."""
    assert (outcome.status, outcome.error_code) == (COMMITTED, None), outcome.error
    generation, payload = current(path)
    assert generation == outcome.generation == 1
    return payload


def url(server: ServedHost, name: str, path: str) -> str:
    """A URL on the loopback server under ``name``."""
    return server.url(path, host=name)


# TV-12 Guest ABI


@dataclass(frozen=True)
class Vector:
    """One TV-12 case: the guest (built from the server's port), what the refresh must report, and the
    resulting payload (the original ``hello`` when nothing may be committed).

    Attributes:
        wasm: Builds the guest, given the loopback server's port.
        status: Expected ``RefreshOutcome.status``.
        payload: Expected payload afterwards.
        error_codes: Acceptable error codes (empty: no error).
        error: Text the error must contain.
        timeout: The manifest's ``policy.timeout``.
        allow_hosts: The manifest's allow-list.
    """

    wasm: Callable[[int], bytes]
    status: str
    payload: bytes = b"hello"
    error_codes: frozenset[str] = frozenset()
    error: str = ""
    timeout: int = 10
    allow_hosts: tuple[str, ...] = ()


def _write_x_at_2(_: int) -> bytes:
    return guests.module(
        f'(func (export "run") (drop {call("payload_write", 2, 1, guests.STRINGS)}))',
        data={guests.STRINGS: b"X"},
    )


def _request_refused_host(port: int) -> bytes:
    request, data = guests.http_request(f"http://evil.test:{port}/body")
    return record(request, data=data)


WASI_FD_WRITE = '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))'

TV12 = [
    pytest.param(
        Vector(lambda _: bytes(wasmtime.wat2wasm(guests.ECHO_WAT)), COMMITTED, b"hello"), id="TV-12a"
    ),
    pytest.param(Vector(_write_x_at_2, COMMITTED, b"\x00\x00X"), id="TV-12b"),
    # Our documented difference: the empty module is "no update logic", reported cleanly without a run.
    pytest.param(Vector(lambda _: EMPTY_WASM, NO_UPDATE_LOGIC), id="TV-12c"),
    pytest.param(
        Vector(
            lambda _: guests.module(imports=""),
            FAILED,
            error_codes=frozenset({"guest_trap"}),
            error="No entry point found",
        ),
        id="TV-12c-no-entry",
    ),
    pytest.param(
        Vector(
            lambda _: guests.module(
                '(func (export "run"))',
                imports=WASI_FD_WRITE,
            ),
            FAILED,
            error_codes=frozenset({"guest_trap"}),
            error="wasi_snapshot_preview1::fd_write",
        ),
        id="TV-12d",
    ),
    pytest.param(
        Vector(_request_refused_host, COMMITTED, i32s(-2), allow_hosts=("loop.test",)),
        id="TV-12e",
    ),
    pytest.param(
        Vector(
            lambda _: guests.module('(func (export "run") (loop (br 0)))', imports=""),
            FAILED,
            error_codes=frozenset({"guest_out_of_fuel", "guest_timeout"}),
            timeout=1,
        ),
        id="TV-12f",
    ),
    pytest.param(
        Vector(lambda _: record(call("payload_write", -1, 1, 0)), COMMITTED, i32s(-1)), id="TV-12f-negative"
    ),
    pytest.param(
        Vector(lambda _: record(call("payload_write", 0x7FFFFFFF, 1, 0)), COMMITTED, i32s(-1)),
        id="TV-12f-over-cap",
    ),
]


@pytest.mark.parametrize("vector", TV12)
def test_tv12_guest_abi(
    runtime: GuestRuntime, server: ServedHost, names: NameTable, tmp_path: Path, vector: Vector
) -> None:
    """Each TV-12 guest ends with its specified status, error and payload, and none touches the network."""
    started = time.monotonic()
    outcome, path = refresh(
        runtime, tmp_path, vector.wasm(server.port), timeout=vector.timeout, allow_hosts=vector.allow_hosts
    )
    assert time.monotonic() - started < STOPPED_WITHIN_S
    assert outcome.status == vector.status, outcome.error
    assert outcome.error_code in (vector.error_codes or {None})
    assert vector.error in (outcome.error or "")
    generation, payload = current(path)
    assert payload == vector.payload
    assert generation == (1 if vector.status == COMMITTED else 0)
    if vector.status == COMMITTED:
        with open_archive(path) as snap:
            assert snap.entry_names[-2:] == ("payload", "state.json")
    assert names.calls == []
    assert server.events() == []


# payload_read


@pytest.mark.parametrize(
    ("args", "returned", "copied"),
    [
        pytest.param((0, 5, SCRATCH), 5, b"hello", id="whole"),
        pytest.param((3, 10, SCRATCH), 2, b"lo", id="partial-at-end"),
        pytest.param((1, 2, SCRATCH), 2, b"el", id="middle"),
        pytest.param((0, 0x7FFFFFFF, SCRATCH), 5, b"hello", id="huge-length-clamped"),
        pytest.param((0, 0, SCRATCH), 0, b"", id="zero-length"),
        pytest.param((0, 0, PAGE), 0, b"", id="zero-length-at-end-of-memory"),
        pytest.param((5, 10, SCRATCH), 0, b"", id="offset-at-end"),
        pytest.param((100, 1, SCRATCH), 0, b"", id="offset-past-end"),
        pytest.param((0, 5, PAGE - 5), 5, b"hello", id="out-ptr-last-bytes"),
        pytest.param((0, 5, PAGE - 4), -1, b"", id="out-ptr-straddles-end"),
        pytest.param((0, 5, PAGE), -1, b"", id="out-ptr-beyond-memory"),
        pytest.param((0, 5, 0x7FFFFFFF), -1, b"", id="out-ptr-i32-max"),
        pytest.param((-1, 5, SCRATCH), -1, b"", id="negative-offset"),
        pytest.param((0, -1, SCRATCH), -1, b"", id="negative-length"),
        pytest.param((0, 5, -1), -1, b"", id="negative-out-ptr"),
    ],
)
def test_payload_read(
    runtime: GuestRuntime, tmp_path: Path, args: tuple[int, int, int], returned: int, copied: bytes
) -> None:
    """payload_read clamps to the payload (0 at or past its end), and refuses negative values and writes
    outside memory with -1."""
    out_ptr = args[2]
    regions = [(out_ptr, result(0))] if returned > 0 else []
    outcome, path = refresh(runtime, tmp_path, record(call("payload_read", *args), regions=regions))
    values, rest = results(committed_payload(outcome, path), 1)
    assert (values, rest) == ([returned], copied)


def test_payload_read_sees_the_original_payload(runtime: GuestRuntime, tmp_path: Path) -> None:
    """payload_read returns the original payload even after the guest has written a new one."""
    wasm = guests.module(
        f"""(func (export "run")
    (drop {call("payload_write", 0, 3, guests.STRINGS)})
    (drop {call("payload_read", 0, 5, SCRATCH)})
    (drop {call("payload_write", 3, 5, SCRATCH)}))""",
        data={guests.STRINGS: b"new"},
    )
    outcome, path = refresh(runtime, tmp_path, wasm)
    assert committed_payload(outcome, path) == b"newhello"


def test_payload_size_is_the_original_length(runtime: GuestRuntime, tmp_path: Path) -> None:
    """payload_size reports the original payload's length, before and after writes."""
    outcome, path = refresh(
        runtime,
        tmp_path,
        record(call("payload_size"), call("payload_write", 100, 1, 0), call("payload_size")),
    )
    values, _ = results(committed_payload(outcome, path), 3)
    assert values == [5, 1, 5]


# payload_write


def _writes(*writes: tuple[int, bytes]) -> bytes:
    """A guest making each ``(offset, data)`` write in order, its data placed in memory first."""
    data, calls, at = {}, [], guests.STRINGS
    for offset, chunk in writes:
        data[at] = chunk
        calls.append(f"(drop {call('payload_write', offset, len(chunk), at)})")
        at += len(chunk) + 1
    return guests.module(f'(func (export "run") {" ".join(calls)})', data=data)


@pytest.mark.parametrize(
    ("writes", "payload"),
    [
        pytest.param([(2, b"X")], b"\x00\x00X", id="zero-fill-not-seeded"),
        pytest.param([(0, b"abc"), (5, b"Z"), (1, b"Q")], b"aQc\x00\x00Z", id="extend-and-overwrite"),
        pytest.param([(0, b"abcdef"), (1, b"x")], b"axcdef", id="overwrite-keeps-length"),
        pytest.param([(0, b"")], b"", id="zero-length-empties"),
    ],
)
def test_payload_write_composes_a_new_payload(
    runtime: GuestRuntime, tmp_path: Path, writes: list[tuple[int, bytes]], payload: bytes
) -> None:
    """Writes compose a separate, initially absent payload with zero fill; even a zero-length write counts."""
    outcome, path = refresh(runtime, tmp_path, _writes(*writes))
    assert committed_payload(outcome, path) == payload
    assert outcome.payload_size == len(payload)


@pytest.mark.parametrize(
    ("args", "returned"),
    [
        pytest.param((0, 1, PAGE - 1), 1, id="last-byte-of-memory"),
        pytest.param((0, 2, PAGE - 1), -1, id="data-straddles-end"),
        pytest.param((0, 1, PAGE), -1, id="data-beyond-memory"),
        pytest.param((0, 0, PAGE + 1), -1, id="empty-data-beyond-memory"),
        pytest.param((0, -1, 0), -1, id="negative-length"),
        pytest.param((0, 1, -1), -1, id="negative-data-ptr"),
    ],
)
def test_payload_write_bounds(
    runtime: GuestRuntime, tmp_path: Path, args: tuple[int, int, int], returned: int
) -> None:
    """payload_write returns the length for data inside memory and -1 for anything outside or negative."""
    outcome, path = refresh(runtime, tmp_path, record(call("payload_write", *args)))
    values, _ = results(committed_payload(outcome, path), 1)
    assert values == [returned]


# last_response_size / last_response_read


def test_last_response_semantics(runtime: GuestRuntime, server: ServedHost, tmp_path: Path) -> None:
    """Before any request the size is 0 and reads copy nothing; afterwards every read copies from offset 0,
    min(len, max_len) bytes, however often it is repeated."""
    request, data = guests.http_request(url(server, "loop.test", "/body"))
    wasm = record(
        call("last_response_size"),
        call("last_response_read", SCRATCH, 10),
        request,
        call("last_response_size"),
        call("last_response_read", SCRATCH, 3),
        call("last_response_read", SCRATCH + 100, 1000),
        call("last_response_read", SCRATCH + 200, 2),
        call("last_response_read", SCRATCH + 300, 0),
        regions=[(SCRATCH, 3), (SCRATCH + 100, result(5)), (SCRATCH + 200, 2)],
        data=data,
    )
    outcome, path = refresh(runtime, tmp_path, wasm, allow_hosts=("loop.test",))
    values, rest = results(committed_payload(outcome, path), 8)
    assert values == [0, 0, 200, len(BODY), 3, len(BODY), 2, 0]
    assert rest == BODY[:3] + BODY + BODY[:2]
    assert outcome.requests == 1
    assert [r["path"] for r in server.requests()] == ["/body"]


def test_error_status_replaces_and_refusal_keeps_last_response(
    runtime: GuestRuntime, server: ServedHost, tmp_path: Path
) -> None:
    """A 404 response replaces the last body (status returned as is); a refused request leaves it in place."""
    ok, ok_data = guests.http_request(url(server, "loop.test", "/body"), at=guests.STRINGS)
    missing, missing_data = guests.http_request(
        url(server, "loop.test", "/missing"), at=guests.STRINGS + 0x100
    )
    refused, refused_data = guests.http_request(url(server, "evil.test", "/body"), at=guests.STRINGS + 0x200)
    wasm = record(
        ok,
        call("last_response_size"),
        missing,
        call("last_response_size"),
        refused,
        call("last_response_size"),
        call("last_response_read", SCRATCH, 100),
        regions=[(SCRATCH, result(6))],
        data={**ok_data, **missing_data, **refused_data},
    )
    outcome, path = refresh(runtime, tmp_path, wasm, allow_hosts=("loop.test",))
    values, rest = results(committed_payload(outcome, path), 7)
    assert values == [200, len(BODY), 404, 4, -2, 4, 4]
    assert rest == b"gone"
    assert [r["path"] for r in server.requests()] == ["/body", "/missing"]


@pytest.mark.parametrize(
    ("args", "returned"),
    [
        pytest.param((PAGE - 3, 100), 3, id="last-bytes-of-memory"),
        pytest.param((PAGE - 2, 3), -1, id="straddles-end"),
        pytest.param((PAGE, 1), -1, id="beyond-memory"),
        pytest.param((PAGE, 0), 0, id="nothing-at-end"),
        pytest.param((PAGE + 1, 0), -1, id="nothing-beyond-end"),
        pytest.param((SCRATCH, -1), -1, id="negative-max-len"),
        pytest.param((-1, 1), -1, id="negative-out-ptr"),
    ],
)
def test_last_response_read_bounds(
    runtime: GuestRuntime, server: ServedHost, tmp_path: Path, args: tuple[int, int], returned: int
) -> None:
    """last_response_read copies only into memory: outside it, or with a negative length, it returns -1."""
    server.serve({"/abc": Route.fixed(b"abc")})
    request, data = guests.http_request(url(server, "loop.test", "/abc"))
    outcome, path = refresh(
        runtime,
        tmp_path,
        record(request, call("last_response_read", *args), data=data),
        allow_hosts=("loop.test",),
    )
    values, _ = results(committed_payload(outcome, path), 2)
    assert values == [200, returned]


# Memory export, entry points, module format


POINTER_CALLS = [
    (call("payload_read", 0, 5, 0), -1),
    (call("payload_write", 0, 1, 0), -1),
    (call("payload_write", 0, 0, 0), -1),
    (call("http_request", 0, 1, 0, 1), -1),
    (call("last_response_read", 0, 0), -1),
    (call("payload_size"), 5),
    (call("last_response_size"), 0),
]


@pytest.mark.parametrize(
    "memory",
    ["", "(memory 1)", '(memory (export "mem") 1)'],
    ids=["no-memory", "memory-not-exported", "memory-exported-under-another-name"],
)
def test_pointer_calls_fail_without_exported_memory(
    runtime: GuestRuntime, names: NameTable, tmp_path: Path, memory: str
) -> None:
    """Without an export named ``memory`` every pointer-taking call returns -1 (the others still work), so the
    guest can neither read, write nor request anything."""
    outcome, path = refresh(runtime, tmp_path, guests.expect_without_memory(POINTER_CALLS, memory=memory))
    assert (outcome.status, outcome.error) == (UNCHANGED, None)
    assert current(path) == (0, b"hello")
    assert names.calls == []


def test_memoryless_check_guest_traps_on_a_wrong_expectation(runtime: GuestRuntime, tmp_path: Path) -> None:
    """The memoryless check guest above really checks: an expectation the host does not meet traps it."""
    outcome, _ = refresh(runtime, tmp_path, guests.expect_without_memory([(call("payload_size"), 6)]))
    assert (outcome.status, outcome.error_code, outcome.error) == (
        FAILED,
        "guest_trap",
        "guest trapped: UNREACHABLE",
    )


START_WRITES = f"""(func (export "_start")
    (if (i32.ne {call("payload_write", 0, 1, guests.STRINGS)} (i32.const 1)) (then unreachable)))"""


def test_start_entry_point_discards_writes(runtime: GuestRuntime, tmp_path: Path) -> None:
    """A guest exporting only ``_start`` runs (its write returns 1) but its writes are discarded."""
    outcome, path = refresh(runtime, tmp_path, guests.module(START_WRITES, data={guests.STRINGS: b"X"}))
    assert (outcome.status, outcome.entry, outcome.error) == (UNCHANGED, "_start", None)
    assert current(path) == (0, b"hello")


@pytest.mark.parametrize(
    "run",
    [
        f'(func (export "run") (param i32) (drop {call("payload_write", 0, 1, guests.STRINGS)}))',
        f'(func (export "run") (result i32) {call("payload_write", 0, 1, guests.STRINGS)})',
        '(global (export "run") i32 (i32.const 0))',
    ],
    ids=["run-with-param", "run-with-result", "run-not-a-function"],
)
def test_run_with_another_signature_is_skipped_for_start(
    runtime: GuestRuntime, tmp_path: Path, run: str
) -> None:
    """A ``run`` export that is not ``() -> ()`` is skipped in favour of ``_start``."""
    outcome, path = refresh(runtime, tmp_path, guests.module(run, START_WRITES, data={guests.STRINGS: b"X"}))
    assert (outcome.status, outcome.entry, outcome.error) == (UNCHANGED, "_start", None)
    assert current(path) == (0, b"hello")


def test_run_with_another_signature_and_no_start_has_no_entry_point(
    runtime: GuestRuntime, tmp_path: Path
) -> None:
    """A module whose only ``run`` has the wrong signature fails with "No entry point found"."""
    outcome, path = refresh(runtime, tmp_path, guests.module('(func (export "run") (param i32))'))
    assert (outcome.status, outcome.error_code, outcome.error) == (
        FAILED,
        "guest_trap",
        "No entry point found",
    )
    assert current(path) == (0, b"hello")


def test_text_format_module_is_refused(runtime: GuestRuntime, tmp_path: Path) -> None:
    """A sync.wasm in the WebAssembly text format (the reference's engine accepts it) fails as guest_trap."""
    path = tmp_path / "text.txt.sync"
    wat = f'(module {guests.HOST_IMPORTS} (memory (export "memory") 1) (func (export "run")))'
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.toml", make_manifest().to_bytes())
        zf.writestr("sync.wasm", wat)
        zf.writestr("payload", b"hello")
    outcome = run_refresh(path, runtime)
    assert (outcome.status, outcome.error_code) == (FAILED, "guest_trap")
    assert "not a binary WebAssembly module" in (outcome.error or "")
    assert current(path) == (0, b"hello")


def test_a_redirect_the_url_parser_cannot_read_is_refused_not_raised(
    runtime: GuestRuntime, server: ServedHost, tmp_path: Path
) -> None:
    """A source redirecting to ``http://[x/`` (``urljoin`` raises on it) gives the guest -2
    ``redirect_not_allowed`` and the refresh an outcome, instead of an exception out of ``run_refresh``."""
    server.serve({"/bad-hop": Route.redirect("http://[x/")})
    outcome, path = refresh(
        runtime, tmp_path, guests.fetch(url(server, "loop.test", "/bad-hop")), allow_hosts=("loop.test",)
    )
    assert results(committed_payload(outcome, path), 3) == ([-2, 0, 0], b"")
    assert outcome.egress_errors == ("redirect_not_allowed",)


class RaisingRequester:
    """A requester breaking its promise never to raise, with a message that must not reach the log."""

    def __init__(self) -> None:
        self.failures: list[dict[str, object]] = []

    def request(self, url: str, method: str, **_: object) -> HttpResult:
        raise ValueError("server-chosen \x1b[2J text")


def test_an_exception_from_egress_is_the_guests_failed_request(
    runtime: GuestRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host-call layer's backstop: an exception from egress becomes -5 ``egress_failed`` for the guest,
    which runs on, and one error line naming the exception's class but not its text."""
    path = tmp_path / "guest.txt.sync"
    make_archive(
        path,
        b"hello",
        manifest=make_manifest(allow_hosts=("loop.test",)),
        wasm=guests.fetch("http://loop.test/"),
    )
    with open_archive(path) as snap, caplog.at_level(logging.INFO, logger="workers.supervisor"):
        outcome = execute_guest(snap, snap.read_wasm() or b"", runtime, requester=RaisingRequester())
    try:
        assert outcome.error is None
        assert outcome.new_payload is not None
        assert results(outcome.new_payload.read(), 3) == ([-5, 0, 0], b"")
        assert outcome.egress_errors == ["egress_failed"]
    finally:
        outcome.close()
    [line] = [r.getMessage() for r in caplog.records if "egress_failed" in r.getMessage()]
    assert "exception=ValueError" in line
    assert "server-chosen" not in caplog.text


def test_a_symlink_in_an_archives_place_is_never_refreshed_through(
    runtime: GuestRuntime, tmp_path: Path
) -> None:
    """A store archive's name replaced by a symlink to an archive only the worker may read (after the key was
    resolved): the job fails, the guest of that archive never runs, and neither the link nor that archive
    changes (before, its guest ran with its manifest's grants and the result, with its manifest, was
    committed into the store in the link's place)."""
    store = tmp_path / "store"
    store.mkdir()
    private = tmp_path / "private.txt.sync"
    make_archive(private, b"secret", manifest=make_manifest(), wasm=bytes(wasmtime.wat2wasm(guests.ECHO_WAT)))
    before = private.read_bytes()
    link = store / "x.txt.sync"
    link.symlink_to(private)
    outcome = run_refresh(link, runtime, store=store)
    assert (outcome.status, outcome.entry) == (FAILED, None), outcome
    assert link.is_symlink()
    assert private.read_bytes() == before


#: Run by a watcher process: for up to 8 s, look at the children of the process ``argv[1]``; once one is
#: the sandbox child (its own session: it called setsid, then isolated its descriptors; it holds the archive
#: ``argv[2]``: read-only files stay open) and the guest has had a moment to start, print its descriptors.
WATCH_CHILDREN = """
import json, os, sys, time
parent, archive = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    for task in os.listdir(f"/proc/{parent}/task"):
        for pid in map(int, open(f"/proc/{parent}/task/{task}/children").read().split()):
            try:
                if os.getsid(pid) == os.getsid(parent):
                    continue
                time.sleep(0.3)
                fds = f"/proc/{pid}/fd"
                links = [os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)]
            except OSError:
                continue
            if archive in links:
                print(json.dumps(links))
                sys.exit(0)
    time.sleep(0.02)
"""


def test_a_child_forked_from_the_worker_keeps_no_folder_of_the_job(
    make_runtime: Callable[..., GuestRuntime], tmp_path: Path
) -> None:
    """With the zygote off, the sandbox child is forked from the worker while it holds the job's folder open
    (``run_refresh(store=…)``): the child closes inherited folders with the other descriptors, so that it
    never holds the job's folder (found by an attack review)."""
    runtime = make_runtime(tmp_path / "cache", sandbox_zygote=False, sandbox_spare_child=False)
    store = tmp_path / "store"
    (store / "jobs").mkdir(parents=True)
    path = store / "jobs" / "loop.txt.sync"
    make_archive(path, b"x", manifest=make_manifest(timeout=8), wasm=guests.endless_loop())
    watcher = subprocess.Popen(  # a process, not a thread: the runtime forks only a single-threaded process
        [sys.executable, "-c", WATCH_CHILDREN, str(os.getpid()), str(path)], stdout=subprocess.PIPE, text=True
    )
    outcome = run_refresh(path, runtime, store=store)
    seen, _ = watcher.communicate(timeout=30)
    runtime.close()
    assert outcome.error_code in ("guest_timeout", "guest_out_of_fuel"), outcome
    held = [set(json.loads(line)) for line in seen.splitlines()]
    assert held, "no sandbox child was seen"
    assert all(str(store / "jobs") not in links for links in held), held
