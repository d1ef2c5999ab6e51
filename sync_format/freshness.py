"""Freshness: when an archive's payload stops being fresh (spec §2.4, docs/architecture.md, "The archive
contract").

``expires_at = (state.updated_at or meta.created_at) + policy.ttl``. The arithmetic is exact (integer
nanoseconds) and saturating: a TTL that reaches past year 9999 means "never expires" instead of the
reference's panic (§9 D13). An unparsable base timestamp fails closed: the archive counts as expired.
At exactly ``expires_at`` an archive is still fresh; one nanosecond later it is expired.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from dataclasses import dataclass

from sync_format.errors import ManifestError
from sync_format.manifest import Manifest
from sync_format.state import ArchiveState

NS = 1_000_000_000
#: Latest instant we represent (9999-12-31T23:59:59Z); expiry beyond it saturates to "never".
MAX_INSTANT_NS = 253_402_300_799 * NS

# chrono's relaxed RFC 3339 parser (spec §2.4): unpadded fields, T/t/space separator, optional spaces
# between components, optional fraction, mandatory offset (Z, z, UTC, +HH:MM or +HHMM).
_RFC3339 = re.compile(
    r"\s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})\s*[Tt ]\s*"
    r"(?P<h>\d{1,2}):(?P<mi>\d{1,2}):(?P<s>\d{1,2})(?:\.(?P<f>\d{1,9})\d*)?\s*"
    r"(?P<tz>[Zz]|UTC|[+-]\d{2}:?\d{2})\s*"
)


#: Timestamps parsed, remembered by their text (a pure function of it): opening an archive parses its base
#: timestamp twice (expiry, Last-Modified), and archives of one manifest share ``created_at``. Bounded:
#: emptied when full. Texts that fail to parse are not remembered (they raise every time).
_PARSED: dict[str, int] = {}
MAX_PARSED = 4096


def parse_timestamp_ns(text: str) -> int:
    """Parse an RFC 3339 timestamp into integer nanoseconds since the Unix epoch (UTC).

    Args:
        text: A timestamp such as ``2026-01-01T00:00:00Z`` or ``2026-01-01 09:00:00+0900``.

    Returns:
        Nanoseconds since 1970-01-01T00:00:00Z.

    Raises:
        ValueError: The text is not a timestamp with an offset, or names an impossible date.
    """
    found = _PARSED.get(text)
    if found is not None:
        return found
    parsed = _parse_timestamp_ns(text)
    if len(_PARSED) >= MAX_PARSED:
        _PARSED.clear()
    if type(text) is str:  # a str subclass could compare equal yet mean something else: not remembered
        _PARSED[text] = parsed
    return parsed


def _parse_timestamp_ns(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp with an offset: {text!r}")
    second = int(m["s"])
    leap = second == 60  # chrono accepts a leap second; it folds into the next second here
    if second > 60:
        raise ValueError(f"second out of range in {text!r}")
    try:
        day = dt.datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), 59 if leap else second
        )
    except ValueError as exc:
        raise ValueError(f"impossible date in {text!r}: {exc}") from exc
    fraction = int((m["f"] or "0").ljust(9, "0"))
    tz = m["tz"]
    offset_s = 0
    if tz not in ("Z", "z", "UTC"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"offset out of range in {text!r}")
        offset_s = sign * (hours * 3600 + minutes * 60)
    seconds = calendar.timegm(day.timetuple()) + (1 if leap else 0) - offset_s
    return seconds * NS + fraction


def format_timestamp(ns: int) -> str:
    """Format nanoseconds since the epoch the way writers must (spec §2.4): ``YYYY-MM-DDTHH:MM:SSZ``.

    Args:
        ns: Nanoseconds since the epoch; the fraction is dropped.

    Returns:
        The timestamp text.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS))


def now_ns() -> int:
    """The current wall-clock time in nanoseconds since the epoch.

    Returns:
        ``time.time_ns()``.
    """
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Expiry:
    """When a payload stops being fresh.

    Attributes:
        base: The timestamp text expiry counts from (``updated_at`` or ``created_at``).
        at_ns: Expiry instant in nanoseconds, or None when it never expires or the base is invalid.
        error: Why the base could not be parsed; such an archive is always expired (fail closed).
    """

    base: str
    at_ns: int | None
    error: str | None = None

    @property
    def never(self) -> bool:
        """True when the TTL saturates past the representable range: the payload never expires."""
        return self.at_ns is None and self.error is None

    def is_expired(self, now: int | None = None) -> bool:
        """Tell whether the payload is stale at ``now``.

        Args:
            now: Nanoseconds since the epoch; the current time when None.

        Returns:
            True when expired or when the base timestamp is invalid.
        """
        if self.error is not None:
            return True
        if self.at_ns is None:
            return False
        return (now_ns() if now is None else now) > self.at_ns

    def expires_in(self, now: int | None = None) -> float | None:
        """Seconds until expiry, never negative; None when it never expires.

        Args:
            now: Nanoseconds since the epoch; the current time when None.

        Returns:
            Seconds left (0.0 when expired or invalid), or None for "never".
        """
        if self.error is not None:
            return 0.0
        if self.at_ns is None:
            return None
        return max(0, self.at_ns - (now_ns() if now is None else now)) / NS

    def at_text(self) -> str | None:
        """The expiry instant as RFC 3339 text, or None when there is none."""
        if self.at_ns is None:
            return None
        text = format_timestamp(self.at_ns)
        fraction = self.at_ns % NS
        if fraction:
            text = text[:-1] + f".{fraction:09d}".rstrip("0") + "Z"
        return text


def expiry(manifest: Manifest, state: ArchiveState | None = None) -> Expiry:
    """Compute an archive's expiry from its manifest and refresh state.

    Args:
        manifest: The archive's manifest (``meta.created_at``, ``policy.ttl``).
        state: The refresh state; its ``updated_at`` replaces ``created_at`` as the base when set.

    Returns:
        The expiry; never raises for bad dates or huge TTLs.
    """
    base = state.updated_at if state is not None and state.updated_at else manifest.meta.created_at
    try:
        base_ns = parse_timestamp_ns(base)
    except ValueError as exc:
        return Expiry(base=base, at_ns=None, error=str(exc))
    at = base_ns + manifest.policy.ttl * NS
    if at > MAX_INSTANT_NS:
        return Expiry(base=base, at_ns=None)
    return Expiry(base=base, at_ns=at)


def check_timestamp(text: str, field: str) -> None:
    """Raise when a timestamp a writer is about to store is not RFC 3339.

    Args:
        text: The timestamp.
        field: The manifest field it belongs to.

    Raises:
        ManifestError: The timestamp does not parse.
    """
    try:
        parse_timestamp_ns(text)
    except ValueError as exc:
        raise ManifestError(str(exc), field=field) from exc
