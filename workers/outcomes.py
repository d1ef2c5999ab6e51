"""Turn a refresh outcome into a decision: done, retry later, or give up (the one place; CONTRIBUTING.md).

Transient failures are retried, with the delays of ``broker.retry.RetryPolicy``: a swap conflict (another
writer moved the generation; the next attempt starts from the new payload), a sandbox child that died for
reasons of its own, and a guest whose source was unreachable (its HTTP requests got no response: DNS,
connect, TLS, timeout) and that then failed or produced nothing. Deterministic guest failures (traps, fuel,
a deadline passed without network trouble, policy refusals, a strict sandbox that cannot be built, a broken
archive) are not retried: running the same code on the same input would fail the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.refresh import COMMITTED, FAILED, UNCHANGED, RefreshOutcome

#: Egress error codes that mean "the source could not be reached", not "the guest is wrong".
UNREACHABLE_SOURCE = frozenset(
    {"dns_failed", "connect_failed", "timeout", "too_slow", "tls_failed", "bad_response", "body_read_failed"}
)
#: Failure codes that are transient whatever the guest did.
TRANSIENT_CODES = frozenset({"swap_conflict", "guest_error"})


@dataclass(frozen=True)
class Decision:
    """What to do after a refresh.

    Attributes:
        retry: Schedule another attempt.
        reason: Why (a stable code: the failure's code, ``source_unreachable`` or ``ok``).
    """

    retry: bool
    reason: str


def decide(outcome: RefreshOutcome) -> Decision:
    """Classify an outcome.

    Args:
        outcome: The refresh outcome.

    Returns:
        The decision.
    """
    unreachable = any(code in UNREACHABLE_SOURCE for code in outcome.egress_errors)
    if outcome.status == COMMITTED or (outcome.status != FAILED and not unreachable):
        return Decision(False, "ok")
    if outcome.status == UNCHANGED or (outcome.status == FAILED and unreachable):
        return Decision(True, "source_unreachable")
    code = outcome.error_code or "unknown"
    return Decision(code in TRANSIENT_CODES, code)
