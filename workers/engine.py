"""The wasmtime engine every guest runs in, and the per-run store with its budgets.

One engine configuration for the whole product, chosen for running untrusted guests in a forked, confined
child (measured with wasmtime 50 here): fuel metering on; no parallel compilation (its worker threads do not
exist in a forked child, and compiling there hangs); small memory reservations so the child fits under
RLIMIT_AS; copy-on-write memory images off (they need ``memfd_create``, which a confined child may not call);
a wasm stack well below the 2 MiB that aborts the process. Modules must be binary WebAssembly (the reference's
engine also accepts the text format). A module that does not compile fails as ``GuestTrap`` with wasmtime's
message escaped and bounded: it quotes the module's names, which the archive author chose.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import wasmtime

from sync_format.errors import GuestTrap
from sync_format.escape import escape_text
from workers.egress import DEFAULT_MAX_RESPONSE_SIZE

#: Longest compile or validation error kept, in characters (escapes included).
COMPILE_ERROR_LIMIT = 500
#: Address space reserved up front per linear memory, in bytes. It equals the default memory limit: growth
#: inside the reservation is an mprotect, while growth beyond it copies the whole memory (a guest growing
#: one page at a time past a small reservation burns minutes of system time with little fuel).
MEMORY_RESERVATION = 256 * 1024 * 1024
#: Guard region after each linear memory, in bytes.
MEMORY_GUARD = 64 * 1024
#: Wasm stack limit in bytes (above 2 MiB wasmtime aborts the process instead of trapping).
MAX_WASM_STACK = 1024 * 1024

_ENGINE_SETTINGS = {
    "consume_fuel": True,
    "parallel_compilation": False,
    "memory_reservation": MEMORY_RESERVATION,
    "memory_guard_size": MEMORY_GUARD,
    "memory_reservation_for_growth": 0,
    "memory_may_move": False,
    "memory_init_cow": False,
    "max_wasm_stack": MAX_WASM_STACK,
    "wasm_threads": False,
}

WASM_HEADER = b"\x00asm\x01\x00\x00\x00"


def make_engine() -> wasmtime.Engine:
    """Build the engine with our settings.

    Returns:
        A new engine.
    """
    config = wasmtime.Config()
    for name, value in _ENGINE_SETTINGS.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


def engine_fingerprint() -> str:
    """Identify the engine build and settings, for keying compiled-module caches.

    Returns:
        A short hex string that changes with the wasmtime version or any setting.
    """
    doc = {"wasmtime": wasmtime_version(), "settings": _ENGINE_SETTINGS}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def wasmtime_version() -> str:
    """The installed wasmtime-py version.

    Returns:
        The version string.
    """
    from importlib.metadata import version  # noqa: PLC0415  (metadata lookup only when asked)

    return version("wasmtime")


@dataclass(frozen=True)
class GuestLimits:
    """Budgets of one guest run.

    Attributes:
        fuel: Fuel units (roughly one per wasm instruction).
        memory_bytes: Largest linear memory.
        table_elements: Largest table.
        instances: Most instances.
        timeout_seconds: Wall-clock deadline of the whole run, host calls included.
        max_payload_size: Largest new payload the guest may write, in bytes.
        max_response_size: Largest HTTP response body kept for the guest, in bytes.
        max_requests: Most HTTP requests per run.
    """

    fuel: int = 2_000_000_000
    memory_bytes: int = 256 * 1024 * 1024
    table_elements: int = 100_000
    instances: int = 4
    timeout_seconds: float = 30.0
    max_payload_size: int = 256 * 1024 * 1024
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_requests: int = 64


def make_store(engine: wasmtime.Engine, limits: GuestLimits) -> wasmtime.Store:
    """A store with fuel and resource limits set.

    Args:
        engine: The engine from ``make_engine``.
        limits: The run's budgets.

    Returns:
        The store.
    """
    store = wasmtime.Store(engine)
    store.set_fuel(limits.fuel)
    store.set_limits(
        memory_size=limits.memory_bytes,
        table_elements=limits.table_elements,
        instances=limits.instances,
        tables=4,
        memories=2,
    )
    return store


def compile_module(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    """Compile a binary module.

    Args:
        engine: The engine.
        wasm: Module bytes.

    Returns:
        The compiled module.

    Raises:
        GuestTrap: Not a binary WebAssembly module, or it fails validation.
    """
    if wasm[:8] != WASM_HEADER:
        raise GuestTrap("sync.wasm is not a binary WebAssembly module (magic and version 1 required)")
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        # wasmtime's validation errors quote the module (export and import names): the guest's own text.
        raise GuestTrap(f"invalid module: {escape_text(str(exc), COMPILE_ERROR_LIMIT)}") from exc
