"""How long a refresh waits before it is tried again after a transient failure.

Which failures are transient (source unreachable, swap conflict) and which are deterministic (a guest trap,
a policy refusal: never retried) is decided where outcomes become retries, in ``workers/outcomes.py``
(CONTRIBUTING.md). This module only holds the numbers, because the broker depends on them: a retried task is
republished with a countdown and held unacknowledged by a worker until it is due, so the broker's
visibility timeout must exceed the longest delay (``broker.celery_app.visibility_timeout``).

Invariants: delays grow exponentially with the retry number, are capped at ``max_delay``, and are jittered
so that archives that failed together (one source went down) do not come back in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.settings import Settings

#: Retries after the first attempt before a job is given up and recorded as failed.
DEFAULT_MAX_RETRIES = 5
#: Delay ceiling of the first retry, in seconds; it doubles per retry.
DEFAULT_BASE_DELAY = 5.0
#: Largest delay of any retry, in seconds.
DEFAULT_MAX_DELAY = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter".

    Attributes:
        max_retries: Retries after the first attempt.
        base_delay: Ceiling of the first retry's delay, in seconds.
        max_delay: Cap on any delay, in seconds.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_delay <= 0 or self.max_delay < self.base_delay:
            raise ValueError(f"invalid retry policy {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy the settings configure (``SYNC_RETRY_*``).

        Args:
            settings: The process's settings.

        Returns:
            The policy.
        """
        return cls(settings.retry_max_retries, settings.retry_base_delay, settings.retry_max_delay)

    def should_retry(self, retries: int) -> bool:
        """Whether a job that has been retried ``retries`` times may be retried again.

        Args:
            retries: Retries so far (Celery's ``request.retries``).

        Returns:
            True while ``retries < max_retries``.
        """
        return retries < self.max_retries

    def delay(self, retries: int, rng: random.Random | None = None) -> float:
        """The countdown before retry number ``retries + 1``.

        Half of the exponential ceiling is fixed and half is random, so a retry never comes back at once
        (as full jitter allows) and retries of many archives still spread out.

        Args:
            retries: Retries so far (0 before the first retry).
            rng: Source of randomness; the module's shared generator when None.

        Returns:
            Seconds in ``[ceiling / 2, ceiling]``, ``ceiling = min(max_delay, base_delay * 2**retries)``.

        Raises:
            ValueError: ``retries`` is negative.
        """
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retries, 64))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
