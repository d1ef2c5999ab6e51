"""Status records of refreshes: the latest attempt per archive, and a short history, in Redis.

Workers write a record when a job starts (``mark_running``) and when it ends (``write_status``, from the
fields of ``RefreshOutcome.to_json()``); ``syncctl status`` and mountd read them. These records, not
Celery results, are the state of refreshes (results are off, see ``broker.celery_app``).

Layout (keys in ``broker.contract``):
    * ``sync:status:<archive>``: a hash with the fields of ``StatusRecord``; absent fields are None.
    * ``sync:history:<archive>``: a list of JSON records, newest first, trimmed to ``HISTORY_LENGTH``.
    * ``sync:status-index``: the set of archive keys that have a record, for ``list_status``.

Invariants: each write is one Lua script call (``STATUS_LUA_FUNCTIONS``; ``broker.job`` runs the same
functions inside its own state-change scripts), so a reader never sees a record from one attempt with the
counters of another, and the history never grows past ``HISTORY_LENGTH``. Decoding is strict
(``MalformedRecord``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from broker.contract import (
    HISTORY_PREFIX,
    STATUS_INDEX_KEY,
    STATUS_PREFIX,
    ArchiveKey,
    MalformedRecord,
    RefreshStatus,
    format_time,
    parse_time,
    require_int,
)
from broker.redis_client import translated
from sync_format.escape import escape_text

#: Attempts kept per archive in its history list.
HISTORY_LENGTH = 20
#: Status of a job that started and has not written its outcome yet.
RUNNING = RefreshStatus.RUNNING

# The status writes, as Lua functions that ``broker.job`` composes with the claim's (one script per change).
#
# status_running(status key, index key, archive, {field, value, ...}): the record says "running"; the fields
#   of the previous outcome that a running record lacks are deleted; ``attempts`` is kept (0 if new).
# status_write(status key, history key, index key, archive, {absent field, ...}, {field, value, ...},
#   history head, history tail, history length) -> attempts: the end of an attempt. ``attempts`` goes up by
#   one; the history entry is head .. attempts .. tail (the record's JSON, cut where ``attempts`` goes).
STATUS_LUA_FUNCTIONS = """
local function status_running(skey, index, archive, fields)
  redis.call('HDEL', skey, 'error_code', 'error', 'guest_log', 'egress')
  redis.call('HSET', skey, unpack(fields))
  redis.call('HSETNX', skey, 'attempts', 0)
  redis.call('SADD', index, archive)
