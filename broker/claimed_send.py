"""Claim an archive and put its refresh message on the queue in one Redis script: one round trip per request.

``request_refresh`` used to claim (one script), then let Celery send the task (kombu's ``LPUSH``) and the
``task-sent`` event (a ``PUBLISH``): three round trips, and a window between the claim and the send in which a
failure left a claim without a message (released afterwards, best effort). Here Celery and kombu build the
message exactly as they always do, but inside a kombu publish batch whose session collects the final Redis
commands instead of running them (kombu's Redis transport hands each batched publish to the session's
``add(name, *args)``: ``lpush`` of the message onto the queue's list, ``publish`` of the event on its topic).
One script then takes the claim and, only if it was taken, runs those commands. Workers consume the message
with the stock transport: its bytes are the ones kombu would have pushed.

Invariants:
    * Atomic: a refused claim (merged) sends nothing (a stale claim's holder is re-sent afterwards by
      ``broker.requests``, outside the script); a taken claim and its message are written together by
      one script, so a Redis failure leaves either both or neither (no orphan claim, no unclaimed message).
      The one write that could fail inside the script (a push onto a key that is not a list) is checked
      before anything is written.
    * Nothing reaches Redis during the capture: the session refuses to flush, and kombu's own batch flush
      is a no-op here; the script is the only write. A capture that yields no queue push, or a command this
      module does not know, is a programming error (kombu changed): nothing is claimed or sent then.
    * Used only where it is exactly equivalent: the producer's channel batches publishes (kombu's
      ``supports_batch_publish``), has no global key prefix, and talks to the same Redis server and database
      as the claims client. Otherwise ``claim_and_send`` returns None and the caller claims, then sends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]

from broker.claims import CLAIM_LUA_FUNCTIONS, ClaimResult, claim_key
from broker.redis_client import translated

# KEYS[1]  the archive's claim key; KEYS[2..]  the keys of the collected key commands, in order
# ARGV[1]  the request id (claim token); ARGV[2]  the claim's TTL in milliseconds; ARGV[3] the claim
#          operation ("claim", or "force" for an operator's explicit refresh: ``broker.claims``)
# ARGV[4..] the collected commands as triples: op ("lpush", "pexpire", "publish"), argument, value;
#           lpush/pexpire act on the next KEYS entry (argument repeats it), publish on channel "argument"
# Returns the claim's {ok, merged}; the commands run only when ok is 1. A script has no rollback, so what
# could fail after the claim is checked before it: a queue key that holds something else than a list is an
# error reply, and nothing changes.
_CLAIM_AND_SEND_LUA = (
    CLAIM_LUA_FUNCTIONS
    + """
local k = 2
for i = 4, #ARGV, 3 do
  if ARGV[i] == 'lpush' then
    local kind = redis.call('TYPE', KEYS[k]).ok
    if kind ~= 'none' and kind ~= 'list' then
      return redis.error_reply('claim and send: queue key ' .. KEYS[k] .. ' holds a ' .. kind)
    end
  end
  if ARGV[i] == 'lpush' or ARGV[i] == 'pexpire' then
    k = k + 1
  end
end
if ARGV[3] ~= 'claim' and ARGV[3] ~= 'force' then
  return redis.error_reply('claim and send: unknown claim operation ' .. tostring(ARGV[3]))
end
local r = claim_op(KEYS[1], ARGV[3], ARGV[1], ARGV[2], '')
if r.err or r[1] ~= 1 then
  return r
end
k = 2
for i = 4, #ARGV, 3 do
  local op = ARGV[i]
  if op == 'lpush' then
    redis.call('LPUSH', KEYS[k], ARGV[i + 2])
    k = k + 1
  elseif op == 'pexpire' then
    redis.call('PEXPIRE', KEYS[k], ARGV[i + 2])
    k = k + 1
  elseif op == 'publish' then
    redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
  end
