"""Failed jobs kept for operators: refreshes that gave up, with the request that can be sent again.

A job lands here when its failure is deterministic (a guest trap, a policy refusal: never retried) or when a
transient failure outlived its retries; the decision is the worker's (``workers/outcomes.py``). Celery's
own failure state is not kept (results are off), and its retries republish the message, so this list and
the status records (``broker.status``) are where a failure stays visible.

Invariants: the list ``FAILED_KEY`` holds JSON entries, newest first, never more than ``FAILED_LENGTH``,
and at most one per archive: a new failure of an archive replaces its previous entry (the status history,
``broker.status``, keeps every attempt), so that one archive failing again and again cannot push every
other archive's failure out of the list. ``FAILED_INDEX_KEY`` names each archive's entry; the push, the
replacement, the trim and the index are one Lua step (``FAILED_PUSH_LUA``, also run by the end of a job,
``broker.job``). Entries decode strictly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from broker.contract import (
    FAILED_INDEX_KEY,
    FAILED_KEY,
    ArchiveKey,
    MalformedRecord,
    RefreshRequest,
    format_time,
    parse_time,
    require_int,
)
from broker.redis_client import translated

#: Failed jobs kept (the oldest are dropped beyond it).
FAILED_LENGTH = 1000

_FIELDS = frozenset({"request", "error_code", "error", "worker", "job_id", "attempts", "failed_at"})

#: Lua: ``failed_push(list, index, archive, entry, length)`` puts ``entry`` first in the failed list in
#: place of ``archive``'s previous entry, trims the list to ``length`` and drops the trimmed entries from the
#: index (each names its archive: ``request.archive``; an entry that does not decode names none).
FAILED_PUSH_LUA = """
local function failed_push(list, index, archive, entry, length)
  local previous = redis.call('HGET', index, archive)
  if previous then
    redis.call('LREM', list, 1, previous)
  end
  redis.call('LPUSH', list, entry)
  redis.call('HSET', index, archive, entry)
  for _, old in ipairs(redis.call('LRANGE', list, length, -1)) do
    local ok, job = pcall(cjson.decode, old)
    if ok and type(job) == 'table' and type(job.request) == 'table' and type(job.request.archive) == 'string'
        and redis.call('HGET', index, job.request.archive) == old then
      redis.call('HDEL', index, job.request.archive)
    end
  end
  redis.call('LTRIM', list, 0, length - 1)
end
"""

# KEYS[1] the failed list, KEYS[2] its index; ARGV[1] an archive key, ARGV[2] the entry, ARGV[3] the length.
_RECORD_LUA = FAILED_PUSH_LUA + "failed_push(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))"

# KEYS[1] the failed list, KEYS[2] its index; ARGV[1] an archive key. Removes every entry whose request names
# the archive (an entry that does not decode is left alone) and its index entry, and returns how many went:
# one step, whatever others push.
_FORGET_LUA = """
local removed = 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' and type(job.request) == 'table' and job.request.archive == ARGV[1] then
    removed = removed + redis.call('LREM', KEYS[1], 0, entry)
  end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""


@dataclass(frozen=True)
class FailedJob:
    """A refresh job that gave up.

    Attributes:
        request: The request it carried (send it again to retry by hand).
        error_code: Stable failure code.
        error: Human-readable failure.
        worker: The worker that gave up.
        job_id: The Celery task id.
        attempts: Attempts made, the first included.
        failed_at: When it gave up.
    """

    request: RefreshRequest
    error_code: str | None
    error: str | None
    worker: str
    job_id: str
    attempts: int
    failed_at: datetime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Returns:
            Every field; the request as ``RefreshRequest.to_json()``.
        """
        return {
            "request": self.request.to_json(),
            "error_code": self.error_code,
            "error": self.error,
            "worker": self.worker,
            "job_id": self.job_id,
            "attempts": self.attempts,
            "failed_at": format_time(self.failed_at),
        }

    @classmethod
    def from_json(cls, data: object) -> FailedJob:
        """Decode an entry strictly.

        Args:
            data: The decoded JSON.

        Returns:
            The failed job.

        Raises:
            MalformedRecord: Wrong fields, types or values.
        """
        if not isinstance(data, dict) or set(data) != _FIELDS:
            raise MalformedRecord("failed_job", "must be an object with exactly the failed-job fields")
        for name in ("error_code", "error"):
            if data[name] is not None and not isinstance(data[name], str):
                raise MalformedRecord("failed_job", "must be a string or null", field=name)
        for name in ("worker", "job_id"):
            if not isinstance(data[name], str):
                raise MalformedRecord("failed_job", "must be a string", field=name)
        return cls(
            request=RefreshRequest.from_json(data["request"]),
            error_code=data["error_code"],
            error=data["error"],
            worker=data["worker"],
            job_id=data["job_id"],
            attempts=require_int(data["attempts"], "failed_job", "attempts", minimum=1),
            failed_at=parse_time(data["failed_at"], "failed_job", "failed_at"),
        )


def record_failed(client: redis.Redis, job: FailedJob) -> None:
    """Keep a failed job where operators see it, in place of its archive's previous one.

    Args:
        client: Redis client.
        job: The job.

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    entry = json.dumps(job.to_json(), separators=(",", ":"))
    with translated(client, "record failed job"):
        client.register_script(_RECORD_LUA)(
            keys=[FAILED_KEY, FAILED_INDEX_KEY], args=[job.request.archive, entry, FAILED_LENGTH]
        )


def list_failed(client: redis.Redis, limit: int = FAILED_LENGTH) -> list[FailedJob]:
    """The failed jobs, newest first.

    Args:
        client: Redis client.
        limit: Most entries returned.

    Returns:
        Up to ``limit`` jobs.

    Raises:
        MalformedRecord: An entry does not decode.
        BrokerUnavailable: Redis cannot be reached.
    """
    if limit <= 0:
        return []
    with translated(client, "list failed jobs"):
        entries = client.lrange(FAILED_KEY, 0, limit - 1)
    return [FailedJob.from_json(_load(entry)) for entry in entries]


def _load(entry: object) -> object:
    if not isinstance(entry, str):
        raise MalformedRecord("failed_job", "entry is not text")
    try:
        return json.loads(entry)
    except json.JSONDecodeError as exc:
        raise MalformedRecord("failed_job", f"entry is not JSON: {exc}") from exc


def forget_failed(client: redis.Redis, archive: ArchiveKey) -> int:
    """Drop every failed job of one archive (it was retried by hand, or left the store).

    Args:
        client: Redis client.
        archive: Archive key.

    Returns:
        How many entries were dropped.

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    with translated(client, "forget failed jobs"):
        keys = [FAILED_KEY, FAILED_INDEX_KEY]
        return int(client.register_script(_FORGET_LUA)(keys=keys, args=[ArchiveKey(archive)]))
