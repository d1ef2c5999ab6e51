"""What mountd tells clients about one archive, computed once from one snapshot.

``ArchiveFacts`` is the small, immutable summary that both a GET (from the snapshot it opened) and a listing
(from the index's cache) answer from: content type, payload size, ETag, Last-Modified, generation, TTL,
expiry, and whether the archive has update logic (what the refresh scheduler needs). Nothing here re-hashes
a payload or re-reads an archive (CONTRIBUTING.md): every field comes from the manifest, ``state.json`` and
the central directory that ``open_archive`` already validated.

Invariants:
    * The ETag is strong and changes whenever the payload bytes can have changed: it is the payload's
      BLAKE3 recorded at commit time, or, when no trusted hash exists, a tag derived from the file's
      identity and the payload's CRC-32 (see ``derive_etag``).
    * Last-Modified is stable for one file version (never "now"), so If-Modified-Since can match.
    * "Has update logic" is read from the central directory, never from the module's bytes: an archive
      without ``sync.wasm``, or whose ``sync.wasm`` is the 8-byte empty module (same size and CRC-32), has
      none — exactly the archives a worker answers ``no_update_logic`` for.
    * Facts never depend on the archive's file name: a rename keeps them valid (the display name is computed
      from the current path by whoever lists the archive).
"""

from __future__ import annotations

import dataclasses
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync_format import EMPTY_WASM, ArchiveSnapshot, Expiry, FileIdentity, parse_timestamp_ns
from sync_format.freshness import expiry as freshness_expiry
from sync_format.media import display_ext_problem, safe_content_type
from sync_format.reader import WASM_ENTRY

NS_PER_SECOND = 1_000_000_000
#: Share of the TTL before expiry at which an archive counts as nearly expired (a refresh is asked for).
LEAD_FRACTION = 0.1
#: Seconds before expiry an archive counts as nearly expired at least (short TTLs).
MIN_LEAD = 1.0
#: Seconds before expiry an archive counts as nearly expired at most (a refresh takes seconds, not hours).
MAX_LEAD = 60.0
#: CRC-32 of the 8-byte empty module, which builders write when an archive has no update logic.
EMPTY_WASM_CRC32 = zlib.crc32(EMPTY_WASM)


@dataclass(frozen=True, slots=True)
class ArchiveFacts:
    """The answers mountd gives about one version of one archive.

    Attributes:
        display_ext: The manifest's ``sync.display_ext`` (the display name is built from it and the path).
        content_type: The manifest's ``sync.content_type``.
        payload_size: Payload length in bytes.
        payload_offset: Absolute offset of the first payload byte in this file version, so that a GET of
            a known version reads the payload without parsing the archive again (``SyncProvider.open_known``).
        etag: Strong entity tag, without quotes.
        last_modified: Seconds since the epoch for Last-Modified.
        generation: Number of committed swaps.
        updated_at: When the payload was last committed (RFC 3339), None before the first commit.
        ttl: ``policy.ttl`` in seconds.
        timeout: ``policy.timeout`` in seconds (the refresh job's budget).
        expiry: When the payload stops being fresh.
        identity: The file version these facts were read from.
        has_update_logic: True when ``sync.wasm`` is present and is not the empty module.
        payload_crc32: The CRC-32 the ZIP entry records for the payload (``mountd.dav.integrity`` checks the
            bytes against it); -1 when unknown.
    """

    display_ext: str
    content_type: str
    payload_size: int
    payload_offset: int
    etag: str
    last_modified: float
    generation: int
    updated_at: str | None
    ttl: int
    timeout: int
    expiry: Expiry
    identity: FileIdentity
    has_update_logic: bool
    payload_crc32: int = -1  # issue 12: integrity checks

    @classmethod
    def from_snapshot(cls, snapshot: ArchiveSnapshot) -> ArchiveFacts:
        """Summarise an open snapshot.

        Args:
            snapshot: The archive as opened.

        Returns:
            The facts.
        """
        manifest = snapshot.manifest
        sync = manifest.sync
        state = snapshot.state
        payload = snapshot.payload
        identity = snapshot.identity
        ttl = manifest.policy.ttl
        expiry = freshness_expiry(manifest, state)
        # The expiry counts from the same timestamp Last-Modified shows: parsed once (it was half the cost).
        base_ns = None if expiry.at_ns is None else expiry.at_ns - ttl * NS_PER_SECOND
        values = (
            # Re-checked here, where header values and names come from (the reader refused bad ones already).
            "" if display_ext_problem(sync.display_ext) else sync.display_ext,  # display_ext
            safe_content_type(sync.content_type),  # content_type
            payload.size,  # payload_size
            payload.data_offset,  # payload_offset
            state.trusted_blake3 or derive_etag(identity, payload.crc32),  # etag
            _last_modified(expiry.base, identity, base_ns),  # last_modified
            state.generation,  # generation
            state.updated_at,  # updated_at
            ttl,  # ttl
            manifest.policy.timeout,  # timeout
            expiry,  # expiry
            identity,  # identity
            _has_update_logic(snapshot),  # has_update_logic
            payload.crc32,  # payload_crc32
        )
        return make_facts(values) if cls is ArchiveFacts else cls(*values)

    def is_expired(self) -> bool:
        """True when the payload is stale now (an unparsable base timestamp counts as stale)."""
        return self.expiry.is_expired()


