"""Refresh outcomes map to retry decisions: transient failures retry with backoff, others never."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.outcomes import decide
from workers.refresh import ALREADY_FRESH, COMMITTED, FAILED, NO_UPDATE_LOGIC, UNCHANGED, RefreshOutcome


def _outcome(status: str, code: str | None = None, egress: tuple[str, ...] = ()) -> RefreshOutcome:
    return RefreshOutcome(Path("a.sync"), status, 0, 0, error_code=code, egress_errors=egress)


@pytest.mark.parametrize(
    ("outcome", "retry", "reason"),
    [
        (_outcome(COMMITTED), False, "ok"),
        (_outcome(COMMITTED, egress=("timeout",)), False, "ok"),
        (_outcome(UNCHANGED), False, "ok"),
        (_outcome(NO_UPDATE_LOGIC), False, "ok"),
        (_outcome(ALREADY_FRESH), False, "ok"),
        (_outcome(UNCHANGED, egress=("connect_failed",)), True, "source_unreachable"),
        (_outcome(FAILED, "guest_trap", egress=("dns_failed",)), True, "source_unreachable"),
        (_outcome(FAILED, "swap_conflict"), True, "swap_conflict"),
        (_outcome(FAILED, "guest_error"), True, "guest_error"),
        (_outcome(FAILED, "guest_trap"), False, "guest_trap"),
        (_outcome(FAILED, "guest_out_of_fuel"), False, "guest_out_of_fuel"),
        (_outcome(FAILED, "guest_timeout"), False, "guest_timeout"),
        (_outcome(FAILED, "guest_trap", egress=("host_not_allowed",)), False, "guest_trap"),
        (_outcome(FAILED, "policy_denied"), False, "policy_denied"),
        (_outcome(FAILED, "sandbox_unavailable"), False, "sandbox_unavailable"),
        (_outcome(FAILED, "malformed_archive"), False, "malformed_archive"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decide(outcome: RefreshOutcome, retry: bool, reason: str) -> None:
    """Each kind of outcome gets the retry decision the retry policy names."""
    decision = decide(outcome)
    assert (decision.retry, decision.reason) == (retry, reason)
