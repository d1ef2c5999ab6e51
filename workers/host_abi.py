"""The guest ABI: the six ``host`` functions of the reference engine (spec §7.2), made safe (§7.4, §9 D5).

Guests see exactly the reference's imports and semantics — ``payload_read`` reads the original payload,
``payload_write`` composes a separate, initially absent new payload with zero fill, ``http_request`` returns
the HTTP status or a negative code, ``last_response_*`` expose the last body from offset 0 — so existing
guests run unchanged. What changes is that nothing a guest passes can hurt the host: every pointer and
length arrives as a signed i32 and is checked as unsigned against the current memory size before any
allocation; negative values are errors (-1); the new payload is capped at the policy's maximum (a write past
it returns -1 without allocating); response bodies are capped by the egress policy. Host functions never
raise into wasmtime except for bugs.

HTTP goes through a ``GuestIO`` (in the sandboxed child it is a request to the parent over the channel).
Error codes: see ``docs/guest-abi.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import wasmtime

#: Returned for bad pointers, lengths, offsets, non-UTF-8 strings and writes over the payload cap.
ERR_MEMORY = -1
#: Returned when the URL's host is not allowed (allow-list, userinfo, private address, redirect).
ERR_NOT_ALLOWED = -2
#: Returned when the request could not be made at all (bad URL, connect, DNS, timeout, request cap).
ERR_REQUEST_FAILED = -5

I32_MAX = 2**31 - 1
IMPORT_MODULE = "host"


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
    """

    payload: bytes
    max_payload_size: int
    io: GuestIO
    new_payload: bytearray | None = None
    last_response: bytes = b""
    requests: int = 0
    memory: wasmtime.Memory | None = field(default=None, repr=False)


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
        if reply.status >= 0:
            self.state.last_response = reply.body
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

    def imports(self) -> dict[str, wasmtime.Func]:
        """The ``host`` functions as wasmtime functions, by name.

        Returns:
            Name to function.
        """
        i32 = wasmtime.ValType.i32()

        def func(params: int, fn: object) -> wasmtime.Func:
            ty = wasmtime.FuncType([i32] * params, [i32])
            return wasmtime.Func(self._store, ty, fn)  # type: ignore[arg-type]  # wasmtime accepts any callable

        return {
            "payload_size": func(0, self.payload_size),
            "payload_read": func(3, self.payload_read),
            "payload_write": func(3, self.payload_write),
            "http_request": func(4, self.http_request),
            "last_response_size": func(0, self.last_response_size),
            "last_response_read": func(2, self.last_response_read),
        }
