"""Failed jobs kept for operators: refreshes that gave up, with the request that can be sent again.

A job lands here when its failure is deterministic (a guest trap, a policy refusal: never retried) or when a
transient failure outlived its retries; the decision is the worker's (``workers/outcomes.py``). Celery's
own failure state is not kept (results are off), and its retries republish the message, so this list and
the status records (``broker.status``) are where a failure stays visible.

Invariants: the list ``FAILED_KEY`` holds JSON entries, newest first, never more than ``FAILED_LENGTH``
(push and trim are one transaction); entries decode strictly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from broker.contract import (
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

# KEYS[1] the failed list; ARGV[1] an archive key. Removes every entry whose request names the archive (an
# entry that does not decode is left alone) and returns how many went: one step, whatever others push.
_FORGET_LUA = """
local removed = 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ok, job = pcall(cjson.decode, entry)
  if ok and type(job) == 'table' and type(job.request) == 'table' and job.request.archive == ARGV[1] then
    removed = removed + redis.call('LREM', KEYS[1], 0, entry)
  end
end
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
    """Keep a failed job where operators see it.

    Args:
        client: Redis client.
        job: The job.

    Raises:
        BrokerUnavailable: Redis cannot be reached.
    """
    pipe = client.pipeline(transaction=True)
    pipe.lpush(FAILED_KEY, json.dumps(job.to_json(), separators=(",", ":")))
    pipe.ltrim(FAILED_KEY, 0, FAILED_LENGTH - 1)
    with translated(client, "record failed job"):
        pipe.execute()


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
        return int(client.register_script(_FORGET_LUA)(keys=[FAILED_KEY], args=[ArchiveKey(archive)]))
