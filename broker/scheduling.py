"""Redis records of the refresh scheduler: the lease one mountd holds to schedule, and its published summary.

Several mountd replicas may serve one store. Each runs a ``mountd.refresh.scheduler.RefreshScheduler``, but
only the
holder of the store's lease asks for proactive refreshes, so two replicas do not double the refresh traffic
(claims would merge the duplicate requests, but each duplicate still costs a claim round trip and a walk).
The lease is a Redis string ``SCHEDULER_LEASE_PREFIX + scope`` holding the holder's token, with a TTL: the
holder renews it about every ``LEASE_TTL_MS / 5``; when the holder dies, the key expires and another replica
takes it at its next attempt, within ``LEASE_TTL_MS`` plus one attempt interval.

The holder also publishes what ``syncctl status`` shows about freshness (archives watched, expired now,
backlog, refresh lag) as a JSON string ``SCHEDULER_SUMMARY_PREFIX + scope`` with a TTL, so a summary of a
dead scheduler disappears on its own.

Invariants: taking, renewing and releasing the lease are each one atomic command or script; renewing and
releasing compare the token, so a holder whose lease expired and was taken cannot extend or delete the new
holder's lease.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from broker.contract import CLAIM_PREFIX, KEY_PREFIX
from broker.redis_client import translated

#: Key prefix of a scheduler lease (one per store scope).
SCHEDULER_LEASE_PREFIX = KEY_PREFIX + "scheduler:lease:"
#: Key prefix of a scheduler's published summary.
SCHEDULER_SUMMARY_PREFIX = KEY_PREFIX + "scheduler:summary:"
#: Lifetime of a lease after its last renewal, in milliseconds: how long a dead holder blocks a takeover.
LEASE_TTL_MS = 5_000
#: Lifetime of a published summary, in milliseconds (it is rewritten about once a second).
SUMMARY_TTL_MS = 10_000

# KEYS[1] the lease key; ARGV[1] the token; ARGV[2] "renew" (with ARGV[3] the TTL in ms) or "release".
_LEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


class SchedulerLease:
    """The right to schedule proactive refreshes of one store, held by at most one process at a time.

    Args:
        client: A Redis client (``decode_responses=True``).
        scope: Names the store (e.g. its absolute path): replicas of the same store must pass the same.
        ttl_ms: Lifetime after each take or renewal.
    """

    def __init__(self, client: redis.Redis, scope: str, *, ttl_ms: int = LEASE_TTL_MS) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, not {ttl_ms}")
        self.client = client
        self.key = SCHEDULER_LEASE_PREFIX + scope
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self._script = client.register_script(_LEASE_LUA)

    def __repr__(self) -> str:
        return f"SchedulerLease({self.key})"

    def acquire(self) -> bool:
        """Take the lease if it is free, or renew it if this process holds it.

        Returns:
            True when this process holds the lease now.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        with translated(self.client, "take scheduler lease"):
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return True
            return bool(self._script(keys=[self.key], args=[self.token, "renew", self.ttl_ms]))

    def release(self) -> bool:
        """Give the lease up if this process holds it (a replica takes it at its next attempt).

        Returns:
            True when it was held and is now deleted.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        with translated(self.client, "release scheduler lease"):
            return bool(self._script(keys=[self.key], args=[self.token, "release", 0]))

    def holder(self) -> str | None:
        """The token of the current holder, if any (for display and tests)."""
        with translated(self.client, "read scheduler lease"):
            value = self.client.get(self.key)
        return None if value is None else str(value)


def claims_held(client: redis.Redis, archives: list[str]) -> list[bool]:
    """Whether each archive's refresh claim exists (a refresh is queued or running), in one round trip.

    Args:
        client: A Redis client.
        archives: Archive keys (already valid: they came from the scheduler's walk).

    Returns:
        One flag per archive, in order.

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    if not archives:
        return []
    pipe = client.pipeline(transaction=False)
    for archive in archives:
        pipe.exists(CLAIM_PREFIX + archive)
    with translated(client, "probe claims"):
        return [bool(n) for n in pipe.execute()]


def write_summary(client: redis.Redis, scope: str, summary: dict[str, Any]) -> None:
    """Publish the scheduler's summary of ``scope`` (replacing the last one), living ``SUMMARY_TTL_MS``.

    Args:
        client: A Redis client.
        scope: The store's scope, as for the lease.
        summary: A JSON-serialisable object.

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    with translated(client, "write scheduler summary"):
        client.set(SCHEDULER_SUMMARY_PREFIX + scope, json.dumps(summary), px=SUMMARY_TTL_MS)


def read_summaries(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every live scheduler summary, by scope.

    Args:
        client: A Redis client.

    Returns:
        Scope → summary (summaries that do not decode as JSON objects are left out).

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    found: dict[str, dict[str, Any]] = {}
    with translated(client, "read scheduler summaries"):
        keys = sorted(str(k) for k in client.scan_iter(match=SCHEDULER_SUMMARY_PREFIX + "*", count=100))
        values = client.mget(keys) if keys else []
    for key, value in zip(keys, values, strict=True):
        try:
            doc = json.loads(value) if value is not None else None
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            found[key.removeprefix(SCHEDULER_SUMMARY_PREFIX)] = doc
    return found
