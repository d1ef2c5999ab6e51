"""``SyncBuilder``: create archives with the reference's fluent shape (spec §5.1), atomically.

Entries are written STORED in the reference's order (``manifest.toml``, ``payload``, ``sync.wasm``,
``context.json``, ``sync.proof``) followed by our ``state.json`` (generation 0 and the payload's hashes),
into a temp file that replaces the destination only once it is complete and synced (the reference
truncates in place, §9 D14). Without ``with_wasm_bytes`` the 8-byte empty module is written, so the
reference can always open what we write. The manifest is re-parsed before writing so we never store one
that a reader would refuse.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sync_format.archive_writer import UNLIMITED, PayloadSource, write_temp_archive
from sync_format.atomic import publish
from sync_format.errors import ArchiveError, MissingEntry
from sync_format.manifest import Manifest
from sync_format.media import check_served_fields
from sync_format.payload_io import PayloadDigest
from sync_format.reader import (
    CONTEXT_ENTRY,
    MANIFEST_ENTRY,
    MAX_CONTEXT_SIZE,
    PAYLOAD_ENTRY,
    PROOF_ENTRY,
    WASM_ENTRY,
)
from sync_format.state import ArchiveState
from sync_format.zip_writer import Progress

#: The smallest valid WebAssembly module: magic and version, no sections (no update logic).
EMPTY_WASM = b"\x00asm\x01\x00\x00\x00"


@dataclass(frozen=True)
class BuildResult:
    """What ``write_to`` produced.

    Attributes:
        path: The archive written.
        payload_offset: Data offset of the payload.
        payload: Size, CRC-32 and BLAKE3 of the payload.
    """

    path: Path
    payload_offset: int
    payload: PayloadDigest


class SyncBuilder:
    """Fluent archive builder; every ``with_*`` returns the builder."""

    def __init__(self) -> None:
        self._manifest: bytes | None = None
        self._payload: PayloadSource | None = None
        self._wasm: bytes = EMPTY_WASM
        self._context: bytes | None = None
        self._proof: bytes | None = None
        self._state = True

    def with_manifest(self, manifest: Manifest) -> SyncBuilder:
        """Use this manifest, serialised as the reference does (spec §2.7).

        Args:
            manifest: The manifest.

        Returns:
            The builder.
        """
        return self.with_manifest_bytes(manifest.to_bytes())

    def with_manifest_bytes(self, data: bytes) -> SyncBuilder:
        """Use these manifest bytes verbatim (for example a signed manifest).

        Args:
            data: UTF-8 TOML; it must parse as a manifest.

        Returns:
            The builder.

        Raises:
            ManifestError: The bytes are not a valid manifest.
        """
        manifest = Manifest.from_bytes(data)
        check_served_fields(manifest.sync.content_type, manifest.sync.display_ext)
        self._manifest = data
        return self

    def with_payload_bytes(self, data: bytes) -> SyncBuilder:
        """Use a payload held in memory.

        Args:
            data: The payload.

        Returns:
            The builder.
        """
        self._payload = PayloadSource.from_bytes(data)
        return self

    def with_payload_file(self, path: str | os.PathLike[str]) -> SyncBuilder:
        """Stream the payload from a file when writing (constant memory, any size).

        Args:
            path: A regular file.

        Returns:
            The builder.

        Raises:
            ArchiveError: The file cannot be read.
        """
        self._payload = PayloadSource.from_path(path)
        return self

    def with_payload_stream(self, stream: IO[bytes], size: int) -> SyncBuilder:
        """Stream the payload from an open file or stream that yields exactly ``size`` bytes from where it
        is now (read when writing; not closed). For a file the caller has open: nothing is opened again by
        name.

        Args:
            stream: Readable binary stream.
            size: Bytes it yields.

        Returns:
            The builder.
        """
        self._payload = PayloadSource.from_stream(stream, size)
        return self

    def with_wasm_bytes(self, data: bytes) -> SyncBuilder:
        """Use this guest module as the update logic.

        Args:
            data: A binary WebAssembly module (magic ``\\0asm`` and version 1).

        Returns:
            The builder.

        Raises:
            ArchiveError: The bytes are not a binary WebAssembly module.
        """
        if data[:8] != EMPTY_WASM[:8]:
            raise ArchiveError("sync.wasm must be a binary WebAssembly module (\\0asm, version 1)")
        self._wasm = data
        return self

    def with_context_bytes(self, data: bytes) -> SyncBuilder:
        """Add ``context.json`` from raw bytes.

        Args:
            data: UTF-8 JSON text of an object, at most ``MAX_CONTEXT_SIZE`` bytes.

        Returns:
            The builder.

        Raises:
            ArchiveError: Not a JSON object, or too large.
        """
        if len(data) > MAX_CONTEXT_SIZE:
            raise ArchiveError(f"context.json is larger than {MAX_CONTEXT_SIZE} bytes")
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # ValueError covers decode errors and huge integers
            raise ArchiveError(f"context.json is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ArchiveError("context.json must be a JSON object")
        self._context = data
        return self

    def with_context_json(self, value: dict[str, Any]) -> SyncBuilder:
        """Add ``context.json`` encoded compactly with sorted keys, as the reference does.

        Args:
            value: A JSON-serialisable object.

        Returns:
            The builder.
        """
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self.with_context_bytes(data.encode("utf-8"))

    def with_proof_bytes(self, data: bytes) -> SyncBuilder:
        """Add ``sync.proof`` (opaque bytes, never interpreted).

        Args:
            data: The proof.

        Returns:
            The builder.
        """
        self._proof = data
        return self

    def without_state(self) -> SyncBuilder:
        """Write exactly the reference's entries, without ``state.json`` (for byte-level comparisons).

        Returns:
            The builder.
        """
        self._state = False
        return self

    def entries(self) -> list[tuple[str, bytes]]:
        """The non-payload entries that will be written, in order.

        Returns:
            ``(name, bytes)`` pairs, manifest first.

        Raises:
            MissingEntry: No manifest was set.
        """
        if self._manifest is None:
            raise MissingEntry(MANIFEST_ENTRY)
        out = [(MANIFEST_ENTRY, self._manifest), (WASM_ENTRY, self._wasm)]
        if self._context is not None:
            out.append((CONTEXT_ENTRY, self._context))
        if self._proof is not None:
            out.append((PROOF_ENTRY, self._proof))
        return out

    def write_to(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        max_payload_size: int = UNLIMITED,
    ) -> BuildResult:
        """Write the archive atomically (parent directories are created).

        Args:
            path: Destination; an existing file there is replaced only when the new one is complete.
            progress: Called with the number of payload bytes copied so far.
            max_payload_size: Refuse payloads larger than this many bytes.

        Returns:
            Where the archive went and its payload's position and digests.

        Raises:
            MissingEntry: No manifest or no payload was set (checked in that order).
            ArchiveError: The archive could not be written.
        """
        entries = self.entries()
        if self._payload is None:
            raise MissingEntry(PAYLOAD_ENTRY)
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create directory: {exc.strerror}", path=target) from exc
        temp = write_temp_archive(
            target,
            entries[:1],
            self._payload,
            entries[1:],
            state_for=_initial_state if self._state else None,
            max_payload_size=max_payload_size,
            progress=progress,
        )
        publish(temp.temp, target)
        return BuildResult(target, temp.payload_offset, temp.digest)


def _initial_state(digest: PayloadDigest) -> ArchiveState:
    return ArchiveState(
        generation=0,
        updated_at=None,
        payload_size=digest.size,
        payload_crc32=digest.crc32,
        payload_blake3=digest.blake3,
    )
