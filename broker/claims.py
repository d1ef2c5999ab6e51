"""The one-refresh-per-archive claim: a Redis hash per archive, changed only by one registered Lua script.

Semantics are "strict": at most one refresh of an archive is queued or running at a time.

* A producer claims the archive with the request's id as token *before* sending the task (TTL
  ``QUEUED_CLAIM_TTL_MS``). A request arriving while the claim is held is merged: nothing is sent, and the
  claim's ``merged`` counter goes up so the job can report how many reads it served.
* The job that carries the request *starts* on the claim with the same token and a runner id unique to this
  execution, switching to ``RUNNING_CLAIM_TTL_MS``; it heartbeats about once a second and releases at the
  end. If the claim is held by another token, the job was superseded (see below) and must not run. If it is
  held by the same token but another live runner, the message was delivered twice (the broker redelivers
  a message whose job runs longer than the visibility timeout) and this copy must not run either.
* A job that schedules a retry *requeues* its claim: the runner is cleared and the TTL set to cover the
  countdown, so the retry can start while no other request for the archive is sent meanwhile.
* A job that failed for good or changed nothing *cools* its claim: kept with no runner for the cooldown,
  so that requests meanwhile merge into it, and marked so that no copy of its own message (a redelivery)
  starts on it either; an operator's ``force`` takes it over.
* Heartbeat and release compare the token, so a job whose claim expired and was taken by a newer request
  can neither extend nor delete the newer claim.

Why claims expire (TTL choice):
    * ``RUNNING_CLAIM_TTL_MS`` (30 s, 30 missed heartbeats at one per second) bounds how long a crashed job
      (SIGKILLed worker, lost host) blocks its archive; a job that merely stalls that long loses its claim,
      and the generation guard of ``commit_payload`` still keeps two overlapping jobs from both committing.
    * ``QUEUED_CLAIM_TTL_MS`` (10 min) bounds how long a lost message (a flushed Redis, a transport that
      dropped it) blocks the archive when nobody asks for it again. When the queue wait is longer than
      that, a second request may claim and send a second message; whichever job starts first holds the
      claim and the other finds it held by another token and drops out, so the archive is still refreshed
      once.
    * A merge into a queued claim whose job has not started ``STALE_QUEUED_CLAIM_MS`` (60 s) after its
      message was sent is told to send that message again, under the holder's token (at most once per 60 s
      and archive), so a lost message blocks a read archive for about a minute, not ten. A Redis restart can
      lose one on its way to a worker: Redis pops a BRPOP's item and logs the pop in its AOF, but a SIGTERM
      shutdown in the same event-loop turn never sends the reply; and Celery drops a requeue (``Reject``)
      whose result arrives after the connection was lost, leaving the message to kombu's restore. The copy
      is exactly-once safe: its job starts only on this token's claim with no other live runner, and a copy
      that comes after the first job ended finds the claim released and the archive fresh.

Invariants: every change of a claim is one atomic script call; there is no Python "check, then act".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from broker.contract import CLAIM_PREFIX, ArchiveKey
from broker.redis_client import translated

#: How long a claim taken at request time lives before its job starts heartbeating, in milliseconds.
QUEUED_CLAIM_TTL_MS = 10 * 60 * 1000
#: How long a running job's claim lives after its last heartbeat, in milliseconds.
RUNNING_CLAIM_TTL_MS = 30 * 1000
#: How long a queued claim (taken, its job not started) may wait before a merged request re-sends the
#: holder's message, in milliseconds; at most one re-send per this span and archive. Longer than a job's
#: usual queue wait, so a backlog costs few duplicates (which drop out at start, or find the archive fresh).
STALE_QUEUED_CLAIM_MS = 60 * 1000

# The claim script. One Lua function for every operation, so the rules live in one place: ``Claims`` calls
# it alone, ``broker.job`` within the scripts that also write the job's status (one script per state change).
#
# KEYS[1]  the archive's claim key (CLAIM_PREFIX + archive key): a hash {token, merged, sent, runner};
#          ``sent`` is when the holder's message was last sent (Redis server time, ms; for a requeued
#          claim, when its retry is due)
# ARGV[1]  operation: "claim", "force", "start", "heartbeat", "requeue", "cool" or "release"
# ARGV[2]  the caller's token (the refresh request id)
# ARGV[3]  TTL in milliseconds for every operation but "release" (a positive integer)
# ARGV[4]  "start" only: the runner id of this execution
#
# Returns {ok, merged}:
#   claim      free, or already held by this token: (re)take it with TTL ARGV[3]  -> {1, merged so far}
#              held by another token: merged += 1, TTL untouched               -> {0, merged after +1}
#              ... and no runner and ``sent`` at least STALE_QUEUED_CLAIM_MS ago: the holder's message is
#              presumed lost; ``sent`` := now, and the caller re-sends it        -> {0, merged, holder}
#   force      as claim, but a claim held by another token with no runner (a queued job, a retry's
#              countdown, a cooldown after a failed or unchanged end) is taken over  -> {1, 0}; the other
#              token's message, if one comes, then finds the claim not its own and drops out
#   start      free: take it for this token and runner                         -> {1, 0}
#              held by this token, no runner or this runner: set runner, TTL   -> {1, merged}
#              ... but cooling (below): nothing changes                         -> {0, merged}
#              held by this token and another runner: nothing changes          -> {0, merged}
#              held by another token: merged += 1                              -> {0, merged after +1}
#   heartbeat  held by this token: reset the TTL to ARGV[3]                    -> {1, merged}
#   requeue    held by this token: clear the runner, reset the TTL, ``sent`` := now + TTL -> {1, merged}
#   cool       as requeue, and mark the claim ``cooling``: the job ended (it failed for good or changed
#              nothing) and the claim is only kept for the cooldown; a copy of its message the broker
#              delivers again must not start on it (``force`` still takes it over) -> {1, merged}
#   release    held by this token: delete the claim                            -> {1, merged}
#   (heartbeat, requeue, release when not held by this token: nothing changes  -> {0, 0})
# An unknown operation or a bad TTL is an error reply; nothing changes.
CLAIM_LUA_FUNCTIONS = (
    f"local STALE_QUEUED_CLAIM_MS = {STALE_QUEUED_CLAIM_MS}\n"
    + """
