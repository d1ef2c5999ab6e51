"""The guest ABI: the six ``host`` functions of the reference engine (spec §7.2), made safe (§7.4, §9 D5),
and the additive version-2 functions (context, HTTP with headers and a body, response headers, "nothing
changed", log lines, wall-clock time).

Guests see exactly the reference's imports and semantics — ``payload_read`` reads the original payload,
``payload_write`` composes a separate, initially absent new payload with zero fill, ``http_request`` returns
the HTTP status or a negative code, ``last_response_*`` expose the last body from offset 0 — so existing
guests run unchanged. What changes is that nothing a guest passes can hurt the host: every pointer and
length arrives as a signed i32 and is checked as unsigned against the current memory size before any
allocation; negative values are errors (-1); the new payload is capped at the policy's maximum (a write past
it returns -1 without allocating); response bodies are capped by the egress policy. Host functions never
raise into wasmtime except for bugs.

HTTP goes through a ``GuestIO`` (in the sandboxed child it is a request to the parent over the channel).
Version 2 is opt-in by import: a module that imports none of ``V2_SIGNATURES`` sees exactly version 1. The
child checks only what it must before allocating (sizes of the header block and request body); the header
rules and secrets are applied by the parent (``workers.guest_http``), which trusts nothing the child sends.
Error codes: see ``docs/guest-abi.md``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import wasmtime

#: Returned for bad pointers, lengths, offsets, non-UTF-8 strings and writes over the payload cap.
ERR_MEMORY = -1
#: Returned when the URL's host is not allowed (allow-list, userinfo, private address, redirect).
ERR_NOT_ALLOWED = -2
#: Returned when the request's headers or body break the rules (v2 ``http_send``), or a header is absent.
ERR_BAD_REQUEST = -3
#: Returned when the request could not be made at all (bad URL, connect, DNS, timeout, request cap).
ERR_REQUEST_FAILED = -5

#: Largest header block a guest may pass to ``http_send``, in bytes.
MAX_REQUEST_HEADERS_BYTES = 16 * 1024
#: Largest request body a guest may pass to ``http_send``, in bytes.
MAX_REQUEST_BODY = 1024 * 1024
#: Most ``log`` lines kept per run; later ones are counted, not kept.
MAX_LOG_LINES = 64
#: Longest ``log`` line kept, in bytes of guest text (longer ones are cut).
MAX_LOG_LINE = 1024
#: Largest response header block handed to a guest (``name: value\n`` lines), in bytes; a response with more
#: is refused (-4): the block must fit one channel control message, whatever a server sends.
MAX_RESPONSE_HEADERS_BYTES = 64 * 1024

I32_MAX = 2**31 - 1
IMPORT_MODULE = "host"

_I32 = "i32"
_I64 = "i64"
#: Version-1 functions (the reference's six): name -> (params, results).
V1_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "payload_size": ((), (_I32,)),
    "payload_read": ((_I32,) * 3, (_I32,)),
    "payload_write": ((_I32,) * 3, (_I32,)),
    "http_request": ((_I32,) * 4, (_I32,)),
    "last_response_size": ((), (_I32,)),
    "last_response_read": ((_I32,) * 2, (_I32,)),
}
#: Version-2 functions, additive: importing any of them is how a guest opts in.
V2_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "context_size": ((), (_I32,)),
    "context_read": ((_I32,) * 3, (_I32,)),
    "http_send": ((_I32,) * 8, (_I32,)),
    "last_response_read_at": ((_I32,) * 3, (_I32,)),
    "last_response_header": ((_I32,) * 4, (_I32,)),
    "last_response_headers_size": ((), (_I32,)),
    "last_response_headers_read": ((_I32,) * 3, (_I32,)),
    "unchanged": ((), (_I32,)),
    "log": ((_I32,) * 2, (_I32,)),
    "time_unix": ((), (_I64,)),
}
#: Every ``host`` function a guest may import, with its signature.
SIGNATURES = {**V1_SIGNATURES, **V2_SIGNATURES}


class HttpReply(Protocol):
    """What a ``GuestIO`` returns for one request."""

    @property
    def status(self) -> int:
        """HTTP status (≥ 100) or a negative ABI code."""
        ...

    @property
    def body(self) -> bytes:
        """The raw response body (empty on failure)."""
        ...

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Response headers (names lower-case), empty on failure."""
        ...


