"""Scheme B: the ``[signature]`` table in ``manifest.toml`` (spec §3.3), and our versioned extension.

**v1 (the reference's, byte-for-byte).** ``manifest_hash`` is the BLAKE3 of the canonical JSON of the
normalised manifest; the Ed25519 message is the canonical JSON of ``{manifest_hash, payload_hash, signer,
timestamp}``; ``value`` is its base64 signature. Verification follows the reference's order and outcomes.

**Extension ``sync-ext/1``.** v1 leaves ``sync.wasm``, ``context.json``, ``sync.proof`` and unknown manifest
keys unsigned (§9 D7): the update logic of a signed archive could be swapped. The extension adds
``document_hash`` (the whole TOML document minus ``[signature]``), ``wasm_hash``, ``context_hash``,
``proof_hash`` and ``extension_value``, a second signature over all of them. The reference ignores these keys,
so an extended signature still verifies there; we report both verdicts.

A self-updating archive's payload changes on every refresh while its manifest never does, so ``sign_manifest``
binds the payload only when asked (archives without update logic); a ``payload_hash`` that no longer matches
is reported, never hidden.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from sync_format.errors import SignatureError
from sync_format.freshness import check_timestamp
from sync_format.manifest import Manifest, MetaSection, SignatureSection, manifest_text
from sync_format.payload_io import PayloadDigest
from sync_format.reader import ArchiveSnapshot
from sync_format.signing.canonical import (
    HASH_PREFIX,
    b64decode_strict,
    b64encode,
    canonical_json,
    document_json,
    hash_string,
)
from sync_format.signing.did import public_key_from_did
from sync_format.signing.keys import SigningKey

ALGORITHM = "Ed25519"
EXTENSION = "sync-ext/1"
SIGNATURE_SIZE = 64


def manifest_hash(manifest: Manifest) -> str:
    """The v1 ``manifest_hash`` of a manifest (its ``[signature]`` and unknown keys are not covered).

    Args:
        manifest: The manifest.

    Returns:
        ``blake3:<hex>``.
    """
    return hash_string(canonical_json(manifest.normalized()))


def document_hash(manifest_text: str) -> str:
    """The extension's ``document_hash``: every table and key of the manifest except ``[signature]``.

    Args:
        manifest_text: The manifest's TOML text.

    Returns:
        ``blake3:<hex>``.
    """
    doc = tomllib.loads(manifest_text)
    doc.pop("signature", None)
    return hash_string(canonical_json(document_json(doc)))


def signing_payload(sig: SignatureSection, signer: str) -> bytes:
    """The exact bytes the v1 signature covers.

    Args:
        sig: The signature table (its stored hashes and timestamp are used).
        signer: ``meta.created_by``.

    Returns:
        Canonical JSON bytes.
    """
    return canonical_json(
        {
            "manifest_hash": sig.manifest_hash,
            "payload_hash": sig.payload_hash,
            "signer": signer,
            "timestamp": sig.timestamp,
        }
    )


def extension_payload(sig: SignatureSection, signer: str) -> bytes:
    """The exact bytes the extension signature covers.

    Args:
        sig: The signature table.
        signer: ``meta.created_by``.

    Returns:
        Canonical JSON bytes.
    """
    return canonical_json(
        {
            "context_hash": sig.context_hash,
            "document_hash": sig.document_hash,
            "extension": sig.extension,
            "manifest_hash": sig.manifest_hash,
            "payload_hash": sig.payload_hash,
            "proof_hash": sig.proof_hash,
            "signer": signer,
            "timestamp": sig.timestamp,
            "wasm_hash": sig.wasm_hash,
        }
    )


def sign_manifest(
    manifest: Manifest,
    key: SigningKey,
    *,
    timestamp: str,
    payload: bytes | str | None = None,
    wasm: bytes | None = None,
    context: bytes | None = None,
    proof: bytes | None = None,
    extension: bool = True,
) -> Manifest:
    """Sign a manifest: set ``created_by`` to the key's DID and add the ``[signature]`` table.

    Args:
        manifest: The manifest to sign (an existing signature is replaced).
        key: The signing key.
        timestamp: RFC 3339 signing time.
        payload: Payload bytes or their ``blake3:`` hash string to bind, or None to leave the payload
            unbound (self-updating archives).
        wasm: The ``sync.wasm`` bytes to bind (extension).
        context: The ``context.json`` bytes to bind (extension).
        proof: The ``sync.proof`` bytes to bind (extension).
        extension: Add the ``sync-ext/1`` fields; False writes a plain v1 signature.

    Returns:
        The signed manifest; write it with ``to_bytes()`` and keep those exact bytes.

    Raises:
        ManifestError: ``timestamp`` is not RFC 3339.
    """
    check_timestamp(timestamp, "signature.timestamp")
    unsigned = replace(manifest.without_signature(), meta=_with_creator(manifest.meta, key.did))
    payload_hash = payload if isinstance(payload, str) or payload is None else hash_string(payload)
    sig = SignatureSection(
        algo=ALGORITHM,
        manifest_hash=manifest_hash(unsigned),
        payload_hash=payload_hash,
        timestamp=timestamp,
        value="",
    )
    sig = replace(sig, value=b64encode(key.sign(signing_payload(sig, key.did))))
    if extension:
        sig = replace(
            sig,
            extension=EXTENSION,
            document_hash=document_hash(unsigned.to_toml()),
            wasm_hash=None if wasm is None else hash_string(wasm),
            context_hash=None if context is None else hash_string(context),
            proof_hash=None if proof is None else hash_string(proof),
        )
        sig = replace(sig, extension_value=b64encode(key.sign(extension_payload(sig, key.did))))
    return replace(unsigned, signature=sig)


def _with_creator(meta: MetaSection, did: str) -> MetaSection:
    return replace(meta, created_by=did)


@dataclass(frozen=True)
class ManifestVerification:
    """The outcome of verifying a manifest signature.

    Attributes:
        valid: The reference's (v1) verdict.
        error: Why v1 is not valid, in the reference's words.
        manifest_hash: The recomputed v1 hash ("" when there is no signature).
        payload_hash: The recomputed payload hash, when the signature binds the payload.
        signer: ``meta.created_by`` when a signature is present.
        extension: The extension name when present.
        extension_valid: The extension's verdict, None when there is no extension.
        extension_error: Why the extension is not valid.
        covers_wasm: True when a valid extension binds the archive's ``sync.wasm``.
    """

    valid: bool
    error: str | None
    manifest_hash: str
    payload_hash: str | None = None
    signer: str | None = None
    extension: str | None = None
    extension_valid: bool | None = None
    extension_error: str | None = None
    covers_wasm: bool = False

    @property
    def ok(self) -> bool:
        """True when v1 is valid and any extension present is valid too."""
        return self.valid and self.extension_valid is not False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``syncctl verify --json``).

        Returns:
            The fields as a dict.
        """
        return {
            "valid": self.valid,
            "ok": self.ok,
            "error": self.error,
            "manifest_hash": self.manifest_hash,
            "payload_hash": self.payload_hash,
            "signer": self.signer,
            "extension": self.extension,
            "extension_valid": self.extension_valid,
            "extension_error": self.extension_error,
            "covers_wasm": self.covers_wasm,
        }