local function claim_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function claim_op(key, op, token, ttl_text, runner)
  local holder = redis.call('HGET', key, 'token')
  local ttl = tonumber(ttl_text)
  if op ~= 'release' then
    if not ttl or ttl <= 0 then
      return redis.error_reply('claim script: TTL must be a positive number of milliseconds')
    end
  end
  if op == 'claim' or op == 'force' then
    if holder == false then
      redis.call('HSET', key, 'token', token, 'merged', 0, 'sent', claim_now_ms())
      redis.call('PEXPIRE', key, ttl)
      return {1, 0}
    end
    if holder == token then
      redis.call('HSET', key, 'sent', claim_now_ms())
      redis.call('HDEL', key, 'cooling')
      redis.call('PEXPIRE', key, ttl)
      return {1, tonumber(redis.call('HGET', key, 'merged'))}
    end
    if op == 'force' and redis.call('HEXISTS', key, 'runner') == 0 then
      redis.call('DEL', key)
      redis.call('HSET', key, 'token', token, 'merged', 0, 'sent', claim_now_ms())
      redis.call('PEXPIRE', key, ttl)
      return {1, 0}
    end
    local merged = redis.call('HINCRBY', key, 'merged', 1)
    local sent = tonumber(redis.call('HGET', key, 'sent'))
    if sent and redis.call('HEXISTS', key, 'runner') == 0 then
      local now = claim_now_ms()
      if now - sent >= STALE_QUEUED_CLAIM_MS then
        redis.call('HSET', key, 'sent', now)
        return {0, merged, holder}
      end
    end
    return {0, merged}
  end
  if op == 'start' then
    if not runner or runner == '' then
      return redis.error_reply('claim script: start needs a runner id')
    end
    if holder == false then
      redis.call('HSET', key, 'token', token, 'merged', 0, 'runner', runner)
      redis.call('PEXPIRE', key, ttl)
      return {1, 0}
    end
    if holder ~= token then
      return {0, redis.call('HINCRBY', key, 'merged', 1)}
    end
    local current = redis.call('HGET', key, 'runner')
    local merged = tonumber(redis.call('HGET', key, 'merged'))
    if (current ~= false and current ~= runner) or redis.call('HEXISTS', key, 'cooling') == 1 then
      return {0, merged}
    end
    redis.call('HSET', key, 'runner', runner)
    redis.call('PEXPIRE', key, ttl)
    return {1, merged}
  end
  if op ~= 'heartbeat' and op ~= 'requeue' and op ~= 'cool' and op ~= 'release' then
    return redis.error_reply('claim script: unknown operation ' .. tostring(op))
  end
  if holder ~= token then
    return {0, 0}
  end
  local merged = tonumber(redis.call('HGET', key, 'merged'))
  if op == 'heartbeat' then
    redis.call('PEXPIRE', key, ttl)
  elseif op == 'requeue' or op == 'cool' then
    -- the retry's message waits out its countdown in the worker: not stale before the claim expires
    redis.call('HDEL', key, 'runner')
    redis.call('HSET', key, 'sent', claim_now_ms() + ttl)
    if op == 'cool' then
      redis.call('HSET', key, 'cooling', 1)
    end
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('DEL', key)
  end
  return {1, merged}
