"""The retry backoff: exponential, capped, jittered within bounds."""

from __future__ import annotations

import random

import pytest

from broker import RetryPolicy


def test_delays_grow_exponentially_within_equal_jitter_bounds() -> None:
    """Retry ``n`` waits between half and all of ``min(max_delay, base * 2**n)``."""
    policy = RetryPolicy(max_retries=8, base_delay=2.0, max_delay=60.0)
    rng = random.Random(1)
    for retries in range(10):
        ceiling = min(60.0, 2.0 * 2**retries)
        for _ in range(200):
            assert ceiling / 2 <= policy.delay(retries, rng) <= ceiling


def test_delays_are_jittered() -> None:
    """Two archives failing together do not retry at the same moment."""
    policy = RetryPolicy()
    rng = random.Random(2)
    assert len({policy.delay(3, rng) for _ in range(50)}) == 50


def test_huge_retry_numbers_stay_capped() -> None:
    """The cap holds for any retry number (no overflow)."""
    assert RetryPolicy(max_delay=30.0).delay(10_000) <= 30.0


def test_should_retry_counts_retries_after_the_first_attempt() -> None:
    """``max_retries`` retries are allowed, then the job gives up."""
    policy = RetryPolicy(max_retries=2)
    assert [policy.should_retry(n) for n in range(4)] == [True, True, False, False]


def test_invalid_policies_and_retry_numbers_are_refused() -> None:
    """A policy with a cap below its base, or a negative retry number, is a programming error."""
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(base_delay=10.0, max_delay=1.0)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy().delay(-1)