def verify_manifest_signature(
    snapshot: ArchiveSnapshot, *, payload_digest: PayloadDigest | None = None
) -> ManifestVerification:
    """Verify an archive's manifest signature in the reference's order, then the extension.

    Args:
        snapshot: The opened archive (its manifest bytes, payload and entries are read from it).
        payload_digest: The payload's digest when the caller already streamed it (it is not read again).

    Returns:
        The verdicts; a signature that does not match is ``valid=False``, not an exception.

    Raises:
        SignatureError: Hard errors of the reference: unsupported algorithm (``unsupported_algorithm``),
            signer not a did:key (``invalid_public_key``), malformed base64 value (``invalid_signature``).
    """
    manifest = snapshot.manifest
    sig = manifest.signature
    if sig is None:
        return ManifestVerification(False, "signature section missing", "")
    if sig.algo != ALGORITHM:
        raise SignatureError("unsupported_algorithm", f"unsupported signature algorithm {sig.algo!r}")
    computed = manifest_hash(manifest)
    signer = manifest.meta.created_by
    result = ManifestVerification(False, None, computed, signer=signer, extension=sig.extension)
    if computed != sig.manifest_hash:
        return replace(result, error="manifest hash mismatch")
    if sig.payload_hash is not None:
        digest = payload_digest if payload_digest is not None else snapshot.digest_payload()
        payload_hash = HASH_PREFIX + digest.blake3
        result = replace(result, payload_hash=payload_hash)
        if payload_hash != sig.payload_hash:
            return replace(result, error="payload hash mismatch")
    public_key = public_key_from_did(signer)
    signature = _decode_signature(sig.value)
    if len(signature) != SIGNATURE_SIZE:
        return replace(result, error="Invalid signature length")
    if not _verify(public_key, signing_payload(sig, signer), signature):
        return replace(result, error="Signature verification failed: bad signature")
    result = replace(result, valid=True)
    if sig.extension is None:
        return result
    ext_error = _check_extension(snapshot, sig, public_key, signer)
    return replace(
        result,
        extension_valid=ext_error is None,
        extension_error=ext_error,
        covers_wasm=ext_error is None and sig.wasm_hash is not None,
    )


def _check_extension(
    snapshot: ArchiveSnapshot, sig: SignatureSection, public_key: bytes, signer: str
) -> str | None:
    if sig.extension != EXTENSION:
        return f"unknown signature extension {sig.extension!r}"
    if sig.document_hash is None or sig.extension_value is None:
        return "extension fields missing (document_hash, extension_value)"
    try:
        signature = b64decode_strict(sig.extension_value)
    except ValueError as exc:
        return f"extension_value: {exc}"
    if len(signature) != SIGNATURE_SIZE or not _verify(public_key, extension_payload(sig, signer), signature):
        return "extension signature verification failed"
    if document_hash(manifest_text(snapshot.manifest_bytes)) != sig.document_hash:
        return "document hash mismatch (manifest keys outside the v1 schema changed)"
    bound = (
        ("sync.wasm", snapshot.read_wasm(), sig.wasm_hash),
        ("context.json", snapshot.read_context(), sig.context_hash),
        ("sync.proof", snapshot.read_entry("sync.proof"), sig.proof_hash),
    )
    for name, data, expected in bound:
        actual = None if data is None else hash_string(data)
        if actual != expected:
            return f"{name} does not match the signed hash"
    return None


def _decode_signature(value: str) -> bytes:
    try:
        return b64decode_strict(value)
    except ValueError as exc:
        raise SignatureError("invalid_signature", f"signature value: {exc}") from exc


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Strict Ed25519 (libsodium): canonical S, no small-order keys or R."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError:
        return False
    return True
