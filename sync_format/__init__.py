"""The ``.sync`` format: strict reading, byte-compatible writing, the atomic swap, signatures, freshness.

This package mirrors the reference crate ``sync-format`` (spec ``sync-format.md``) and imports no Celery,
Redis, wsgidav, cheroot or wasmtime: everything else in sync builds on it. ``__all__`` lists what other
packages and library users use (reading, building, swapping, the manifest's types and the ``SyncError``
tree); store helpers and writer internals are reached through their modules.
"""

from __future__ import annotations

from sync_format.builder import EMPTY_WASM, BuildResult, SyncBuilder
from sync_format.errors import (
    ArchiveError,
    BrokerUnavailable,
    CommitLockBusy,
    FolderChanged,
    GuestError,
    GuestOutOfFuel,
    GuestTimeout,
    GuestTrap,
    MalformedArchive,
    ManifestError,
    MissingEntry,
    PolicyDenied,
    SandboxUnavailable,
    SignatureError,
    SwapConflict,
    SyncError,
)
from sync_format.freshness import Expiry, expiry, format_timestamp, parse_timestamp_ns
from sync_format.hosts import host_allowed, invalid_entries, parse_url, url_allowed
from sync_format.manifest import (
    CapabilitiesSection,
    EncryptionMeta,
    EncryptionSection,
    Manifest,
    MetaSection,
    OwnershipSection,
    PermissionsSection,
    PolicySection,
    SignatureSection,
    SyncSection,
    Variant,
    VerificationSection,
)
from sync_format.payload_io import PayloadDigest, PayloadReader
from sync_format.reader import (
    CONTEXT_ENTRY,
    MANIFEST_ENTRY,
    PAYLOAD_ENTRY,
    PROOF_ENTRY,
    WASM_ENTRY,
    ArchiveSnapshot,
    FileIdentity,
    open_archive,
    open_archive_at,
    open_archive_fd,
)
from sync_format.state import STATE_ENTRY
from sync_format.store import (
    display_name,
    store_path_for,
    writable_display_name,
)
from sync_format.swap import CommitResult, commit_payload

__all__ = [
    "CONTEXT_ENTRY",
    "EMPTY_WASM",
    "MANIFEST_ENTRY",
    "PAYLOAD_ENTRY",
    "PROOF_ENTRY",
    "STATE_ENTRY",
    "WASM_ENTRY",
    "ArchiveError",
    "ArchiveSnapshot",
    "BrokerUnavailable",
    "BuildResult",
    "CapabilitiesSection",
    "CommitLockBusy",
    "CommitResult",
    "EncryptionMeta",
    "EncryptionSection",
    "Expiry",
    "FileIdentity",
    "FolderChanged",
    "GuestError",
    "GuestOutOfFuel",
    "GuestTimeout",
    "GuestTrap",
    "MalformedArchive",
    "Manifest",
    "ManifestError",
    "MetaSection",
    "MissingEntry",
    "OwnershipSection",
    "PayloadDigest",
    "PayloadReader",
    "PermissionsSection",
    "PolicyDenied",
    "PolicySection",
    "SandboxUnavailable",
    "SignatureError",
    "SignatureSection",
    "SwapConflict",
    "SyncBuilder",
    "SyncError",
    "SyncSection",
    "Variant",
    "VerificationSection",
    "commit_payload",
    "display_name",
    "expiry",
    "format_timestamp",
    "host_allowed",
    "invalid_entries",
    "open_archive",
    "open_archive_at",
    "open_archive_fd",
    "parse_timestamp_ns",
    "parse_url",
    "store_path_for",
    "url_allowed",
    "writable_display_name",
]
