"""Test guests written as WAT and compiled on demand, plus the name table their HTTP requests resolve through.

Guests report what the ``host`` functions returned by composing their new payload, the only channel the ABI
gives them:

* ``record`` calls host functions in order and writes each i32 result little-endian at the start of the new
  payload (then, optionally, regions of its memory after them), so the test reads every return value back
  from the committed archive with ``results``.
* ``expect`` checks each result against an expected value and writes the actual values only when one
  differs: a correct run leaves the archive unchanged, a wrong one commits what the guest saw.
* ``expect_without_memory`` is for guests without an exported ``memory`` (which cannot write a payload at
  all): a mismatch executes ``unreachable``.

Host-call arguments are WAT i32 expressions; ``call`` builds them from ints (values above ``I32_MAX`` are
written as their two's-complement i32, so ``0xFFFFFFFF`` is -1) or from WAT text. Data segments place strings
in memory. Guests import all six ``host`` functions, which is what every reference guest may do. Imported
by the tests as ``guests`` (``tests/`` is on ``sys.path``, like ``netns_hosts``).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping, Sequence

import wasmtime

#: Bytes in a wasm page; guests have one page unless told otherwise.
PAGE = 65536
#: Where ``http_request`` strings are placed.
STRINGS = 0x100
#: Where the results of host calls are stored before they are written to the new payload.
RESULTS = 0x8000
#: Where ``fetch`` copies response bodies (guests that fetch have ``FETCH_PAGES`` pages).
BODY = 0x10000
#: Memory of a ``fetch`` guest, in pages: room for bodies up to ``FETCH_PAGES * PAGE - BODY`` bytes.
FETCH_PAGES = 16
I32_MAX = 2**31 - 1

HOST_IMPORTS = """
  (import "host" "http_request" (func $http_request (param i32 i32 i32 i32) (result i32)))
  (import "host" "last_response_size" (func $last_response_size (result i32)))
  (import "host" "last_response_read" (func $last_response_read (param i32 i32) (result i32)))
  (import "host" "payload_size" (func $payload_size (result i32)))
  (import "host" "payload_read" (func $payload_read (param i32 i32 i32) (result i32)))
  (import "host" "payload_write" (func $payload_write (param i32 i32 i32) (result i32)))"""

#: Version-2 imports (docs/guest-abi.md), added to ``HOST_IMPORTS`` by guests that opt in.
V2_IMPORTS = (
    HOST_IMPORTS
    + """
  (import "host" "context_size" (func $context_size (result i32)))
  (import "host" "context_read" (func $context_read (param i32 i32 i32) (result i32)))
  (import "host" "http_send" (func $http_send (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "host" "last_response_read_at" (func $last_response_read_at (param i32 i32 i32) (result i32)))
  (import "host" "last_response_header" (func $last_response_header (param i32 i32 i32 i32) (result i32)))
  (import "host" "last_response_headers_size" (func $last_response_headers_size (result i32)))
  (import "host" "last_response_headers_read"
    (func $last_response_headers_read (param i32 i32 i32) (result i32)))
  (import "host" "unchanged" (func $unchanged (result i32)))
  (import "host" "log" (func $log (param i32 i32) (result i32)))
  (import "host" "time_unix" (func $time_unix (result i64)))"""
)

#: The spec's TV-12a echo guest, verbatim.
ECHO_WAT = """(module
  (import "host" "payload_size"  (func $size  (result i32)))
  (import "host" "payload_read"  (func $read  (param i32 i32 i32) (result i32)))
  (import "host" "payload_write" (func $write (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (local $n i32)
    (local.set $n (call $size))
    (drop (call $read  (i32.const 0) (local.get $n) (i32.const 0)))
    (drop (call $write (i32.const 0) (local.get $n) (i32.const 0)))))"""


def i32(value: int | str) -> str:
    """A WAT i32 expression: an ``i32.const`` for an int (wrapped to signed), the text itself otherwise."""
    if isinstance(value, str):
        return value
    if not -(2**31) <= value < 2**32:
        raise ValueError(f"{value} does not fit in 32 bits")
    return f"(i32.const {value - 2**32 if value > I32_MAX else value})"


def call(name: str, *args: int | str) -> str:
    """A call of host function ``name`` with i32 arguments."""
    return f"(call ${name} {' '.join(i32(a) for a in args)})"


def http_request(
    url: bytes | str, method: bytes | str = b"GET", *, at: int = STRINGS
) -> tuple[str, dict[int, bytes]]:
    """An ``http_request`` call and the data segments holding its URL and method (placed from ``at``)."""
    url_bytes = url.encode() if isinstance(url, str) else url
    method_bytes = method.encode() if isinstance(method, str) else method
    method_at = at + len(url_bytes)
    expr = call("http_request", at, len(url_bytes), method_at, len(method_bytes))
    return expr, {at: url_bytes, method_at: method_bytes}


def wat_string(data: bytes) -> str:
    """``data`` as a WAT string literal, every byte hex-escaped."""
    return '"' + "".join(f"\\{b:02x}" for b in data) + '"'


def module(
    *functions: str,
    memory: str = '(memory (export "memory") 1)',
    data: Mapping[int, bytes] | None = None,
    imports: str = HOST_IMPORTS,
) -> bytes:
    """Compile a module with the host imports, a memory, data segments and the given function definitions.

    Args:
        functions: WAT ``func`` forms (and any other module fields).
        memory: The memory declaration; empty for a module without memory.
        data: Bytes to place at addresses.
        imports: The import declarations.

    Returns:
        The binary module.
    """
    segments = "".join(f"\n  (data (i32.const {at}) {wat_string(b)})" for at, b in (data or {}).items())
    body = "\n  ".join(functions)
    return bytes(wasmtime.wat2wasm(f"(module {imports}\n  {memory}{segments}\n  {body})"))


def run_counter() -> bytes:
    """A guest that counts its runs in a mutable global and writes the count as its one-byte payload: a
    child that ran a job before would write 2 (each job must get a fresh child)."""
    return module(
        """(global $runs (mut i32) (i32.const 0))
    (func (export "run")
      (global.set $runs (i32.add (global.get $runs) (i32.const 1)))
      (i32.store8 (i32.const 0) (global.get $runs))
      (drop (call $payload_write (i32.const 0) (i32.const 1) (i32.const 0))))"""
    )


def endless_loop() -> bytes:
    """A guest that never returns (only the deadline or fuel stops it)."""
    return module('(func (export "run") (loop $l (br $l)))', memory="")


def _store_results(calls: Sequence[str]) -> str:
    return "\n    ".join(f"(i32.store (i32.const {RESULTS + 4 * i}) {expr})" for i, expr in enumerate(calls))


def record(
    *calls: str,
    regions: Sequence[tuple[int, int | str]] = (),
    data: Mapping[int, bytes] | None = None,
    pages: int = 1,
    entry: str = "run",
    imports: str = HOST_IMPORTS,
    after: str = "",
) -> bytes:
    """A guest that makes ``calls`` in order and writes their results, then memory ``regions``, as payload.

    Args:
        calls: i32 expressions, evaluated in order.
        regions: ``(address, length)`` pairs appended after the results; a length may be a WAT expression
            evaluated after all calls (e.g. ``result(2)``, the third call's result).
        data: Data segments.
        pages: Memory size in pages.
        entry: Name of the exported entry point.
        imports: The import declarations (``V2_IMPORTS`` for version-2 calls).
        after: WAT instructions run after the payload is written (e.g. a call of ``unchanged``).

    Returns:
        The binary module.
    """
    appends = "".join(
        f"""
    (local.set $len {i32(length)})
    (drop (call $payload_write (local.get $at) (local.get $len) (i32.const {address})))
    (local.set $at (i32.add (local.get $at) (local.get $len)))"""
        for address, length in regions
    )
    run = f"""(func (export "{entry}") (local $at i32) (local $len i32)
    {_store_results(calls)}
    (drop (call $payload_write (i32.const 0) (i32.const {4 * len(calls)}) (i32.const {RESULTS})))
    (local.set $at (i32.const {4 * len(calls)})){appends}
    {after})"""
    return module(run, memory=f'(memory (export "memory") {pages})', data=data, imports=imports)


def result(index: int) -> str:
    """A WAT expression for the result of call ``index`` of a ``record`` or ``expect`` guest."""
    return f"(i32.load (i32.const {RESULTS + 4 * index}))"


def expect(
    checks: Sequence[tuple[str, int]], *, data: Mapping[int, bytes] | None = None, imports: str = HOST_IMPORTS
) -> bytes:
    """A guest that makes each call and writes all results as payload only if one is not as expected.

    Args:
        checks: ``(call, expected result)`` pairs, evaluated in order.
        data: Data segments.
        imports: The import declarations (``V2_IMPORTS`` for version-2 calls).

    Returns:
        The binary module.
    """
    compare = "\n    ".join(
        f"(if (i32.ne {result(i)} {i32(expected)}) (then (local.set $bad (i32.const 1))))"
        for i, (_, expected) in enumerate(checks)
    )
    run = f"""(func (export "run") (local $bad i32)
    {_store_results([expr for expr, _ in checks])}
    {compare}
    (if (local.get $bad) (then
      (drop (call $payload_write (i32.const 0) (i32.const {4 * len(checks)}) (i32.const {RESULTS}))))))"""
    return module(run, data=data, imports=imports)


def expect_without_memory(checks: Sequence[tuple[str, int]], *, memory: str = "") -> bytes:
    """A guest without an exported ``memory`` that traps (``unreachable``) when a call's result is unexpected.

    Args:
        checks: ``(call, expected result)`` pairs, evaluated in order.
        memory: Its memory declaration, if it has one (not exported as ``memory``).

    Returns:
        The binary module.
    """
    body = "\n    ".join(
        f"(if (i32.ne {expr} {i32(expected)}) (then unreachable))" for expr, expected in checks
    )
    return module(f'(func (export "run")\n    {body})', memory=memory)


def fetch(url: bytes | str, method: bytes | str = b"GET") -> bytes:
    """A guest that requests ``url``, writes ``status, last_response_size, bytes copied``, then the body.

    Args:
        url: The URL, baked into a data segment.
        method: The method string.

    Returns:
        The binary module.
    """
    request, data = http_request(url, method)
    capacity = FETCH_PAGES * PAGE - BODY
    return record(
        request,
        call("last_response_size"),
        call("last_response_read", BODY, capacity),
        regions=[(BODY, result(2))],
        data=data,
        pages=FETCH_PAGES,
    )


def fetch_body(url: bytes | str) -> bytes:
    """A guest that requests ``url`` and writes the response body as the new payload (traps unless 200).

    This is what a guest mirroring a source does: the payload becomes what the source serves now, and a
    failed fetch leaves the old payload in place.

    Args:
        url: The URL, baked into a data segment.

    Returns:
        The binary module.
    """
    request, data = http_request(url)
    capacity = FETCH_PAGES * PAGE - BODY
    run = f"""(func (export "run") (local $n i32)
    (if (i32.ne {request} (i32.const 200)) (then unreachable))
    (local.set $n {call("last_response_read", BODY, capacity)})
    (drop {call("payload_write", 0, "(local.get $n)", BODY)}))"""
    return module(run, memory=f'(memory (export "memory") {FETCH_PAGES})', data=data)


def results(payload: bytes, count: int) -> tuple[list[int], bytes]:
    """Split a recorded payload into its ``count`` little-endian i32 results and the bytes after them."""
    return list(struct.unpack_from(f"<{count}i", payload)), payload[4 * count :]


def i32s(*values: int) -> bytes:
    """Little-endian i32 encoding of ``values``, what a recording guest writes."""
    return struct.pack(f"<{len(values)}i", *values)


class NameTable:
    """The resolver guests' HTTP goes through: test names mapped to test hosts, every lookup remembered."""

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None) -> None:
        self.table: dict[str, list[str]] = {
            name: list(addresses) for name, addresses in (table or {}).items()
        }
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, timeout: float) -> Sequence[str]:
        """Resolve ``host`` from the table (``Resolver`` protocol of ``workers.egress``)."""
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def leb(value: int) -> bytes:
    """``value`` as an unsigned LEB128 (the integers of the binary WebAssembly format)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def section(ident: int, body: bytes) -> bytes:
    """A WebAssembly section: its id, its length, its body."""
    return bytes([ident]) + leb(len(body)) + body


def with_name_section(wasm: bytes, name: bytes, functions: int) -> bytes:
    """``wasm`` with a ``name`` custom section naming the module and its first ``functions`` functions
    ``name`` (an attacker's way to put text into wasmtime's backtraces and errors)."""
    names = leb(functions) + b"".join(leb(i) + leb(len(name)) + name for i in range(functions))
    custom = leb(4) + b"name" + section(0, leb(len(name)) + name) + section(1, names)
    return wasm + section(0, custom)
