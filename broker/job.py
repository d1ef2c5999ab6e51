"""One delivery of a refresh request, from start to release: the job's whole life in the broker.

A producer claims the archive and sends the request (``broker.requests``); a worker builds a ``RefreshJob``
for each delivery and drives it: ``start`` (take the claim as this execution and mark the status running),
``heartbeat`` while the refresh runs, then exactly one end: ``complete`` (the status, the "swapped"
notification on commit, release), ``retry`` (the status, and the claim kept for the retry's countdown) or
``give_up`` (the status, the failed list, release). After a failure, and after an ``unchanged`` end, the
claim can instead be kept for a cooldown with no runner: the archive is still expired, and requests
meanwhile merge into the claim instead of each starting a job (``Settings.refresh_cooldown``). What counts
as retryable is the worker's call (``workers.outcomes``); this object only carries out each change.

Invariants: every change of state is one Lua script call, composed of the claim's and the status record's
functions (``broker.claims``, ``broker.status``), so the claim, the status, the history, the failed list and
the notification never disagree, and a refresh costs two round trips plus its heartbeats. The claim is
compared by token as in ``broker.claims``: a job whose claim was taken by a newer request still writes its
status but neither releases nor requeues the newer claim. A job that was not started ends nothing.

An end records what already happened (a commit is on disk by then), so it outlives a short Redis outage: it
is tried again with a growing pause for up to ``END_RETRY_SECONDS`` before ``BrokerUnavailable`` is
raised. A script that ran but whose reply was lost (Redis stopped between running it and sending the reply)
must not be applied again: the end script leaves a receipt under ``END_PREFIX + runner`` (this execution's
unique id) holding its reply, and a later try that finds the receipt returns that reply and writes nothing.
The receipt expires after ``END_RECEIPT_SECONDS``, far beyond the retry window. A failed-list entry's
``error`` and ``error_code`` are escaped and bounded (``sync_format.escape``) whatever the outcome held.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from broker.claims import CLAIM_LUA_FUNCTIONS, Claims, claim_key
from broker.contract import (
    END_PREFIX,
    FAILED_INDEX_KEY,
    FAILED_KEY,
    STATUS_INDEX_KEY,
    SWAPPED_CHANNEL,
    RefreshRequest,
    RefreshStatus,
)
from broker.failed import FAILED_LENGTH, FAILED_PUSH_LUA, FailedJob
from broker.redis_client import translated
from broker.status import (
    MAX_ERROR_LENGTH,
    STATUS_LUA_FUNCTIONS,
    STATUS_WRITE_ARGS_LUA,
    StatusRecord,
    history_key,
    prepare_write,
    running_fields,
    status_key,
)
from broker.swapped import SwappedEvent
from sync_format.errors import BrokerUnavailable
from sync_format.escape import escape_text

# start: KEYS = claim, status, index; ARGV = token, ttl, runner, archive, running field/value pairs...
# Returns the claim's {ok, merged}; the status says "running" only when the claim was taken.
log = logging.getLogger(__name__)

#: Seconds the end of a job keeps trying while Redis cannot be reached (a restart of Redis takes seconds).
END_RETRY_SECONDS = 60.0
#: Longest ``error_code`` kept in a failed-list entry, in characters (``error`` is bounded as in the status).
ERROR_CODE_LIMIT = 64
#: First pause between two tries of an end, in seconds; it doubles up to ``END_RETRY_MAX_PAUSE``.
END_RETRY_PAUSE = 0.2
END_RETRY_MAX_PAUSE = 5.0
#: Lifetime of an end's receipt (``END_PREFIX + runner``), in seconds: longer than any retry of that end.
END_RECEIPT_SECONDS = 600

_START_LUA = (
    CLAIM_LUA_FUNCTIONS
    + STATUS_LUA_FUNCTIONS
    + """