def make_facts(values: tuple[Any, ...]) -> ArchiveFacts:
    """``ArchiveFacts(*values)``, made faster: the slots are set directly.

    A first listing makes one per archive (10,000 for a folder of 10,000), and a restart as many from the
    facts index; the frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field, through Python)
    was most of that. Only while the fields are exactly ``FIELDS``, each a plain slot (``_SETTERS``; a test
    checks that the result equals the constructor's); otherwise the constructor.

    Args:
        values: The fields, in ``FIELDS`` order.

    Returns:
        The facts.
    """
    if _SETTERS is None:
        return ArchiveFacts(*values)
    facts: ArchiveFacts = _NEW(ArchiveFacts)
    for setter, value in zip(_SETTERS, values, strict=True):
        setter(facts, value)
    return facts


#: ``ArchiveFacts``'s fields, in order (``make_facts`` sets them by position).
FIELDS = (
    "display_ext",
    "content_type",
    "payload_size",
    "payload_offset",
    "etag",
    "last_modified",
    "generation",
    "updated_at",
    "ttl",
    "timeout",
    "expiry",
    "identity",
    "has_update_logic",
    "payload_crc32",
)


def _slot_setters() -> tuple[Callable[[ArchiveFacts, Any], None], ...] | None:
    names = tuple(field.name for field in dataclasses.fields(ArchiveFacts))
    if names != FIELDS:
        return None
    descriptors = [getattr(ArchiveFacts, name) for name in names]
    if not all(type(d) is types.MemberDescriptorType for d in descriptors):
        return None
    return tuple(d.__set__ for d in descriptors)


_NEW = object.__new__
_SETTERS = _slot_setters()


def lead_ns(ttl: int) -> int:
    """How long before expiry an archive with this TTL counts as nearly expired: the scheduler asks for its
    refresh then, and a reader asking for fresh data (``Cache-Control: no-cache``) waits for that refresh.

    Args:
        ttl: ``policy.ttl`` in seconds.

    Returns:
        Nanoseconds: ``ttl * LEAD_FRACTION`` clamped to ``[MIN_LEAD, MAX_LEAD]``, and never more than half
        the TTL: a lead of the whole TTL (``ttl = 1`` against ``MIN_LEAD``) made every new generation due
        the moment it was committed, and the scheduler refreshed such an archive back to back (814 commits
        in 15 s).
    """
    lead = min(max(ttl * LEAD_FRACTION, MIN_LEAD), MAX_LEAD, ttl / 2)
    return int(lead * NS_PER_SECOND)


def derive_etag(identity: FileIdentity, payload_crc32: int) -> str:
    """A strong ETag for an archive without a trusted payload hash.

    Archives written by the reference (no ``state.json``), or whose payload another tool replaced (a stale
    state), carry no BLAKE3 we can trust, and hashing the payload on the request path is exactly what rule
    11 forbids. The file identity changes with every rewrite (a swap makes a new inode; an in-place edit
    changes mtime or size), and the CRC-32 ties the tag to the payload bytes as well, so two responses
    with the same tag carry the same bytes: a strong validator in the sense of RFC 9110 §8.8.1. The tag is
    not comparable across machines or copies, unlike a BLAKE3 tag, and it has a different shape (it never
    looks like 64 hex digits), so a client can tell the two apart.

    Args:
        identity: The file version.
        payload_crc32: The payload's CRC-32 from the central directory.

    Returns:
        ``<inode>-<mtime_ns>-<size>-<crc32>`` in hex.
    """
    return f"{identity.inode:x}-{identity.mtime_ns:x}-{identity.size:x}-{payload_crc32:08x}"


def _has_update_logic(snapshot: ArchiveSnapshot) -> bool:
    wasm = snapshot.directory.get(WASM_ENTRY)
    if wasm is None:
        return False
    return not (wasm.size == len(EMPTY_WASM) and wasm.crc32 == EMPTY_WASM_CRC32)


def _last_modified(timestamp: str, identity: FileIdentity, parsed_ns: int | None = None) -> float:
    # The commit time (or the manifest's creation time) is what changed the payload; the file's mtime also
    # moves on copies and restores. A timestamp later than the file itself (a manifest dated in the future,
    # as the spec's reference manifest is) would break RFC 9110's "never later than Date", so the earlier
    # of the two is used; an unparsable timestamp falls back to the mtime.
    # ``parsed_ns`` is ``timestamp`` already parsed, when the caller has it.
    mtime = identity.mtime_ns / NS_PER_SECOND
    try:
        stamped = (parse_timestamp_ns(timestamp) if parsed_ns is None else parsed_ns) / NS_PER_SECOND
    except ValueError:
        return mtime
    return min(stamped, mtime)