class GuestIO(Protocol):
    """The guest's only way out: HTTP performed by someone else (the parent, after its checks)."""

    def http_request(self, url: str, method: str) -> HttpReply:
        """Perform one request on the guest's behalf.

        Args:
            url: The URL the guest passed.
            method: The method the guest passed.

        Returns:
            The reply.
        """
        ...

    def http_send(self, url: str, method: str, headers: bytes, body: bytes) -> HttpReply:
        """Perform one version-2 request with a header block and a body.

        Args:
            url: The URL the guest passed.
            method: The method the guest passed.
            headers: The guest's raw header block (``Name: value`` lines), checked by the parent.
            body: The request body.

        Returns:
            The reply.
        """
        ...

    def log(self, line: str) -> None:
        """Hand one escaped, bounded guest log line to the parent.

        Args:
            line: The line.
        """
        ...


@dataclass
class HostState:
    """Mutable state of one guest run, owned by the host functions.

    Attributes:
        payload: The original payload (read-only for the guest).
        max_payload_size: Cap of the new payload in bytes.
        io: Where HTTP requests go.
        new_payload: The payload the guest composes; None until its first write.
        last_response: Body of the last completed request.
        requests: Number of ``http_request`` calls made.
        memory: The guest's exported ``memory``, once instantiated.
        context: The archive's ``context.json`` bytes (empty when absent).
        last_headers: Headers of the last completed response (v2), names lower-case.
        unchanged: The guest called ``unchanged``: its writes are discarded and nothing is committed.
        log_lines: ``log`` calls made, kept or not.
    """

    payload: bytes
    max_payload_size: int
    io: GuestIO
    new_payload: bytearray | None = None
    last_response: bytes = b""
    requests: int = 0
    memory: wasmtime.Memory | None = field(default=None, repr=False)
    context: bytes = b""
    last_headers: tuple[tuple[str, str], ...] = ()
    unchanged: bool = False
    log_lines: int = 0


def _in_bounds(store: wasmtime.Store, memory: wasmtime.Memory | None, ptr: int, length: int) -> bool:
    """True when ``[ptr, ptr+length)`` lies inside guest memory; both must be non-negative i32 values."""
    if memory is None or ptr < 0 or length < 0:
        return False
    return ptr + length <= memory.data_len(store)