local r = claim_op(KEYS[1], 'start', ARGV[1], ARGV[2], ARGV[3])
if r[1] == 1 then
  status_running(KEYS[2], KEYS[3], ARGV[4], slice(5, #ARGV - 4))
end
return r
"""
)
# end: KEYS = claim, status, history, index, failed, receipt, failed index; ARGV = token, claim op
# ("release", "requeue" or "cool"), ttl, archive, swapped message ("" for none), failed entry ("" for none),
# failed length, receipt seconds, status write args... Returns {attempts, claim ok, merged}; the same reply,
# and no write, when the receipt exists (this end already ran: a retry after a lost reply).
_END_LUA = (
    CLAIM_LUA_FUNCTIONS
    + STATUS_LUA_FUNCTIONS
    + STATUS_WRITE_ARGS_LUA
    + FAILED_PUSH_LUA
    + """
local receipt = redis.call('GET', KEYS[6])
if receipt then
  local a, h, m = string.match(receipt, '^(%d+):(%d+):(%d+)$')
  if a then
    return {tonumber(a), tonumber(h), tonumber(m)}
  end
  return redis.error_reply('end script: malformed receipt')
end
local absent, fields, head, tail, hlen = status_write_args(9)
local r = claim_op(KEYS[1], ARGV[2], ARGV[1], ARGV[3], '')
if r.err then
  return r
end
local attempts = status_write(KEYS[2], KEYS[3], KEYS[4], ARGV[4], absent, fields, head, tail, hlen)
if not attempts then
  return redis.error_reply('status script: attempts is not an integer')
end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', '"""
    + SWAPPED_CHANNEL
    + """', ARGV[5])
end
if ARGV[6] ~= '' then
  failed_push(KEYS[5], KEYS[7], ARGV[4], ARGV[6], tonumber(ARGV[7]))
end
redis.call('SET', KEYS[6], attempts .. ':' .. r[1] .. ':' .. (r[2] or 0), 'EX', tonumber(ARGV[8]))
return {attempts, r[1], r[2]}
"""
)


@dataclass(frozen=True)
class JobEnd:
    """What ending a job wrote.

    Attributes:
        record: The status record as written.
        claim_held: The claim was still this request's (and was released or requeued).
        merged: Requests merged into the claim while it was held.
    """

    record: StatusRecord
    claim_held: bool
    merged: int


class RefreshJob:
    """The broker side of one delivery of a refresh request.

    Args:
        client: Redis client (``decode_responses=True``) of the broker's Redis.
        request: The decoded request (its archive key was checked when it was decoded).
        worker: The worker's name (Celery hostname).
        job_id: The Celery task id.
        claim_ttl_ms: Lifetime of the running claim after each heartbeat, in milliseconds.
    """

    def __init__(
        self, client: redis.Redis, request: RefreshRequest, *, worker: str, job_id: str, claim_ttl_ms: int
    ) -> None:
        if claim_ttl_ms <= 0:
            raise ValueError(f"claim TTL must be positive, not {claim_ttl_ms}")
        self.client = client
        self.request = request
        self.worker = worker
        self.job_id = job_id
        self.claim_ttl_ms = claim_ttl_ms
        #: Unique to this execution: a redelivered copy of the same request gets another one.
        self.runner = f"{worker}/{os.getpid()}/{uuid.uuid4().hex}"
        self._start = client.register_script(_START_LUA)
        self._end = client.register_script(_END_LUA)
        self._claims = Claims(client)
        self._claim = claim_key(request.archive)

    def start(self, *, now: datetime | None = None) -> bool:
        """Take the claim as this execution and mark the archive's status running, in one step.

        Args:
            now: Start time; the current time when None.

        Returns:
            True when this execution may run; False when another request holds the archive (superseded)
            or another execution of this request runs (a duplicate delivery): nothing was written then.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        archive = self.request.archive
        fields = running_fields(
            archive, generation=self.request.base_generation, worker=self.worker, job_id=self.job_id, now=now
        )
        keys = [self._claim, status_key(archive), STATUS_INDEX_KEY]
        args = [self.request.request_id, self.claim_ttl_ms, self.runner, archive, *fields]
        with translated(self.client, "start"):
            ok, _merged = self._start(keys=keys, args=args)
        return bool(ok)

    def heartbeat(self) -> bool:
        """Keep the claim alive for another ``claim_ttl_ms``.

        Returns:
            True when extended; False when the claim expired or another request holds it.

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        return self._claims.heartbeat(self.request.archive, self.request.request_id, self.claim_ttl_ms).ok

    def complete(
        self, outcome: Mapping[str, Any], *, cooldown_ms: int = 0, now: datetime | None = None
    ) -> JobEnd:
        """End a job that needs no retry and did not fail: status, "swapped" on commit, release (after
        ``cooldown_ms`` when nothing changed: the archive is still expired, and reads must not start a job
        each).

        Args:
            outcome: ``RefreshOutcome.to_json()`` with ``archive`` the key (see ``broker.status``).
            cooldown_ms: How long the claim is kept, with no runner, after an ``unchanged`` end.
            now: End time; the current time when None.

        Returns:
            What was written.

        Raises:
            MalformedRecord: An outcome field is missing or of the wrong type.
            BrokerUnavailable: Redis cannot be reached.
        """
        swapped = ""
        if outcome.get("status") == RefreshStatus.COMMITTED:
            event = SwappedEvent(self.request.archive, int(outcome["generation"]))
            swapped = json.dumps(event.to_json())
        if cooldown_ms > 0 and outcome.get("status") == RefreshStatus.UNCHANGED:
            return self._end_with(outcome, "cool", cooldown_ms, now=now)
        return self._end_with(outcome, "release", 0, swapped=swapped, now=now)

    def retry(self, outcome: Mapping[str, Any], *, hold_ms: int, now: datetime | None = None) -> JobEnd:
        """End this attempt with a retry to come: status, and the claim kept ``hold_ms`` with no runner.

        Args:
            outcome: ``RefreshOutcome.to_json()`` with ``archive`` the key.
            hold_ms: How long the claim waits for the retry (its countdown and a margin), in milliseconds.
            now: End time; the current time when None.

        Returns:
            What was written.

        Raises:
            MalformedRecord: An outcome field is missing or of the wrong type.
            BrokerUnavailable: Redis cannot be reached.
        """
        if hold_ms <= 0:
            raise ValueError(f"hold must be positive, not {hold_ms}")
        return self._end_with(outcome, "requeue", hold_ms, now=now)

    def give_up(
        self,
        outcome: Mapping[str, Any],
        failed: FailedJob,
        *,
        cooldown_ms: int = 0,
        now: datetime | None = None,
    ) -> JobEnd:
        """End a job for good after a failure: status, the failed list, release (after ``cooldown_ms``).

        Args:
            outcome: ``RefreshOutcome.to_json()`` with ``archive`` the key.
            failed: The entry for the failed list.
            cooldown_ms: How long the claim is kept, with no runner: requests meanwhile merge into it
                rather than each starting a job that would fail the same way.
            now: End time; the current time when None.

        Returns:
            What was written.

        Raises:
            MalformedRecord: An outcome field is missing or of the wrong type.
            BrokerUnavailable: Redis cannot be reached.
        """
        entry = json.dumps(failed.to_json(), separators=(",", ":"))
        if cooldown_ms > 0:
            return self._end_with(outcome, "cool", cooldown_ms, failed=entry, now=now)
        return self._end_with(outcome, "release", 0, failed=entry, now=now)

    def failed_entry(self, outcome: Mapping[str, Any], *, attempts: int, at: datetime) -> FailedJob:
        """The failed-list entry of this job for ``outcome``.

        Args:
            outcome: The outcome document (``error_code``, ``error``).
            attempts: Attempts made, this one included.
            at: When the job gave up.

        Returns:
            The entry.
        """
        code, error = outcome.get("error_code"), outcome.get("error")
        # The outcome's text may quote an archive's guest (a worker of another release may not have escaped
        # it): escaped and bounded here, where it enters the list operators read.
        return FailedJob(
            request=self.request,
            error_code=None if code is None else escape_text(code, ERROR_CODE_LIMIT),
            error=None if error is None else escape_text(error, MAX_ERROR_LENGTH),
            worker=self.worker,
            job_id=self.job_id,
            attempts=attempts,
            failed_at=at,
        )

    def _end_with(
        self,
        outcome: Mapping[str, Any],
        claim_op: str,
        ttl_ms: int,
        *,
        swapped: str = "",
        failed: str = "",
        now: datetime | None = None,
    ) -> JobEnd:
        archive = self.request.archive
        write = prepare_write(archive, outcome, worker=self.worker, job_id=self.job_id, now=now)
        keys = [
            self._claim,
            status_key(archive),
            history_key(archive),
            STATUS_INDEX_KEY,
            FAILED_KEY,
            END_PREFIX + self.runner,
            FAILED_INDEX_KEY,
        ]
        head: list[Any] = [
            self.request.request_id,
            claim_op,
            ttl_ms,
            archive,
            swapped,
            failed,
            FAILED_LENGTH,
            END_RECEIPT_SECONDS,
        ]
        deadline = time.monotonic() + END_RETRY_SECONDS
        pause = END_RETRY_PAUSE
        while True:
            try:
                with translated(self.client, claim_op):
                    attempts, held, merged = self._end(keys=keys, args=[*head, *write.args])
                break
            except BrokerUnavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "job end waits for the broker archive=%s job=%s end=%s error=%s",
                    archive,
                    self.job_id,
                    claim_op,
                    exc,
                )
                time.sleep(pause)
                pause = min(pause * 2, END_RETRY_MAX_PAUSE)
        return JobEnd(write.written(int(attempts)), bool(held), int(merged))
