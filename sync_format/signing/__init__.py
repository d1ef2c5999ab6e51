"""Signatures: Ed25519 keys and did:key, manifest signatures (v1 and our extension), detached signatures."""

from __future__ import annotations

from sync_format.signing.did import b58decode, b58encode, did_from_public_key, public_key_from_did
from sync_format.signing.file_signature import (
    SIDECAR_SUFFIX,
    FileVerification,
    compute_content_hash,
    read_signature_document,
    sign_file,
    verify_sync_file,
)
from sync_format.signing.keys import SigningKey, read_key_file, write_key_file
from sync_format.signing.manifest_signature import (
    EXTENSION,
    ManifestVerification,
    document_hash,
    manifest_hash,
    sign_manifest,
    verify_manifest_signature,
)

__all__ = [
    "EXTENSION",
    "SIDECAR_SUFFIX",
    "FileVerification",
    "ManifestVerification",
    "SigningKey",
    "b58decode",
    "b58encode",
    "compute_content_hash",
    "did_from_public_key",
    "document_hash",
    "manifest_hash",
    "public_key_from_did",
    "read_key_file",
    "read_signature_document",
    "sign_file",
    "sign_manifest",
    "verify_manifest_signature",
    "verify_sync_file",
    "write_key_file",
]