class HostFunctions:
    """Builds the ``host`` imports over one ``HostState``."""

    def __init__(self, store: wasmtime.Store, state: HostState) -> None:
        self._store = store
        self.state = state

    def _read(self, ptr: int, length: int) -> bytes | None:
        memory = self.state.memory
        if not _in_bounds(self._store, memory, ptr, length):
            return None
        assert memory is not None
        return bytes(memory.read(self._store, ptr, ptr + length))

    def _write(self, ptr: int, data: bytes) -> bool:
        memory = self.state.memory
        if not _in_bounds(self._store, memory, ptr, len(data)):
            return False
        assert memory is not None
        if data:
            # wasmtime-py refuses even an empty write that starts at the end of memory (IndexError).
            memory.write(self._store, data, ptr)
        return True

    def payload_size(self) -> int:
        """Length of the original payload (the runner refuses payloads beyond i32)."""
        return len(self.state.payload)

    def payload_read(self, offset: int, length: int, out_ptr: int) -> int:
        """Copy ``payload[offset : offset+length]`` (clamped) to guest memory; bytes copied or -1."""
        if offset < 0 or length < 0 or out_ptr < 0:
            return ERR_MEMORY
        size = len(self.state.payload)
        if offset >= size:
            return 0
        chunk = self.state.payload[offset : offset + min(length, size - offset)]
        return len(chunk) if self._write(out_ptr, chunk) else ERR_MEMORY

    def payload_write(self, offset: int, length: int, data_ptr: int) -> int:
        """Write guest bytes into the new payload at ``offset`` (zero fill); ``length`` or -1."""
        if offset < 0 or length < 0 or offset + length > self.state.max_payload_size:
            return ERR_MEMORY
        data = self._read(data_ptr, length)
        if data is None:
            return ERR_MEMORY
        buffer = self.state.new_payload
        if buffer is None:
            buffer = self.state.new_payload = bytearray()
        end = offset + length
        if len(buffer) < end:
            buffer.extend(bytes(end - len(buffer)))
        buffer[offset:end] = data
        return length

    def http_request(self, url_ptr: int, url_len: int, method_ptr: int, method_len: int) -> int:
        """Ask the host to perform a request; the status, or a negative ABI code."""
        raw_url = self._read(url_ptr, url_len)
        raw_method = self._read(method_ptr, method_len)
        if raw_url is None or raw_method is None:
            return ERR_MEMORY
        try:
            url = raw_url.decode("utf-8")
            method = raw_method.decode("utf-8")
        except UnicodeDecodeError:
            return ERR_MEMORY
        self.state.requests += 1
        reply = self.state.io.http_request(url, method)
        return self._keep(reply)

    def _keep(self, reply: HttpReply) -> int:
        if reply.status >= 0:
            self.state.last_response = reply.body
            self.state.last_headers = reply.headers
        return reply.status

    def last_response_size(self) -> int:
        """Length of the last response body (egress caps it far below 2 GiB)."""
        return min(len(self.state.last_response), I32_MAX)

    def last_response_read(self, out_ptr: int, max_len: int) -> int:
        """Copy up to ``max_len`` bytes of the last body from offset 0; bytes copied or -1."""
        if max_len < 0 or out_ptr < 0:
            return ERR_MEMORY
        chunk = self.state.last_response[:max_len]
        return len(chunk) if self._write(out_ptr, chunk) else ERR_MEMORY

    # --- version 2 -------------------------------------------------------------------------------------

    def context_size(self) -> int:
        """Length of ``context.json`` (0 when absent; the format caps it far below i32)."""
        return len(self.state.context)

    def context_read(self, offset: int, length: int, out_ptr: int) -> int:
        """Copy ``context[offset : offset+length]`` (clamped) to guest memory; bytes copied or -1."""
        return self._read_at(self.state.context, offset, length, out_ptr)

    def last_response_read_at(self, offset: int, length: int, out_ptr: int) -> int:
        """Copy ``body[offset : offset+length]`` (clamped) of the last response; bytes copied or -1."""
        return self._read_at(self.state.last_response, offset, length, out_ptr)

    def _read_at(self, source: bytes, offset: int, length: int, out_ptr: int) -> int:
        if offset < 0 or length < 0 or out_ptr < 0:
            return ERR_MEMORY
        if offset >= len(source):
            return 0 if self._write(out_ptr, b"") else ERR_MEMORY
        chunk = source[offset : offset + min(length, len(source) - offset)]
        return len(chunk) if self._write(out_ptr, chunk) else ERR_MEMORY

    def http_send(
        self,
        url_ptr: int,
        url_len: int,
        method_ptr: int,
        method_len: int,
        headers_ptr: int,
        headers_len: int,
        body_ptr: int,
        body_len: int,
    ) -> int:
        """A request with a header block and a body; the status, or a negative ABI code (-3: bad request)."""
        if headers_len > MAX_REQUEST_HEADERS_BYTES or body_len > MAX_REQUEST_BODY:
            return ERR_MEMORY if headers_len < 0 or body_len < 0 else ERR_BAD_REQUEST
        parts = [self._read(p, n) for p, n in ((url_ptr, url_len), (method_ptr, method_len))]
        headers = self._read(headers_ptr, headers_len)
        body = self._read(body_ptr, body_len)
        if parts[0] is None or parts[1] is None or headers is None or body is None:
            return ERR_MEMORY
        try:
            url, method = parts[0].decode("utf-8"), parts[1].decode("utf-8")
        except UnicodeDecodeError:
            return ERR_MEMORY
        self.state.requests += 1
        return self._keep(self.state.io.http_send(url, method, headers, body))

    def last_response_header(self, name_ptr: int, name_len: int, out_ptr: int, max_len: int) -> int:
        """Copy the value of one header of the last response (first match, case-insensitive).

        Returns the value's full length (copying at most ``max_len`` bytes), -3 when the header is absent,
        -1 on a bad pointer.
        """
        if max_len < 0 or out_ptr < 0 or name_len > 256:
            return ERR_MEMORY
        raw = self._read(name_ptr, name_len)
        if raw is None:
            return ERR_MEMORY
        wanted = raw.decode("latin-1").lower()
        for name, value in self.state.last_headers:
            if name == wanted:
                data = value.encode("latin-1", "replace")
                return len(data) if self._write(out_ptr, data[:max_len]) else ERR_MEMORY
        return ERR_BAD_REQUEST

    def _header_block(self) -> bytes:
        return "".join(f"{n}: {v}\n" for n, v in self.state.last_headers).encode("latin-1", "replace")

    def last_response_headers_size(self) -> int:
        """Length of the last response's header block (``name: value\\n`` lines, names lower-case)."""
        return len(self._header_block())

    def last_response_headers_read(self, offset: int, length: int, out_ptr: int) -> int:
        """Copy part of the last response's header block; bytes copied or -1."""
        return self._read_at(self._header_block(), offset, length, out_ptr)

    def unchanged(self) -> int:
        """Say "nothing changed": writes of this run are discarded and no generation is committed."""
        self.state.unchanged = True
        return 0

    def log(self, ptr: int, length: int) -> int:
        """Send one guest line to the status record and the worker log (escaped, cut, counted); 0 or -1."""
        if length < 0 or ptr < 0:
            return ERR_MEMORY
        raw = self._read(ptr, min(length, MAX_LOG_LINE))
        if raw is None or not _in_bounds(self._store, self.state.memory, ptr, length):
            return ERR_MEMORY
        self.state.log_lines += 1
        if self.state.log_lines <= MAX_LOG_LINES + 1:  # one more than kept: the parent notes the drop
            self.state.io.log(escape_log_line(raw, cut=length > MAX_LOG_LINE))
        return 0

    def time_unix(self) -> int:
        """Wall-clock seconds since the Unix epoch (i64)."""
        return int(time.time())

    def imports(self, names: Iterable[str] | None = None) -> dict[str, wasmtime.Func]:
        """The ``host`` functions as wasmtime functions, by name.

        Args:
            names: Build only these (the module's imports; names that are not ``host`` functions are left
                out); every function when None. A function costs a ctypes callback and a wasmtime ``Func``
                in the confined child, and a guest imports a few of the sixteen.

        Returns:
            Name to function.
        """
        wanted = SIGNATURES if names is None else [name for name in names if name in SIGNATURES]
        engine = self._store.engine
        store = self._store
        return {name: wasmtime.Func(store, func_type(engine, name), getattr(self, name)) for name in wanted}


