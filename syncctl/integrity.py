"""What ``syncctl verify`` checks, in order, and the report it prints.

1. **open**: the strict reader accepts the file (container, required entries, manifest, state).
2. **payload crc32**: the payload is hashed in one streaming pass; size and CRC-32 must match the central
   directory, and the BLAKE3 must match ``state.json`` when the state describes this payload (a stale or
   missing state is a note, not a failure: the reference writes no state and keeps an old one on update).
3. **entries**: every other entry is read completely with its size limit and CRC-32 check.
4. **signature**: the manifest ``[signature]``, when present, with both verdicts (reference v1 and our
   ``sync-ext/1``) and whether ``sync.wasm`` is covered. A payload hash that no longer matches after a
   refresh is explained: the signature bound only the original payload.
5. **detached signature**: ``<archive>.sig.json`` next to the archive, when present (it covers every byte
   of the file, so it stops matching at the first refresh).

``require_signature`` turns "no signature of either kind" into a failure, and so a manifest signature that
leaves non-empty update logic unsigned (v1 without the ``sync-ext/1`` extension, or with it stripped) unless
a whole-file signature is valid. The archive is intact when every
check passed; notes never fail it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync_format.builder import EMPTY_WASM
from sync_format.errors import ArchiveError
from sync_format.escape import escape_text
from sync_format.payload_io import PayloadDigest
from sync_format.reader import PAYLOAD_ENTRY, WASM_ENTRY, ArchiveSnapshot, open_archive
from sync_format.signing import (
    SIDECAR_SUFFIX,
    ManifestVerification,
    read_signature_document,
    verify_manifest_signature,
    verify_sync_file,
)

#: Longest detail of a check shown, in characters (escapes included): a list of entry names can be long.
DETAIL_LIMIT = 4000


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome.

    Attributes:
        name: The step (``payload crc32``, ``signature``...).
        ok: Whether it passed.
        detail: What was found, in words.
    """

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON-ready dict.

        Returns:
            ``{"name", "ok", "detail"}``.
        """
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class IntegrityReport:
    """Everything ``verify`` found.

    Attributes:
        path: The archive.
        checks: The steps run, in order.
        notes: Observations that do not make the archive fail.
        warnings: Observations a user should see even in ``--json`` mode (printed on stderr).
        generation: The archive's generation, when it opened.
        signature: The manifest signature verdicts, when there is a signature and it could be checked.
        detached: The detached signature's verdict, when there is a sidecar.
    """

    path: Path
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    generation: int | None = None
    signature: ManifestVerification | None = None
    detached: dict[str, Any] | None = None
    wasm_uncovered: bool = False  # a valid manifest signature that does not cover a non-empty sync.wasm

    @property
    def opened(self) -> bool:
        """True when the strict reader accepted the file (the first check)."""
        return bool(self.checks) and self.checks[0].ok

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failure_message(self) -> str:
        """One line naming the first failed check (and how many more failed).

        Returns:
            The message; ``""`` when the archive is intact.
        """
        failed = [c for c in self.checks if not c.ok]
        if not failed:
            return ""
        first = failed[0]
        text = first.detail if first.name == "open" else f"{first.name}: {first.detail}"
        if len(failed) > 1:
            text += f" (and {len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''})"
        return text

    def to_json(self) -> dict[str, Any]:
        """The ``verify --json`` document.

        Returns:
            A JSON-ready dict.
        """
        return {
            "path": str(self.path),
            "ok": self.ok,
            "generation": self.generation,
            "checks": [c.to_json() for c in self.checks],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "signature": None if self.signature is None else self.signature.to_json(),
            "detached_signature": self.detached,
        }

    def render_text(self) -> str:
        """The report for people.

        Returns:
            Text ending with a newline.
        """
        # Details quote the archive (entry names, the signer, extension names, a sidecar's key): escaped,
        # so that no newline or terminal sequence the author chose can print a line of its own (a forged
        # "ok signature … intact" above a hidden "NOT intact").
        lines = [f"verify {escape_text(self.path, DETAIL_LIMIT)}"]
        lines += [
            f"  {'ok' if c.ok else 'FAIL':<5} {c.name}: {escape_text(c.detail, DETAIL_LIMIT)}"
            for c in self.checks
        ]
        lines += [f"  note: {escape_text(note, DETAIL_LIMIT)}" for note in self.notes]
        lines += [f"  warning: {escape_text(warning, DETAIL_LIMIT)}" for warning in self.warnings]
        lines.append("intact" if self.ok else "NOT intact")
        return "\n".join(lines) + "\n"


def check_archive(path: str | Path, *, require_signature: bool = False) -> IntegrityReport:
    """Run every check on an archive.

    Args:
        path: The archive.
        require_signature: Fail when the archive has neither a manifest signature nor a sidecar.

    Returns:
        The report; an archive that does not open is a report with a failed ``open`` check.

    Raises:
        OSError: Reading failed below the library (for example EIO while hashing the payload).
    """
    target = Path(path)
    try:
        snapshot = open_archive(target)
    except ArchiveError as exc:
        return IntegrityReport(target, (Check("open", False, str(exc)),))
    with snapshot:
        return _Checker(snapshot, require_signature).run()


@dataclass
class _Checker:
    snapshot: ArchiveSnapshot
    require_signature: bool
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    signature: ManifestVerification | None = None
    detached: dict[str, Any] | None = None
    wasm_uncovered: bool = False  # a valid manifest signature that does not cover a non-empty sync.wasm

    @property
    def generation(self) -> int:
        return self.snapshot.generation

    def run(self) -> IntegrityReport:
        snap = self.snapshot
        self.checks.append(Check("open", True, "strict validation passed"))
        digest = snap.digest_payload()
        self._payload(digest)
        wasm = self._entries()
        sidecar = snap.path.with_name(snap.path.name + SIDECAR_SUFFIX)
        has_sidecar = sidecar.is_file()
        if snap.manifest.signature is not None:
            self._manifest_signature(wasm, digest)
        elif self.require_signature and not has_sidecar:
            self.checks.append(
                Check(
                    "signature",
                    False,
                    f"required but missing: no [signature] table and no {sidecar.name}",
                )
            )
        elif not has_sidecar:
            self.notes.append("unsigned")
        if has_sidecar:
            self._detached(sidecar)
        signed_whole = self.detached is not None and bool(self.detached.get("valid"))
        if self.require_signature and self.wasm_uncovered and not signed_whole:
            # A v1 signature stays valid when someone strips the sync-ext/1 keys and swaps sync.wasm: asked
            # to require a signature, the update logic that will run must be signed too.
            self.checks.append(
                Check(
                    "signature covers sync.wasm",
                    False,
                    "required: the update logic is not signed (no sync-ext/1 extension, no whole-file"
                    f" signature {sidecar.name}); it could have been replaced",
                )
            )
        return IntegrityReport(
            snap.path,
            tuple(self.checks),
            tuple(self.notes),
            tuple(self.warnings),
            self.generation,
            self.signature,
            self.detached,
        )

    def _payload(self, digest: PayloadDigest) -> None:
        snap = self.snapshot
        crc_ok = digest.crc32 == snap.payload.crc32 and digest.size == snap.payload_size
        detail = f"{digest.size} bytes, crc32 {digest.crc32:08x}"
        if not crc_ok:
            detail += (
                f", but the central directory says {snap.payload_size} bytes, "
                f"crc32 {snap.payload.crc32:08x}: the payload is damaged"
            )
        self.checks.append(Check("payload crc32", crc_ok, detail))
        state = snap.state
        recorded = state.trusted_blake3
        if recorded is not None:
            same = recorded == digest.blake3
            detail = f"{digest.blake3} " + (
                f"matches state.json (generation {state.generation})"
                if same
                else f"differs from state.json (generation {state.generation}): {recorded}"
            )
            self.checks.append(Check("payload blake3", same, detail))
        elif state.stale:
            self.notes.append(
                "state.json describes an earlier payload (changed by a tool that does not keep it); "
                "its hash is not trusted"
            )
        else:
            self.notes.append("no state.json (written by a tool that keeps no refresh state)")

    def _entries(self) -> bytes | None:
        """Read every non-payload entry (limits and CRC-32); returns ``sync.wasm`` when it is intact."""
        wasm = None
        good: list[str] = []
        bad: list[str] = []
        for entry in self.snapshot.directory.entries:
            if entry.name == PAYLOAD_ENTRY:
                continue
            try:
                data = self.snapshot.read_entry(entry.name)
            except ArchiveError as exc:
                bad.append(exc.reason)
                continue
            good.append(entry.name)
            if entry.name == WASM_ENTRY:
                wasm = data
        detail = "; ".join(bad) if bad else f"{', '.join(good)} read, CRC-32 ok"
        self.checks.append(Check("entries", not bad, detail))
        return wasm

    def _manifest_signature(self, wasm: bytes | None, digest: PayloadDigest) -> None:
        sig = self.snapshot.manifest.signature
        assert sig is not None  # the caller checked
        try:
            result = verify_manifest_signature(self.snapshot, payload_digest=digest)
        except ArchiveError as exc:
            self.checks.append(Check("signature", False, exc.reason))
            return
        self.signature = result
        parts = [f"signer {result.signer}"]
        parts.append("v1 valid" if result.valid else f"v1 invalid: {result.error}")
        if result.extension is None:
            parts.append("no extension")
        elif result.extension_valid is None:
            parts.append(f"{result.extension} not checked")
        elif result.extension_valid:
            parts.append(f"{result.extension} valid")
        else:
            parts.append(f"{result.extension} invalid: {result.extension_error}")
        parts.append("covers sync.wasm" if result.covers_wasm else "does not cover sync.wasm")
        if sig.payload_hash is None:
            parts.append("payload not bound")
        elif result.payload_hash != sig.payload_hash and self.generation > 0:
            parts.append(
                f"the payload was refreshed at generation {self.generation}; "
                "the signature binds only the original payload"
            )
        self.checks.append(Check("signature", result.ok, ", ".join(parts)))
        if result.ok and not result.covers_wasm and wasm not in (None, EMPTY_WASM):
            self.wasm_uncovered = True
            self.warnings.append(
                "the signature does not cover sync.wasm: the update logic could be replaced "
                "without breaking it"
            )

    def _detached(self, sidecar: Path) -> None:
        try:
            document = read_signature_document(sidecar)
            result = verify_sync_file(self.snapshot.path, document)
        except ArchiveError as exc:
            self.checks.append(Check("detached signature", False, exc.reason))
            return
        signer = document.get("public_key")
        self.detached = {
            "path": str(sidecar),
            "valid": result.valid,
            "signer": signer,
            "computed_hash": result.computed_hash,
            "error": result.error,
        }
        detail = f"{sidecar.name}, signer {signer}: " + ("valid" if result.valid else f"{result.error}")
        if not result.valid and self.generation > 0:
            detail += (
                f"; it covers the whole file, which changed when the payload was refreshed "
                f"(generation {self.generation})"
            )
        self.checks.append(Check("detached signature", result.valid, detail))
