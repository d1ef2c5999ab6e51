"""The queue contract: task and queue names, Redis key prefixes, and the refresh request codec.

Producers (mountd, ``syncctl refresh``) and consumers (workers) meet only here: a producer sends
``TASK_REFRESH`` by name to ``QUEUE_REFRESH`` with one argument, ``RefreshRequest.to_json()``, and never
imports a task function. Every Redis key sync writes starts with ``KEY_PREFIX``, so one Redis can be shared
with Celery's own keys (``_kombu.*``, queue lists named after queues) without collisions.

Invariants:
    * An archive key is the archive's path relative to the store, as a normalized POSIX string: no empty,
      ``.`` or ``..`` parts, not absolute, no control characters. ``archive_path`` therefore never leaves the
      store, whatever a message says.
    * Decoding is strict: unknown fields, missing fields, wrong types and bad values raise
      ``MalformedRecord``; nothing is coerced or defaulted.
    * ``request_id`` is the claim token of the request (see ``broker.claims``): the job that carries the
      request heartbeats and releases the claim with it.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from sync_format.errors import SyncError

#: Name of the refresh task; workers register their task body under it, producers ``send_task`` it.
TASK_REFRESH = "sync.refresh"
#: Queue the refresh task is routed to (workers consume it; it is also Celery's default queue).
QUEUE_REFRESH = "sync.refresh"
#: Prefix of every Redis key and channel sync owns.
KEY_PREFIX = "sync:"
#: Claim of one archive: ``CLAIM_PREFIX + archive key`` (a hash, see ``broker.claims``).
CLAIM_PREFIX = KEY_PREFIX + "claim:"
#: Latest status of one archive's refreshes: ``STATUS_PREFIX + archive key`` (a hash).
STATUS_PREFIX = KEY_PREFIX + "status:"
#: Recent refresh attempts of one archive, newest first: ``HISTORY_PREFIX + archive key`` (a list of JSON).
HISTORY_PREFIX = KEY_PREFIX + "history:"
#: Set of archive keys that have a status record.
STATUS_INDEX_KEY = KEY_PREFIX + "status-index"
#: Jobs that gave up, newest first (a list of JSON), kept for operators: the latest of each archive only.
FAILED_KEY = KEY_PREFIX + "failed"
#: Each archive's entry in ``FAILED_KEY``, exactly as stored (a hash: archive key → entry), so that a new
#: failure replaces its archive's old one in one step (``broker.failed``).
FAILED_INDEX_KEY = KEY_PREFIX + "failed-index"
#: Receipt of one execution's end: ``END_PREFIX + runner`` (a string "attempts:held:merged", expiring), so an
#: end whose reply was lost and is tried again is not applied twice (see ``broker.job``).
END_PREFIX = KEY_PREFIX + "end:"
#: Pub/sub channel announcing each committed swap.
SWAPPED_CHANNEL = KEY_PREFIX + "swapped"

#: Version of the request encoding; a decoder refuses any other.
REQUEST_VERSION = 1
#: Longest archive key accepted, in characters (far above any real path; bounds Redis key sizes).
MAX_ARCHIVE_KEY_LENGTH = 1024

_REQUEST_FIELDS = frozenset({"v", "archive", "base_generation", "requested_at", "request_id"})
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MalformedRecord(SyncError):
    """Raised when a message or record read from the broker does not decode (or a key is not valid).

    Attributes:
        kind: What was being decoded (``refresh_request``, ``status``, ``swapped``, ``failed_job``,
            ``archive_key``).
        field: The offending field, or None when the whole value is wrong.
    """

    code = "malformed_record"

    def __init__(self, kind: str, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{kind}: {field}: {message}" if field else f"{kind}: {message}")
        self.kind = kind
        self.field = field


class ArchiveKey(str):
    """An archive key that has been checked: a normalized, relative POSIX path of an archive inside a store.

    Keys are checked once, where they enter (the request codec, ``archive_key`` from a path, the CLI), and
    travel as this type afterwards; ``ArchiveKey(key)`` returns an ``ArchiveKey`` argument unchanged, so the
    functions that build Redis keys from it cost nothing. A ``str`` subclass: records, messages and Redis keys
    hold exactly the same bytes as a plain string.

    Raises:
        MalformedRecord: The value is not a string, is empty, too long, absolute, not normalized, or has a
            control character or a ``.``/``..`` part.
    """

    __slots__ = ()

    def __new__(cls, key: object) -> ArchiveKey:
        if isinstance(key, ArchiveKey):
            return key
        if not isinstance(key, str):
            raise MalformedRecord("archive_key", f"must be a string, not {type(key).__name__}")
        if not key or len(key) > MAX_ARCHIVE_KEY_LENGTH:
            raise MalformedRecord("archive_key", f"length must be 1..{MAX_ARCHIVE_KEY_LENGTH}")
        if _CONTROL.search(key):
            raise MalformedRecord("archive_key", f"{key!r} has a control character")
        if key.startswith("/"):
            raise MalformedRecord("archive_key", f"{key!r} is absolute")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise MalformedRecord("archive_key", f"{key!r} is not a normalized relative path")
        return super().__new__(cls, key)


def validate_archive_key(key: object) -> ArchiveKey:
    """Check that ``key`` is a valid archive key (see ``ArchiveKey``).

    Args:
        key: The candidate key.

    Returns:
        The key as an ``ArchiveKey``.

    Raises:
        MalformedRecord: It is not a valid archive key.
    """
    return ArchiveKey(key)


class RefreshStatus(StrEnum):
    """The status of a refresh attempt, as stored in status records and reported by jobs.

    String-valued: a member is written (to Redis, to JSON, in log lines) exactly as its value.
    """

    #: A job started and has not written its outcome yet.
    RUNNING = "running"
    #: The guest produced a new payload and it was swapped in.
    COMMITTED = "committed"
    #: The guest ran and kept the payload.
    UNCHANGED = "unchanged"
    #: The archive has no update logic (no or an empty ``sync.wasm``).
    NO_UPDATE_LOGIC = "no_update_logic"
    #: The archive is already newer than the generation the request was made for.
    ALREADY_FRESH = "already_fresh"
    #: The refresh failed (``error_code`` says why).
    FAILED = "failed"
    #: A delivery that did not run: another request or execution holds the archive (not stored).
    SKIPPED = "skipped"
    #: A delivery whose request did not decode (not stored).
    REJECTED = "rejected"


def archive_key(store: Path, path: Path) -> ArchiveKey:
    """The archive key of ``path`` in the store rooted at ``store``.

    Args:
        store: The store directory (for a single-archive store, the archive's directory).
        path: The archive, inside ``store``.

    Returns:
        The path relative to ``store`` as a POSIX string.

    Raises:
        MalformedRecord: ``path`` is not inside ``store``.
    """
    try:
        relative = path.absolute().relative_to(store.absolute())
    except ValueError as exc:
        raise MalformedRecord("archive_key", f"{path} is not inside the store {store}") from exc
    return ArchiveKey(PurePosixPath(*relative.parts).as_posix())


def archive_path(store: Path, key: ArchiveKey) -> Path:
    """The path of the archive named by ``key`` in the store rooted at ``store``.

    Args:
        store: The store directory.
        key: An archive key (a plain string is checked here).

    Returns:
        ``store`` joined with the key's parts, with symlinks resolved: always inside the resolved store.

    Raises:
        MalformedRecord: ``key`` is not a valid archive key, or it leads outside the store through a
            symlinked directory or file (a job must never run or commit outside the store).
    """
    joined = store.joinpath(*ArchiveKey(key).split("/"))
    root = Path(os.path.realpath(store))
    real = Path(os.path.realpath(joined))
    if not real.is_relative_to(root) or real == root:
        raise MalformedRecord("archive_key", f"{key!r} leads outside the store {store} (through a symlink)")
    return real


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix, the one time format of broker records.

    Args:
        moment: An aware datetime.

    Returns:
        The formatted time.

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("broker times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object, kind: str, field: str) -> datetime:
    """Parse a time written by ``format_time``.

    Args:
        text: The value read.
        kind: Record kind, for the error.
        field: Field name, for the error.

    Returns:
        The aware UTC datetime.

    Raises:
        MalformedRecord: The value is not a string in that exact format.
    """
    if not isinstance(text, str):
        raise MalformedRecord(kind, "must be an RFC 3339 string", field=field)
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedRecord(kind, f"{text!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ", field=field) from exc


def require_int(value: object, kind: str, field: str, *, minimum: int = 0) -> int:
    """Check a decoded integer field (``bool`` is not an integer here).

    Args:
        value: The value read.
        kind: Record kind, for the error.
        field: Field name, for the error.
        minimum: Smallest accepted value.

    Returns:
        The integer.

    Raises:
        MalformedRecord: Not an int, or below ``minimum``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRecord(kind, f"must be an integer, not {type(value).__name__}", field=field)
    if value < minimum:
        raise MalformedRecord(kind, f"must be >= {minimum}, not {value}", field=field)
    return value


@dataclass(frozen=True)
class RefreshRequest:
    """One wanted refresh of one archive, as sent to the refresh queue.

    Attributes:
        archive: Archive key (path relative to the store, POSIX).
        base_generation: Generation the producer saw expired; a worker leaves a newer archive alone.
        requested_at: When the producer asked (aware, UTC).
        request_id: 32 lowercase hex digits; also the claim token of this request.
    """

    archive: ArchiveKey
    base_generation: int
    requested_at: datetime
    request_id: str

    def __post_init__(self) -> None:
        # The one check of a key that enters through a request; a checked key passes through unchanged.
        object.__setattr__(self, "archive", ArchiveKey(self.archive))
        require_int(self.base_generation, "refresh_request", "base_generation")
        if self.requested_at.tzinfo is None:
            raise MalformedRecord("refresh_request", "must be timezone-aware", field="requested_at")
        _request_id(self.request_id)

    @classmethod
    def new(
        cls, archive: str | ArchiveKey, base_generation: int, *, now: datetime | None = None
    ) -> RefreshRequest:
        """A request with a fresh random id, made now.

        Args:
            archive: Archive key.
            base_generation: Generation seen expired.
            now: The time to record; the current time when None.

        Returns:
            The request.

        Raises:
            MalformedRecord: The key or generation is not valid.
        """
        return cls(ArchiveKey(archive), base_generation, now or datetime.now(UTC), uuid.uuid4().hex)

    def to_json(self) -> dict[str, Any]:
        """The message argument: a JSON-ready dict.

        Returns:
            ``{"v", "archive", "base_generation", "requested_at", "request_id"}``.
        """
        return {
            "v": REQUEST_VERSION,
            "archive": self.archive,
            "base_generation": self.base_generation,
            "requested_at": format_time(self.requested_at),
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: object) -> RefreshRequest:
        """Decode a message argument strictly.

        Args:
            data: What ``to_json`` produced, after a JSON round trip.

        Returns:
            The request.

        Raises:
            MalformedRecord: Not a dict, unknown or missing fields, another version, or a bad value.
        """
        if not isinstance(data, dict):
            raise MalformedRecord("refresh_request", f"must be an object, not {type(data).__name__}")
        keys = set(data)
        if keys != _REQUEST_FIELDS:
            unknown, missing = sorted(map(str, keys - _REQUEST_FIELDS)), sorted(_REQUEST_FIELDS - keys)
            raise MalformedRecord("refresh_request", f"unknown fields {unknown}, missing fields {missing}")
        if data["v"] != REQUEST_VERSION or isinstance(data["v"], bool):
            raise MalformedRecord("refresh_request", f"unsupported version {data['v']!r}", field="v")
        try:
            archive = ArchiveKey(data["archive"])
        except MalformedRecord as exc:
            raise MalformedRecord("refresh_request", exc.message, field="archive") from exc
        return cls(
            archive,
            require_int(data["base_generation"], "refresh_request", "base_generation"),
            parse_time(data["requested_at"], "refresh_request", "requested_at"),
            _request_id(data["request_id"]),
        )


def _request_id(value: object) -> str:
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise MalformedRecord("refresh_request", "must be 32 lowercase hex digits", field="request_id")
    return value
