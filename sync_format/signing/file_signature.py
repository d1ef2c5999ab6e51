"""Scheme A: a detached signature over the whole archive file (spec §3.2, TV-6).

The document ``{"algorithm", "public_key", "signature", "content_hash", "signed_at"}`` lives outside the
archive (it covers every byte of it); by our convention next to it as ``<archive>.sig.json``. The Ed25519
message is the raw 32-byte BLAKE3 digest of the file, not its hex text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import blake3
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from sync_format.errors import ArchiveError, SignatureError
from sync_format.payload_io import READ_BLOCK
from sync_format.reader import open_regular
from sync_format.signing.canonical import HASH_PREFIX, b64decode_strict, b64encode
from sync_format.signing.did import public_key_from_did
from sync_format.signing.keys import SigningKey

ALGORITHM = "Ed25519"
SIDECAR_SUFFIX = ".sig.json"
#: Largest signature document read (one is about 300 bytes).
MAX_SIGNATURE_DOCUMENT = 64 * 1024


def _read_document(path: str | os.PathLike[str]) -> str:
    # The text of a signature document, at most ``MAX_SIGNATURE_DOCUMENT`` bytes of UTF-8.
    with os.fdopen(open_regular(path)[0], "rb") as handle:
        raw = handle.read(MAX_SIGNATURE_DOCUMENT + 1)
    if len(raw) > MAX_SIGNATURE_DOCUMENT:
        raise ValueError(f"more than {MAX_SIGNATURE_DOCUMENT} bytes")
    return raw.decode("utf-8")


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """BLAKE3 of a whole file, streamed.

    Args:
        path: The file.

    Returns:
        The 32-byte digest.

    Raises:
        ArchiveError: The file cannot be read.
    """
    hasher = blake3.blake3()
    try:
        with os.fdopen(open_regular(path)[0], "rb") as handle:  # a FIFO or device: refused, not read
            while block := handle.read(READ_BLOCK):
                hasher.update(block)
    except OSError as exc:
        raise ArchiveError(f"cannot read: {exc.strerror}", path=path) from exc
    return hasher.digest()


def compute_content_hash(path: str | os.PathLike[str]) -> str:
    """The ``content_hash`` of a file.

    Args:
        path: The file.

    Returns:
        ``blake3:<hex>``.
    """
    return HASH_PREFIX + file_digest(path).hex()


def sign_file(path: str | os.PathLike[str], key: SigningKey, signed_at: int) -> dict[str, Any]:
    """Make the detached signature document of a file.

    Args:
        path: The archive.
        key: The signing key.
        signed_at: Unix seconds.

    Returns:
        The JSON-ready document.
    """
    digest = file_digest(path)
    return {
        "algorithm": ALGORITHM,
        "public_key": key.did,
        "signature": b64encode(key.sign(digest)),
        "content_hash": HASH_PREFIX + digest.hex(),
        "signed_at": signed_at,
    }


@dataclass(frozen=True)
class FileVerification:
    """Outcome of verifying a detached file signature.

    Attributes:
        valid: True when the file matches and the signature verifies.
        computed_hash: The file's ``blake3:`` hash.
        public_key: The decoded public key, when decoding got that far.
        error: Why it is not valid.
    """

    valid: bool
    computed_hash: str
    public_key: bytes | None = None
    error: str | None = None


def verify_sync_file(path: str | os.PathLike[str], document: dict[str, Any]) -> FileVerification:
    """Verify a detached signature in the reference's order (spec §3.2).

    Args:
        path: The archive.
        document: The parsed signature document.

    Returns:
        The verdict; mismatches are ``valid=False``.

    Raises:
        SignatureError: ``unsupported_algorithm`` when the algorithm is not Ed25519.
        ArchiveError: The file cannot be read.
    """
    if document.get("algorithm") != ALGORITHM:
        raise SignatureError(
            "unsupported_algorithm", f"unsupported algorithm {document.get('algorithm')!r}", path=path
        )
    digest = file_digest(path)
    computed = HASH_PREFIX + digest.hex()
    if computed != document.get("content_hash"):
        return FileVerification(False, computed, error=f"Content hash mismatch: file is {computed}")
    try:
        public_key = public_key_from_did(str(document.get("public_key", "")))
    except SignatureError as exc:
        return FileVerification(False, computed, error=f"Invalid public key: {exc.reason}")
    try:
        signature = b64decode_strict(str(document.get("signature", "")))
    except ValueError as exc:
        return FileVerification(False, computed, public_key, f"Invalid signature encoding: {exc}")
    if len(signature) != 64:
        return FileVerification(False, computed, public_key, "Invalid signature length")
    try:
        VerifyKey(public_key).verify(digest, signature)
    except BadSignatureError:
        return FileVerification(False, computed, public_key, "Signature verification failed")
    return FileVerification(True, computed, public_key)


def read_signature_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a detached signature document.

    Args:
        path: The ``.sig.json`` file.

    Returns:
        The document.

    Raises:
        SignatureError: ``invalid_signature`` when it is not a JSON object.
    """
    try:
        doc = json.loads(_read_document(path))
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise SignatureError(
            "invalid_signature", f"cannot read signature document: {exc}", path=path
        ) from exc
    if not isinstance(doc, dict):
        raise SignatureError("invalid_signature", "signature document must be a JSON object", path=path)
    return doc