end
return r
"""
)
#: The commands kombu's Redis transport adds to a publish batch that the script knows how to run.
KEY_COMMANDS = frozenset({"lpush", "pexpire"})
KNOWN_COMMANDS = KEY_COMMANDS | {"publish"}
#: Connection parameters that must agree for the claims client and the broker channel to be one database,
#: with redis-py's default where a URL leaves one out (a ``unix://`` URL names no database: 0).
_SAME_DATABASE = {"host": None, "port": None, "path": None, "db": 0}


class CaptureError(RuntimeError):
    """kombu did not hand the message over as this module expects; nothing was claimed or sent."""


@dataclass
class CapturedPublish:
    """Stands in for kombu's Redis publish batch of one send: it keeps the commands instead of running them.

    The attributes and methods are the session protocol of ``kombu.messaging.Producer.batch``.
    """

    channel: Any
    commands: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def publish(self, message: Any, **kwargs: Any) -> Any:
        """Route one prepared message through the channel; its final commands come back through ``add``."""
        return self.channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        """Keep one final Redis command of the message being routed."""
        self.commands.append((name, args))

    def flush(self) -> None:
        """Nothing to do: the claim script runs the commands."""

    def discard(self) -> None:
        """Forget what was collected (kombu calls this when the send raised)."""
        self.commands.clear()

    def close(self) -> None:
        """Nothing is held."""


def claim_and_send(
    app: Celery,
    client: redis.Redis,
    archive: str,
    token: str,
    ttl_ms: int,
    send: Callable[[Any], object],
    *,
    force: bool = False,
) -> ClaimResult | None:
    """Claim ``archive`` and, only if the claim was taken, push the message ``send`` builds: one script.

    Args:
        app: The producer app (its producer pool supplies the channel).
        client: The claims client (``make_redis``); it runs the script.
        archive: Archive key.
        token: The request id.
        ttl_ms: Lifetime of the claim if taken, in milliseconds.
        send: Sends the task through the producer it is given (``app.send_task(..., producer=p)``); what it
            publishes is collected, not sent.
        force: Take over a claim no job runs under (``Claims.claim``).

    Returns:
        The claim's result (the message was pushed exactly when ``ok``), or None when this producer's
        channel cannot be used this way (the caller claims, then sends).

    Raises:
        BrokerUnavailable: Redis cannot be reached by the script (nothing was claimed or sent).
        CaptureError: kombu routed the message in a way this module does not know (nothing was sent).
        Exception: What ``send`` raises while building the message (nothing was sent); connection errors of
            the broker channel are kombu's and Celery's (``UNAVAILABLE_ERRORS``).
    """
    key = claim_key(archive)
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        if not _batchable(producer, channel, client):
            return None
        capture = CapturedPublish(channel)
        # kombu asks the channel for a batch session on the first publish inside ``producer.batch()``; this
        # pooled channel is ours until the producer goes back to the pool, and the override is removed then.
        channel.create_publish_batch = lambda max_size: capture
        try:
            with producer.batch():
                send(producer)
        finally:
            del channel.create_publish_batch
    keys: list[str] = [key]
    args: list[str | int] = [token, ttl_ms, "force" if force else "claim"]
    for name, command in capture.commands:
        if name not in KNOWN_COMMANDS or len(command) != 2:
            raise CaptureError(f"kombu batched an unexpected Redis command {name!r} ({len(command)} args)")
        target, value = command
        if name in KEY_COMMANDS:
            keys.append(str(target))
        args += [name, str(target), value if isinstance(value, int) else str(value)]
    if not any(name == "lpush" for name, _ in capture.commands):
        raise CaptureError("kombu batched no queue push for the task message")
    script = client.register_script(_CLAIM_AND_SEND_LUA)
    with translated(client, "claim and send"):
        reply = script(keys=keys, args=args)
    return ClaimResult.from_reply(reply)


def _batchable(producer: Any, channel: Any, client: redis.Redis) -> bool:
    if not producer.supports_batch_publish or not hasattr(channel, "create_publish_batch"):
        return False
    if getattr(channel, "global_keyprefix", ""):
        return False
    theirs = channel.client.connection_pool.connection_kwargs
    ours = client.connection_pool.connection_kwargs
    return all(
        _normal(theirs.get(name, default)) == _normal(ours.get(name, default))
        for name, default in _SAME_DATABASE.items()
    )


def _normal(value: object) -> object:
    # kombu and redis-py spell the same parameter as int or str depending on how the URL was parsed.
    return str(value) if value is not None else None