_VALTYPES = {_I32: wasmtime.ValType.i32, _I64: wasmtime.ValType.i64}
#: ``func_type``'s memo: one ``FuncType`` per host function and engine (wasmtime binds a function type to the
#: first engine it is used with; a type holds no store state). A process that forks children builds them
#: before forking (``build_func_types``, from ``workers.runtime.warm_up``).
_FUNC_TYPES: weakref.WeakKeyDictionary[wasmtime.Engine, dict[str, wasmtime.FuncType]] = (
    weakref.WeakKeyDictionary()
)


def build_func_types(engine: wasmtime.Engine) -> None:
    """Build every host function's type for ``engine`` now, so that a forked child finds them built instead of
    building them on its own copy-on-write pages.

    Args:
        engine: The engine guests run in.
    """
    for name in SIGNATURES:
        func_type(engine, name)


def func_type(engine: wasmtime.Engine, name: str) -> wasmtime.FuncType:
    """The wasm type of one ``host`` function for ``engine``, built once per process and engine.

    Args:
        engine: The engine of the store the function is made in.
        name: A key of ``SIGNATURES``.

    Returns:
        Its type.
    """
    types = _FUNC_TYPES.setdefault(engine, {})
    ty = types.get(name)
    if ty is None:
        params, results = SIGNATURES[name]
        ty = wasmtime.FuncType([_VALTYPES[p]() for p in params], [_VALTYPES[r]() for r in results])
        types[name] = ty
    return ty


def escape_log_line(raw: bytes, *, cut: bool = False) -> str:
    """A guest's log bytes as one printable ASCII line: UTF-8 decoded with replacement, then escaped.

    Newlines, control characters and non-ASCII become escapes, so a guest can neither forge log lines nor
    smuggle terminal sequences; ``cut`` marks a line shortened to ``MAX_LOG_LINE`` bytes.
    """
    text = ascii(raw.decode("utf-8", "replace"))[1:-1]
    return text + (" [cut]" if cut else "")
