"""The queue contract: names, archive keys and the strict refresh request codec."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from broker import QUEUE_REFRESH, TASK_REFRESH, MalformedRecord, RefreshRequest, archive_key, archive_path
from broker.contract import KEY_PREFIX, format_time, parse_time, validate_archive_key

MOMENT = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def test_names_are_the_documented_ones() -> None:
    """The task and queue are both called ``sync.refresh`` and our keys share the ``sync:`` prefix."""
    assert TASK_REFRESH == "sync.refresh"
    assert QUEUE_REFRESH == "sync.refresh"
    assert KEY_PREFIX == "sync:"


def test_request_round_trips_through_json() -> None:
    """A request survives ``to_json`` and a JSON text round trip unchanged."""
    request = RefreshRequest("reports/q1.csv.sync", 7, MOMENT, "0123456789abcdef0123456789abcdef")
    data = json.loads(json.dumps(request.to_json()))
    assert data == {
        "v": 1,
        "archive": "reports/q1.csv.sync",
        "base_generation": 7,
        "requested_at": "2025-03-01T12:30:45.123456Z",
        "request_id": "0123456789abcdef0123456789abcdef",
    }
    assert RefreshRequest.from_json(data) == request


def test_new_request_has_a_random_id_and_now() -> None:
    """``RefreshRequest.new`` gives each request its own 32-hex-digit id and an aware timestamp."""
    first, second = RefreshRequest.new("a.sync", 0), RefreshRequest.new("a.sync", 0)
    assert first.request_id != second.request_id
    assert len(first.request_id) == 32
    assert first.requested_at.tzinfo is not None


GOOD = {
    "v": 1,
    "archive": "a.sync",
    "base_generation": 0,
    "requested_at": "2025-03-01T12:30:45.000000Z",
    "request_id": "0" * 32,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": 1}, None),
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"archive": "/etc/passwd"}, "archive"),
        ({"archive": "../escape.sync"}, "archive"),
        ({"archive": "a/./b.sync"}, "archive"),
        ({"archive": "a//b.sync"}, "archive"),
        ({"archive": ""}, "archive"),
        ({"archive": "a\nb.sync"}, "archive"),
        ({"archive": 5}, "archive"),
        ({"base_generation": -1}, "base_generation"),
        ({"base_generation": True}, "base_generation"),
        ({"base_generation": "3"}, "base_generation"),
        ({"requested_at": "2025-03-01T12:30:45+00:00"}, "requested_at"),
        ({"requested_at": 0}, "requested_at"),
        ({"request_id": "XYZ"}, "request_id"),
        ({"request_id": "0" * 31}, "request_id"),
    ],
)
def test_decoding_is_strict(change: dict[str, Any], field: str | None) -> None:
    """Unknown fields, other versions, unsafe keys and mistyped values raise ``MalformedRecord``."""
    with pytest.raises(MalformedRecord) as info:
        RefreshRequest.from_json({**GOOD, **change})
    assert info.value.kind == "refresh_request"
    assert info.value.field == field


@pytest.mark.parametrize("data", [None, [], "text", {k: v for k, v in GOOD.items() if k != "v"}])
def test_decoding_refuses_non_requests(data: object) -> None:
    """Values that are not request objects, or lack a field, are refused with our error."""
    with pytest.raises(MalformedRecord):
        RefreshRequest.from_json(data)


def test_constructor_validates_too() -> None:
    """A request cannot be built with an unsafe key, a naive time or a bad id."""
    with pytest.raises(MalformedRecord):
        RefreshRequest("../x.sync", 0, MOMENT, "0" * 32)
    with pytest.raises(MalformedRecord):
        RefreshRequest("x.sync", 0, MOMENT.replace(tzinfo=None), "0" * 32)
    with pytest.raises(MalformedRecord):
        RefreshRequest("x.sync", 0, MOMENT, "not-hex")


def test_archive_key_and_path_are_inverse_and_stay_in_the_store(tmp_path: Path) -> None:
    """``archive_key`` gives the POSIX path relative to the store and ``archive_path`` maps it back."""
    store = tmp_path / "store"
    path = store / "dir" / "b.csv.sync"
    key = archive_key(store, path)
    assert key == "dir/b.csv.sync"
    assert archive_path(store, key) == path
    with pytest.raises(MalformedRecord):
        archive_key(store, tmp_path / "elsewhere.sync")
    with pytest.raises(MalformedRecord):
        archive_path(store, "../elsewhere.sync")


def test_validate_archive_key_accepts_unicode_names() -> None:
    """Keys may hold any printable characters, including spaces and non-ASCII letters."""
    assert validate_archive_key("Berichte/März 2025.csv.sync") == "Berichte/März 2025.csv.sync"


def test_times_are_utc_with_microseconds() -> None:
    """Broker times are written as RFC 3339 UTC with a ``Z`` and read back exactly."""
    moment = datetime(2025, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2025-01-01T00:00:00.000000Z"
    assert parse_time(format_time(MOMENT), "t", "f") == MOMENT
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2025, 1, 1))
