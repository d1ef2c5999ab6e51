"""Instantiate a compiled guest with the ``host`` imports and run its entry point under its budgets.

Linking offers only the ``host`` functions of ABI versions 1 and 2: any other import (every WASI import
included) fails instantiation, as in the reference (spec §7.3). The entry point is ``run: () -> ()``, else
``_start: () -> ()``; only writes made on the ``run`` path are kept (reference §7.1 step 8), and none when
the guest said ``unchanged``. wasmtime traps are translated here, once, into our errors: out of fuel →
``GuestOutOfFuel``, anything else → ``GuestTrap`` with wasmtime's trap code. This runs in the sandboxed
child, which has no clock of its own: no epoch deadline is configured, and the wall-clock deadline is the
parent's, which kills the child and reports ``GuestTimeout`` (``workers.supervisor``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import wasmtime
from wasmtime._instance import InstanceExports  # not re-exported by the package

from sync_format.errors import GuestOutOfFuel, GuestTrap
from sync_format.escape import escape_text
from workers.engine import GuestLimits, make_store
from workers.host_abi import I32_MAX, IMPORT_MODULE, GuestIO, HostFunctions, HostState

ENTRY_POINTS = ("run", "_start")


@dataclass(frozen=True)
class GuestRun:
    """What a completed guest run produced.

    Attributes:
        entry: The entry point called (``run`` or ``_start``).
        new_payload: The composed payload, or None when the guest wrote nothing (or ran ``_start``).
        fuel_used: Fuel consumed.
        requests: HTTP requests made.
        duration_ms: Time spent instantiating and running.
        unchanged: The guest said "nothing changed" (v2 ``unchanged``); ``new_payload`` is then None.
        log_lines: ``log`` calls the guest made (only the first ``MAX_LOG_LINES`` reach the parent).
    """

    entry: str
    new_payload: bytes | None
    fuel_used: int
    requests: int
    duration_ms: float
    unchanged: bool = False
    log_lines: int = 0


def run_guest(
    engine: wasmtime.Engine,
    module: wasmtime.Module,
    payload: bytes,
    limits: GuestLimits,
    io: GuestIO,
    context: bytes = b"",
) -> GuestRun:
    """Run one guest to completion.

    Args:
        engine: The engine the module was compiled with.
        module: The compiled guest.
        payload: The archive's current payload.
        limits: Fuel, memory and payload budgets.
        io: Where the guest's HTTP requests go.
        context: The archive's ``context.json`` bytes, for ``context_read``.

    Returns:
        The run's result.

    Raises:
        GuestTrap: Instantiation failed, no entry point, or the guest trapped.
        GuestOutOfFuel: The fuel budget ran out.
    """
    if len(payload) > I32_MAX:
        raise GuestTrap("payload is larger than the 32-bit guest ABI can address")
    started = time.monotonic()
    store = make_store(engine, limits)
    state = HostState(payload=payload, max_payload_size=limits.max_payload_size, io=io, context=context)
    host = HostFunctions(store, state)
    instance = _instantiate(store, module, host, limits)
    exports = instance.exports(store)
    memory = exports.get("memory")
    state.memory = memory if isinstance(memory, wasmtime.Memory) else None
    entry, func = _entry_point(store, exports)
    try:
        func(store)
    except wasmtime.Trap as exc:
        raise _translate_trap(exc, limits) from exc
    except wasmtime.WasmtimeError as exc:
        raise GuestTrap(f"guest failed: {_wasmtime_reason(exc)}") from exc
    fuel_used = limits.fuel - store.get_fuel()
    keep = entry == "run" and state.new_payload is not None and not state.unchanged
    new_payload = bytes(state.new_payload) if keep and state.new_payload is not None else None
    return GuestRun(
        entry=entry,
        new_payload=new_payload,
        fuel_used=fuel_used,
        requests=state.requests,
        duration_ms=(time.monotonic() - started) * 1000,
        unchanged=state.unchanged,
        log_lines=state.log_lines,
    )


def _instantiate(
    store: wasmtime.Store, module: wasmtime.Module, host: HostFunctions, limits: GuestLimits
) -> wasmtime.Instance:
    wanted = [(imp.module, imp.name) for imp in module.imports]
    funcs = host.imports(name for module_name, name in wanted if module_name == IMPORT_MODULE and name)
    imports: list[wasmtime.Func] = []
    for module_name, name in wanted:
        if module_name != IMPORT_MODULE or name not in funcs:
            # Import names are the guest's: escaped so they cannot forge a log or terminal line.
            shown = f"{escape_text(module_name, 64)}::{escape_text(name or '', 64)}"
            raise GuestTrap(f"instantiation failed: unknown import {shown}")
        imports.append(funcs[name])
    try:
        return wasmtime.Instance(store, module, imports)
    except wasmtime.Trap as exc:
        # A start function runs under the same budgets as the entry point: translate its trap the same way.
        raise _translate_trap(exc, limits, stage="instantiation trapped") from exc
    except wasmtime.WasmtimeError as exc:
        raise GuestTrap(f"instantiation failed: {_wasmtime_reason(exc)}") from exc


def _entry_point(store: wasmtime.Store, exports: InstanceExports) -> tuple[str, wasmtime.Func]:
    for name in ENTRY_POINTS:
        func = exports.get(name)
        if isinstance(func, wasmtime.Func):
            ty = func.type(store)
            if not ty.params and not ty.results:
                return name, func
    raise GuestTrap("No entry point found")


def _code_name(exc: wasmtime.Trap) -> str | None:
    code = exc.trap_code
    return None if code is None else code.name


def _translate_trap(
    exc: wasmtime.Trap, limits: GuestLimits, stage: str = "guest trapped"
) -> GuestTrap | GuestOutOfFuel:
    if exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return GuestOutOfFuel(f"guest used all {limits.fuel} units of fuel")
    return GuestTrap(f"{stage}: {_code_name(exc) or _wasmtime_reason(exc)}", trap_code=_code_name(exc))


def _wasmtime_reason(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> str:
    """wasmtime's own words for an error, without the backtrace (whose frames carry names from the guest's
    name section) and escaped, bounded: a guest must not choose the text of an error or a log line."""
    text = exc.message if isinstance(exc, wasmtime.Trap) else str(exc)
    first = text.split("\n", 1)[0].split("wasm backtrace", 1)[0].strip() if text else ""
    return escape_text(first or "trap", 200)