end
"""
)
_CLAIM_LUA = CLAIM_LUA_FUNCTIONS + "return claim_op(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"


@dataclass(frozen=True)
class ClaimResult:
    """What a claim, heartbeat or release did.

    Attributes:
        ok: Claim: acquired (or re-taken by its holder). Heartbeat: extended. Release: deleted.
        merged: Requests merged into the claim so far (for a refused claim: including this one).
        resend: For a refused claim whose job never started within ``STALE_QUEUED_CLAIM_MS``: the holder's
            token; the caller sends the holder's message again (``broker.requests``).
    """

    ok: bool
    merged: int
    resend: str | None = None

    @classmethod
    def from_reply(cls, reply: Any) -> ClaimResult:
        """The result of a claim script's ``{ok, merged[, holder to re-send]}`` reply."""
        resend = str(reply[2]) if len(reply) > 2 and reply[2] else None
        return cls(bool(reply[0]), int(reply[1]), resend)


@dataclass(frozen=True)
class ClaimHolder:
    """Who holds an archive's claim right now (a read-only view for status displays).

    Attributes:
        token: The holder's token (its request id).
        merged: Requests merged into it.
        ttl_ms: Milliseconds until it expires unless renewed.
    """

    token: str
    merged: int
    ttl_ms: int


def claim_key(archive: str) -> str:
    """The Redis key of an archive's claim.

    Args:
        archive: Archive key.

    Returns:
        ``CLAIM_PREFIX + archive``.

    Raises:
        MalformedRecord: ``archive`` is not a valid archive key.
    """
    return CLAIM_PREFIX + ArchiveKey(archive)


class Claims:
    """The claim operations on one Redis client (the script is registered once per instance).

    Args:
        client: A client from ``make_redis`` (``decode_responses=True``).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_CLAIM_LUA)

    def claim(self, archive: str, token: str, ttl_ms: int, *, force: bool = False) -> ClaimResult:
        """Take the archive's claim, or merge into the one held.

        Args:
            archive: Archive key.
            token: The request id.
            ttl_ms: Lifetime of the claim if taken, in milliseconds.
            force: Also take over a claim no job is running under (an operator's explicit refresh: a
                cooldown after a failure must not swallow it).

        Returns:
            ``ok`` when taken (or already held by ``token``); otherwise merged.

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            ValueError: ``token`` is empty.
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._run(archive, "force" if force else "claim", token, ttl_ms)

    def start(self, archive: str, token: str, runner: str, ttl_ms: int) -> ClaimResult:
        """Start running the request ``token`` as execution ``runner``.

        Args:
            archive: Archive key.
            token: The request id the job carries.
            runner: An id unique to this execution of the job.
            ttl_ms: Lifetime of the claim from now, in milliseconds (heartbeats renew it).

        Returns:
            ``ok`` when this execution may run; not ok when another request holds the archive (superseded)
            or another execution of the same request is running (a duplicate delivery).

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            ValueError: ``token`` or ``runner`` is empty.
            BrokerUnavailable: Redis cannot be reached.
        """
        if not runner:
            raise ValueError("a runner id must not be empty")
        return self._run(archive, "start", token, ttl_ms, runner)

    def requeue(self, archive: str, token: str, ttl_ms: int) -> ClaimResult:
        """Keep the claim for a retry: clear the runner and hold it ``ttl_ms`` (the countdown and a margin).

        Args:
            archive: Archive key.
            token: The holder's token.
            ttl_ms: Lifetime from now, in milliseconds.

        Returns:
            ``ok`` when the claim was still held by ``token``.

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._run(archive, "requeue", token, ttl_ms)

    def heartbeat(self, archive: str, token: str, ttl_ms: int) -> ClaimResult:
        """Extend the claim if ``token`` holds it.

        Args:
            archive: Archive key.
            token: The holder's token.
            ttl_ms: New lifetime from now, in milliseconds.

        Returns:
            ``ok`` when extended; not ok when the claim expired or another token holds it.

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._run(archive, "heartbeat", token, ttl_ms)

    def release(self, archive: str, token: str) -> ClaimResult:
        """Delete the claim if ``token`` holds it (compare-and-delete).

        Args:
            archive: Archive key.
            token: The holder's token.

        Returns:
            ``ok`` when deleted, with the number of requests merged into it.

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._run(archive, "release", token, 0)

    def holder(self, archive: str) -> ClaimHolder | None:
        """Who holds the claim now, if anyone (not atomic with later changes: for display only).

        Args:
            archive: Archive key.

        Returns:
            The holder, or None when the archive is not claimed.

        Raises:
            MalformedRecord: ``archive`` is not a valid archive key.
            BrokerUnavailable: Redis cannot be reached.
        """
        key = claim_key(archive)
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.pttl(key)
        with translated(self._client, "read claim"):
            fields, ttl = pipe.execute()
        if not fields or "token" not in fields:
            return None
        return ClaimHolder(str(fields["token"]), int(fields.get("merged", 0)), int(ttl))

    def _run(self, archive: str, op: str, token: str, ttl_ms: int, runner: str = "") -> ClaimResult:
        if not token:
            raise ValueError("a claim token must not be empty")
        key = claim_key(archive)
        with translated(self._client, op):
            reply: Any = self._script(keys=[key], args=[op, token, ttl_ms, runner])
        return ClaimResult.from_reply(reply)
