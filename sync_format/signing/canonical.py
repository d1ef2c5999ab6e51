"""Canonical JSON and hash strings shared by both signature schemes (spec §3.1, §3.3).

Canonical JSON: keys sorted by code point, compact separators, UTF-8 with non-ASCII emitted raw — exactly
the reference's sorted-key ``serde_json`` output (and RFC 8785 for the integer-only documents we hash).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import blake3

HASH_PREFIX = "blake3:"


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value canonically.

    Args:
        value: A JSON-ready value (dicts, lists, str, int, bool, None).

    Returns:
        The UTF-8 bytes.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hash_string(data: bytes) -> str:
    """``blake3:`` followed by the lowercase hex digest.

    Args:
        data: Bytes to hash.

    Returns:
        The hash string.
    """
    return HASH_PREFIX + blake3.blake3(data).hexdigest()


def b64encode(data: bytes) -> str:
    """Standard padded base64.

    Args:
        data: Bytes.

    Returns:
        The text.
    """
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Decode standard padded base64 as strictly as the reference (no whitespace, exact padding and bits).

    Args:
        text: Base64 text.

    Returns:
        The bytes.

    Raises:
        ValueError: Anything but the canonical encoding of some bytes.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError(f"invalid base64: {exc}") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("non-canonical base64 (padding or trailing bits)")
    return data


def document_json(value: Any) -> Any:
    """Turn a parsed TOML document into JSON-ready data for ``document_hash`` (our signature extension).

    TOML types without a JSON counterpart are tagged so they cannot collide with strings: datetimes become
    ``{"$datetime": ISO text}`` and floats ``{"$float": repr}``.

    Args:
        value: A ``tomllib`` value.

    Returns:
        A JSON-ready value.
    """
    if isinstance(value, Mapping):
        return {str(k): document_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [document_json(v) for v in value]
    if isinstance(value, float):
        return {"$float": repr(value) if math.isfinite(value) else str(value)}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return {"$datetime": value.isoformat()}
    return value
