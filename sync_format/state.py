"""``state.json``: what a refresh changes, kept beside the never-changing manifest (docs/architecture.md, "The
archive contract").

Fields: ``generation`` (0 when built, +1 per committed swap), ``updated_at`` (RFC 3339 UTC of the last
commit, null before the first), ``payload_size``, ``payload_crc32`` and ``payload_blake3`` (hex) of the
payload it describes. The hash is computed once at commit time so that readers never re-hash a payload.

The reference ignores extra entries but also copies them unchanged when *it* updates a payload, so a state
can describe an older payload. The reader detects that for free (size and CRC-32 in the central directory
differ) and marks the state ``stale``: the generation is kept, the hash is not trusted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from sync_format.errors import MalformedArchive

STATE_ENTRY = "state.json"
#: Largest state.json accepted, in bytes.
MAX_STATE_SIZE = 64 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = ("generation", "updated_at", "payload_size", "payload_crc32", "payload_blake3")
_KEY_SET = frozenset(_KEYS)
#: ``json.loads(text)`` is this decoder's ``decode(text)``: called directly (every archive open decodes one).
_DECODER = json.JSONDecoder()
#: Exactly what ``to_json`` writes (compact, keys sorted, ASCII): integers without sign or leading zero, an
#: ``updated_at`` of printable ASCII without quote or backslash (JSON reads such a string as its bytes). One
#: match reads the fields of nearly every state; anything else, or values out of range, takes the JSON path,
#: which decides as it always did (a test holds both paths to the same answers).
_WRITTEN = re.compile(
    rb'\{"generation":(0|[1-9][0-9]{0,18}),"payload_blake3":"([0-9a-f]{64})",'
    rb'"payload_crc32":(0|[1-9][0-9]{0,9}),"payload_size":(0|[1-9][0-9]{0,18}),'
    rb'"updated_at":(?:null|"([\x20\x21\x23-\x5b\x5d-\x7e]*)")\}'
)
_INT64_MAX = 2**63 - 1
_new_object = object.__new__


@dataclass(frozen=True)
class ArchiveState:
    """The refresh state of one archive.

    Attributes:
        generation: Number of committed swaps since the archive was built.
        updated_at: When the payload was last committed (RFC 3339), None before the first commit.
        payload_size: Payload size the state describes, None when unknown (no state entry).
        payload_crc32: CRC-32 of that payload, None when unknown.
        payload_blake3: Lowercase hex BLAKE3 of that payload, None when unknown.
        stale: True when the archive's payload is not the one described (changed by another tool).
    """

    generation: int = 0
    updated_at: str | None = None
    payload_size: int | None = None
    payload_crc32: int | None = None
    payload_blake3: str | None = None
    stale: bool = False

    @property
    def trusted_blake3(self) -> str | None:
        """The payload hash when it describes the current payload, else None."""
        return None if self.stale else self.payload_blake3

    @classmethod
    def from_json(cls, data: bytes) -> ArchiveState:
        """Decode a ``state.json`` entry strictly.

        Args:
            data: The entry's bytes.

        Returns:
            The state.

        Raises:
            MalformedArchive: Not a JSON object with exactly our keys and types.
        """
        written = _WRITTEN.fullmatch(data)
        if written is not None and cls is ArchiveState:
            generation, size, crc = int(written[1]), int(written[4]), int(written[3])
            if generation <= _INT64_MAX and size <= _INT64_MAX and crc <= 0xFFFFFFFF:
                updated_at = written[5]
                # ``cls(...)`` without the frozen ``__init__``'s six ``object.__setattr__`` calls (every
                # archive open decodes a state): the same fields, all of them.
                state: ArchiveState = _new_object(ArchiveState)
                state.__dict__.update(
                    generation=generation,
                    updated_at=None if updated_at is None else updated_at.decode("ascii"),
                    payload_size=size,
                    payload_crc32=crc,
                    payload_blake3=written[2].decode("ascii"),
                    stale=False,
                )
                return state
        return cls._from_document(data)

    @classmethod
    def _from_document(cls, data: bytes) -> ArchiveState:
        # ``from_json`` for any JSON text: the general path, and the one every refusal comes from.
        try:
            doc = _DECODER.decode(data.decode("utf-8"))
        # ValueError also covers integers longer than sys.get_int_max_str_digits(), which json refuses.
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MalformedArchive(f"{STATE_ENTRY} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.keys() != _KEY_SET:
            raise MalformedArchive(f"{STATE_ENTRY} must be an object with keys {', '.join(_KEYS)}")
        generation = _uint(doc, "generation")
        size = _uint(doc, "payload_size")
        crc = _uint(doc, "payload_crc32")
        if crc > 0xFFFFFFFF:
            raise MalformedArchive(f"{STATE_ENTRY}: payload_crc32 out of range")
        digest = doc["payload_blake3"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise MalformedArchive(f"{STATE_ENTRY}: payload_blake3 must be 64 lowercase hex digits")
        updated_at = doc["updated_at"]
        if updated_at is not None and not isinstance(updated_at, str):
            raise MalformedArchive(f"{STATE_ENTRY}: updated_at must be a string or null")
        return cls(generation, updated_at, size, crc, digest)

    def to_json(self) -> bytes:
        """Encode as compact, key-sorted JSON.

        Returns:
            The entry's bytes.
        """
        doc: dict[str, Any] = {
            "generation": self.generation,
            "updated_at": self.updated_at,
            "payload_size": self.payload_size,
            "payload_crc32": self.payload_crc32,
            "payload_blake3": self.payload_blake3,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    def checked_against(self, size: int, crc32: int) -> ArchiveState:
        """Mark the state stale when it does not describe a payload of this size and CRC-32.

        Args:
            size: The payload size from the central directory.
            crc32: The payload CRC-32 from the central directory.

        Returns:
            This state, or a stale copy of it.
        """
        if self.payload_size is None or (self.payload_size, self.payload_crc32) == (size, crc32):
            return self
        return replace(self, stale=True)


def _uint(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _INT64_MAX:
        raise MalformedArchive(f"{STATE_ENTRY}: {key} must be a non-negative integer")
    return value