end
local function status_write(skey, hkey, index, archive, absent, fields, head, tail, hlen)
  local attempts = tonumber(redis.call('HGET', skey, 'attempts') or '0')
  if not attempts then
    return nil
  end
  attempts = attempts + 1
  if #absent > 0 then
    redis.call('HDEL', skey, unpack(absent))
  end
  fields[#fields + 1] = 'attempts'
  fields[#fields + 1] = attempts
  redis.call('HSET', skey, unpack(fields))
  redis.call('SADD', index, archive)
  redis.call('LPUSH', hkey, head .. attempts .. tail)
  redis.call('LTRIM', hkey, 0, tonumber(hlen) - 1)
  return attempts
end
local function slice(from, count)
  local out = {}
  for i = from, from + count - 1 do
    out[#out + 1] = ARGV[i]
  end
  return out
end
"""
# ARGV layout shared by the scripts that call status_write, from a script's own offset: n absent, the absent
# fields, m, the field/value pairs (2m), head, tail, history length.
STATUS_WRITE_ARGS_LUA = """
local function status_write_args(at)
  local n = tonumber(ARGV[at])
  local absent = slice(at + 1, n)
  local m = tonumber(ARGV[at + 1 + n])
  local fields = slice(at + 2 + n, 2 * m)
  local rest = at + 2 + n + 2 * m
  return absent, fields, ARGV[rest], ARGV[rest + 1], ARGV[rest + 2]
end
"""
_RUNNING_LUA = STATUS_LUA_FUNCTIONS + "status_running(KEYS[1], KEYS[2], ARGV[1], slice(2, #ARGV - 1))\n"
_WRITE_LUA = (
    STATUS_LUA_FUNCTIONS
    + STATUS_WRITE_ARGS_LUA
    + """
local absent, fields, head, tail, hlen = status_write_args(2)
local attempts = status_write(KEYS[1], KEYS[2], KEYS[3], ARGV[1], absent, fields, head, tail, hlen)
if not attempts then
  return redis.error_reply('status script: attempts is not an integer')
end
return attempts
"""
)

_OPTIONAL_TEXT = ("error_code", "error", "worker", "job_id")
#: Refused or failed guest requests kept per record, and the keys of each (all values escaped text but
#: ``code``, the ABI status).
MAX_EGRESS_ENTRIES = 32
_EGRESS_KEYS = ("rule", "host", "code", "url", "reason")
#: Longest ``error`` text stored (it may quote a guest or a server).
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True)
class StatusRecord:
    """The latest (or one historical) refresh attempt of an archive.

    Attributes:
        archive: Archive key.
        status: ``running`` or a ``RefreshOutcome`` status (``committed``, ``failed``...).
        generation: Generation after the attempt (before it, while running); -1 when unknown (the archive
            could not be opened).
        base_generation: Generation the attempt started from; -1 when unknown.
        error_code: Stable failure code, None on success.
        error: Human-readable failure, None on success.
        duration_ms: Wall time of the attempt (0 while running).
        worker: Worker (Celery hostname) that ran it.
        job_id: Celery task id (the request id).
        attempts: Attempts recorded for the archive so far, this one included.
        last_attempt: When the attempt started.
        updated_at: When the record was written.
        guest_log: The guest's ``log`` lines of the attempt (ABI v2; escaped and bounded by the worker).
        egress: Each refused or failed guest request of the attempt (``rule``: the egress error code,
            ``host``, ``code``: the ABI status, ``url``, ``reason``), escaped; empty while running.
    """

    archive: ArchiveKey
    status: RefreshStatus
    generation: int
    base_generation: int
    error_code: str | None
    error: str | None
    duration_ms: float
    worker: str | None
    job_id: str | None
    attempts: int
    last_attempt: datetime
    updated_at: datetime
    # Optional in stored records: older ones have neither.
    guest_log: tuple[str, ...] = ()
    egress: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as RFC 3339 UTC).

        Returns:
            Every field.
        """
        return {
            "archive": self.archive,
            "status": self.status,
            "generation": self.generation,
            "base_generation": self.base_generation,
            "error_code": self.error_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "worker": self.worker,
            "job_id": self.job_id,
            "attempts": self.attempts,
            "last_attempt": format_time(self.last_attempt),
            "updated_at": format_time(self.updated_at),
            "guest_log": list(self.guest_log),
            "egress": [dict(e) for e in self.egress],
        }

    @classmethod
    def from_json(cls, data: object) -> StatusRecord:
        """Decode ``to_json`` output (a history entry) strictly.

        Args:
            data: The decoded JSON.

        Returns:
            The record.

        Raises:
            MalformedRecord: Not an object with exactly these fields and types.
        """
        if not isinstance(data, dict) or not _REQUIRED <= set(data) <= _FIELDS:
            raise MalformedRecord("status", "must be an object with exactly the status fields")
        for name in _OPTIONAL_TEXT:
            if data[name] is not None and not isinstance(data[name], str):
                raise MalformedRecord("status", "must be a string or null", field=name)
        return cls(
            archive=_archive(data["archive"]),
            status=_status(data["status"]),
            generation=require_int(data["generation"], "status", "generation", minimum=-1),
            base_generation=require_int(data["base_generation"], "status", "base_generation", minimum=-1),
            error_code=data["error_code"],
            error=data["error"],
            duration_ms=_duration(data["duration_ms"]),
            worker=data["worker"],
            job_id=data["job_id"],
            attempts=require_int(data["attempts"], "status", "attempts"),
            last_attempt=parse_time(data["last_attempt"], "status", "last_attempt"),
            updated_at=parse_time(data["updated_at"], "status", "updated_at"),
            guest_log=_guest_log(data.get("guest_log")),
            egress=_egress(data.get("egress") or []),
        )


_FIELDS = frozenset(StatusRecord.__dataclass_fields__)
#: Fields every stored record has; the others were added later and default when absent.
_REQUIRED = _FIELDS - {"guest_log", "egress"}
#: Most guest log lines kept in a record (the worker already bounds them; this bounds what Redis holds).
MAX_GUEST_LOG = 65


def _guest_log(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise MalformedRecord("status", "must be a list of strings", field="guest_log")
    return tuple(value[:MAX_GUEST_LOG])


def status_key(archive: str) -> str:
    """The Redis key of an archive's status hash.

    Args:
        archive: Archive key.

    Returns:
        ``STATUS_PREFIX + archive``.

    Raises:
        MalformedRecord: Not a valid archive key.
    """
    return STATUS_PREFIX + ArchiveKey(archive)


def history_key(archive: str) -> str:
    """The Redis key of an archive's history list.

    Args:
        archive: Archive key.

    Returns:
        ``HISTORY_PREFIX + archive``.

    Raises:
        MalformedRecord: Not a valid archive key.
    """
    return HISTORY_PREFIX + ArchiveKey(archive)


def running_fields(
    archive: ArchiveKey, *, generation: int, worker: str, job_id: str, now: datetime | None = None
) -> list[Any]:
    """The field/value pairs of a "running" record (the arguments of ``status_running``).

    Args:
        archive: Archive key.
        generation: Generation the job starts from.
        worker: The worker's name.
        job_id: The job's id.
        now: Start time; the current time when None.

    Returns:
        ``[field, value, field, value, ...]``.
    """
    moment = format_time(now or datetime.now(UTC))
    fields = {
        "archive": archive,
        "status": RUNNING,
        "generation": generation,
        "base_generation": generation,
        "duration_ms": 0,
        "worker": worker,
        "job_id": job_id,
        "last_attempt": moment,
        "updated_at": moment,
    }
    return [item for pair in fields.items() for item in pair]


def mark_running(
    client: redis.Redis,
    archive: str,
    *,
    generation: int,
    worker: str,
    job_id: str,
    now: datetime | None = None,
) -> None:
    """Record that a job started on the archive (status ``running``; the history is not touched).

    Args:
        client: Redis client.
        archive: Archive key.
        generation: Generation the job starts from.
        worker: The worker's name.
        job_id: The job's id.
        now: Start time; the current time when None.

    Raises:
        MalformedRecord: Not a valid archive key.
        BrokerUnavailable: Redis cannot be reached.
    """
    key = ArchiveKey(archive)
    args = [key, *running_fields(key, generation=generation, worker=worker, job_id=job_id, now=now)]
    with translated(client, "mark running"):
        client.register_script(_RUNNING_LUA)(keys=[status_key(key), STATUS_INDEX_KEY], args=args)


@dataclass(frozen=True)
class StatusWrite:
    """The end of an attempt, checked and encoded for ``status_write`` (see ``prepare_write``).

    Attributes:
        archive: Archive key.
        record: The record as it will be stored, with ``attempts`` 0 (the script counts).
        args: The script arguments: absent fields, field/value pairs, history head, tail and length.
    """

    archive: ArchiveKey
    record: StatusRecord
    args: list[Any]

    def written(self, attempts: int) -> StatusRecord:
        """The record as written, once the script said how many attempts it counts."""
        return replace(self.record, attempts=attempts)


def prepare_write(
    archive: str,
    outcome: Mapping[str, Any],
    *,
    worker: str,
    job_id: str,
    now: datetime | None = None,
) -> StatusWrite:
    """Check and encode the end of an attempt (the Python half of ``write_status``).

    Args:
        archive: Archive key.
        outcome: ``RefreshOutcome.to_json()`` (uses ``status``, ``generation``, ``base_generation``,
            ``error_code``, ``error``, ``duration_ms``, ``guest_log``, ``egress``; others are ignored).
        worker: The worker's name.
        job_id: The job's id.
        now: End time; the current time when None.

    Returns:
        The write.

    Raises:
        MalformedRecord: Bad archive key, or an outcome field is missing or of the wrong type.
    """
    key = ArchiveKey(archive)
    status = outcome.get("status")
    if not isinstance(status, str) or not status:
        raise MalformedRecord("status", "outcome needs a non-empty status", field="status")
    for name in ("error_code", "error"):
        if outcome.get(name) is not None and not isinstance(outcome.get(name), str):
            raise MalformedRecord("status", "must be a string or None", field=name)
    generation = require_int(outcome.get("generation"), "status", "generation", minimum=-1)
    base = require_int(outcome.get("base_generation"), "status", "base_generation", minimum=-1)
    duration_ms = _duration(outcome.get("duration_ms"))
    error = outcome.get("error")
    egress = _egress(outcome.get("egress") or [])
    ended = now or datetime.now(UTC)
    started = ended - timedelta(milliseconds=duration_ms)
    fields: dict[str, Any] = {
        "archive": key,
        "status": _status(status),
        "generation": generation,
        "base_generation": base,
        "error_code": outcome.get("error_code"),
        "error": None if error is None else escape_text(error, MAX_ERROR_LENGTH),
        "duration_ms": round(duration_ms, 3),
        "worker": worker,
        "job_id": job_id,
        "last_attempt": format_time(started),
        "updated_at": format_time(ended),
        "guest_log": list(_guest_log(outcome.get("guest_log"))) or None,
        "egress": json.dumps([dict(e) for e in egress], separators=(",", ":")) if egress else None,
    }
    record = StatusRecord.from_json({**fields, "attempts": 0, "egress": list(egress)})
    absent = [name for name, value in fields.items() if value is None]
    stored = {name: value for name, value in fields.items() if value is not None}
    if "guest_log" in stored:
        stored["guest_log"] = json.dumps(stored["guest_log"], separators=(",", ":"))
    # The history entry is the record's JSON; the script puts the counted attempts where the cut is.
    doc = record.to_json()
    names = list(doc)
    cut = names.index("attempts")
    head = json.dumps({n: doc[n] for n in names[:cut]}, separators=(",", ":"))[:-1] + ',"attempts":'
    tail = "," + json.dumps({n: doc[n] for n in names[cut + 1 :]}, separators=(",", ":"))[1:]
    pairs = [item for pair in stored.items() for item in pair]
    args = [len(absent), *absent, len(stored), *pairs, head, tail, HISTORY_LENGTH]
    return StatusWrite(key, record, args)


def write_status(
    client: redis.Redis,
    archive: str,
    outcome: Mapping[str, Any],
    *,
    worker: str,
    job_id: str,
    now: datetime | None = None,
) -> StatusRecord:
    """Record the end of an attempt: the archive's status hash, its history, and the index.

    Args:
        client: Redis client.
        archive: Archive key.
        outcome: ``RefreshOutcome.to_json()`` (see ``prepare_write``).
        worker: The worker's name.
        job_id: The job's id.
        now: End time; the current time when None.

    Returns:
        The record as written (``attempts`` counts this attempt).

    Raises:
        MalformedRecord: Bad archive key, or an outcome field is missing or of the wrong type.
        BrokerUnavailable: Redis cannot be reached.
    """
    write = prepare_write(archive, outcome, worker=worker, job_id=job_id, now=now)
    keys = [status_key(write.archive), history_key(write.archive), STATUS_INDEX_KEY]
    with translated(client, "write status"):
        attempts = client.register_script(_WRITE_LUA)(keys=keys, args=[write.archive, *write.args])
    return write.written(int(attempts))


def read_status(client: redis.Redis, archive: str) -> StatusRecord | None:
    """The archive's latest record.

    Args:
        client: Redis client.
        archive: Archive key.

    Returns:
        The record, or None when the archive was never refreshed through the queue.

    Raises:
        MalformedRecord: Bad archive key, or the stored hash does not decode.
        BrokerUnavailable: Redis cannot be reached.
    """
    key = status_key(archive)
    with translated(client, "read status"):
        fields = client.hgetall(key)
    return _from_hash(archive, fields) if fields else None


def read_history(client: redis.Redis, archive: str, limit: int = HISTORY_LENGTH) -> list[StatusRecord]:
    """The archive's recent attempts, newest first.

    Args:
        client: Redis client.
        archive: Archive key.
        limit: Most entries returned.

    Returns:
        Up to ``limit`` records.

    Raises:
        MalformedRecord: Bad archive key, or an entry does not decode.
        BrokerUnavailable: Redis cannot be reached.
    """
    if limit <= 0:
        return []
    key = history_key(archive)
    with translated(client, "read history"):
        entries = client.lrange(key, 0, limit - 1)
    return [StatusRecord.from_json(_load(entry)) for entry in entries]


def list_status(client: redis.Redis) -> list[StatusRecord]:
    """The latest record of every archive that has one, sorted by archive key.

    Args:
        client: Redis client.

    Returns:
        The records.

    Raises:
        MalformedRecord: A stored record does not decode.
        BrokerUnavailable: Redis cannot be reached.
    """
    with translated(client, "list status"):
        archives = sorted(str(a) for a in client.smembers(STATUS_INDEX_KEY))
        pipe = client.pipeline(transaction=False)
        for archive in archives:
            pipe.hgetall(status_key(archive))
        replies = pipe.execute()
    return [_from_hash(a, fields) for a, fields in zip(archives, replies, strict=True) if fields]


def forget_status(client: redis.Redis, archive: str) -> None:
    """Delete an archive's record and history (the archive left the store).

    Args:
        client: Redis client.
        archive: Archive key.

    Raises:
        MalformedRecord: Bad archive key.
        BrokerUnavailable: Redis cannot be reached.
    """
    pipe = client.pipeline(transaction=True)
    pipe.delete(status_key(archive), history_key(archive))
    pipe.srem(STATUS_INDEX_KEY, archive)
    with translated(client, "forget status"):
        pipe.execute()


def _from_hash(archive: str, fields: Mapping[Any, Any]) -> StatusRecord:
    data: dict[str, Any] = dict.fromkeys(_FIELDS)
    for name, value in fields.items():
        if name not in _FIELDS:
            raise MalformedRecord("status", f"unknown field in the record of {archive!r}", field=str(name))
        data[name] = value
    for name in ("generation", "base_generation", "attempts"):
        data[name] = _int_text(data[name], name)
    if isinstance(data["guest_log"], str):
        try:
            data["guest_log"] = json.loads(data["guest_log"])
        except json.JSONDecodeError as exc:
            raise MalformedRecord("status", "must be a JSON list", field="guest_log") from exc
    if data["egress"] is not None:
        data["egress"] = _load(data["egress"])
    try:
        data["duration_ms"] = float(data["duration_ms"])
    except (TypeError, ValueError) as exc:
        raise MalformedRecord("status", "must be a number", field="duration_ms") from exc
    return StatusRecord.from_json(data)


def _egress(value: object) -> tuple[dict[str, Any], ...]:
    """Refused requests as stored: a list of objects with ``_EGRESS_KEYS``, re-escaped and bounded here
    whatever the writer did (they quote hosts, URLs and reasons a guest or a server chose)."""
    if not isinstance(value, list | tuple):
        raise MalformedRecord("status", "must be a list", field="egress")
    entries = []
    for item in value[:MAX_EGRESS_ENTRIES]:
        if not isinstance(item, Mapping) or not isinstance(item.get("code"), int):
            raise MalformedRecord("status", "entries must be objects with an integer code", field="egress")
        entry: dict[str, Any] = {k: escape_text(item.get(k) or "", 300) for k in _EGRESS_KEYS if k != "code"}
        entry["code"] = item["code"]
        entries.append({k: entry[k] for k in _EGRESS_KEYS})
    return tuple(entries)


def _int_text(value: object, field: str) -> int:
    if not isinstance(value, str) or not value.lstrip("-").isdigit():
        raise MalformedRecord("status", f"must be an integer, not {value!r}", field=field)
    return int(value)


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord("status", "must be a number", field="duration_ms")
    duration = float(value)
    if not math.isfinite(duration) or duration < 0:
        raise MalformedRecord("status", f"must be finite and >= 0, not {value!r}", field="duration_ms")
    return duration


def _status(value: object) -> RefreshStatus:
    if not isinstance(value, str):
        raise MalformedRecord("status", "must be a string", field="status")
    try:
        return RefreshStatus(value)
    except ValueError as exc:
        raise MalformedRecord("status", f"unknown status {value!r}", field="status") from exc


def _archive(value: object) -> ArchiveKey:
    try:
        return ArchiveKey(value)
    except MalformedRecord as exc:
        raise MalformedRecord("status", exc.message, field="archive") from exc


def _load(entry: object) -> object:
    if not isinstance(entry, str):
        raise MalformedRecord("status", "history entry is not text")
    try:
        return json.loads(entry)
    except json.JSONDecodeError as exc:
        raise MalformedRecord("status", f"history entry is not JSON: {exc}") from exc
