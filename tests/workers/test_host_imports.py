"""Host functions are built per instance only for what the module imports, from types built once per engine.

In process: these guests are the test's own and only call ``payload_write``; nothing here is confined.
"""

from __future__ import annotations

import guests
import wasmtime

from workers.engine import GuestLimits, compile_module, make_engine, make_store
from workers.guest_runner import run_guest
from workers.host_abi import SIGNATURES, HostFunctions, HostState, func_type

WRITER = guests.run_counter()


class _Quiet:
    """``GuestIO`` for guests that make no request."""

    def http_request(self, url: str, method: str) -> None:
        raise AssertionError("no request expected")

    def http_send(self, url: str, method: str, headers: bytes, body: bytes) -> None:
        raise AssertionError("no request expected")

    def log(self, line: str) -> None:
        raise AssertionError("no log expected")


def _host(engine: wasmtime.Engine) -> HostFunctions:
    store = make_store(engine, GuestLimits())
    return HostFunctions(store, HostState(payload=b"", max_payload_size=16, io=_Quiet()))


def test_only_the_named_host_functions_are_built() -> None:
    """A module's imports name what is built; a name that is no host function is left out (instantiation
    then refuses it by name); without names every function is built."""
    host = _host(make_engine())
    assert set(host.imports(["payload_write", "payload_size", "no_such_call"])) == {
        "payload_write",
        "payload_size",
    }
    assert set(host.imports()) == set(SIGNATURES)


def test_function_types_are_kept_per_engine() -> None:
    """Each engine gets its own types (wasmtime binds a type to the first engine it meets), so guests run
    on several engines of one process in any order."""
    first, second = make_engine(), make_engine()
    assert func_type(first, "payload_write") is func_type(first, "payload_write")
    assert func_type(first, "payload_write") is not func_type(second, "payload_write")
    for engine in (first, second, first):
        run = run_guest(engine, compile_module(engine, WRITER), b"", GuestLimits(), _Quiet())
        assert run.new_payload == b"\x01"
