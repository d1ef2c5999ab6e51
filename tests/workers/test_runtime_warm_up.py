"""The runtime's warm-up: the built-in guest it runs once in the parent before any child is forked."""

from __future__ import annotations

import pytest
import wasmtime

import workers.runtime as runtime_module
from workers.engine import make_engine
from workers.guest_runner import GuestRun
from workers.runtime import WARM_UP_WASM, warm_up

WARM_UP_WAT = """(module
  (import "host" "payload_write" (func (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (drop (call 0 (i32.const 0) (i32.const 1) (i32.const 0)))))"""


def test_the_warm_up_module_is_the_documented_one() -> None:
    assert bytes(wasmtime.wat2wasm(WARM_UP_WAT)) == WARM_UP_WASM


def test_warm_up_runs_the_builtin_guest_in_process() -> None:
    warm_up(make_engine())  # raises unless the guest wrote its one zero byte


def test_a_warm_up_that_writes_something_else_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(*_args: object, **_kwargs: object) -> GuestRun:
        return GuestRun(entry="run", new_payload=b"?", fuel_used=1, requests=0, duration_ms=0.0)

    monkeypatch.setattr(runtime_module, "run_guest", wrong)
    with pytest.raises(RuntimeError, match="warm-up guest wrote"):
        warm_up(make_engine())
