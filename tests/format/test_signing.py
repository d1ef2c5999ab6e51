"""Signatures: the spec's vectors TV-5 (manifest), §3.4, TV-6 (detached file), TV-7 (did:key), our
``sync-ext/1`` extension, key files and the strict decoders.

Archives are built from the spec's manifest text exactly (``with_manifest_bytes``), so the v1 vectors are
checked against the bytes a reference publisher would ship, not against our own serialiser.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import outcome_beside_a_fifo

from sync_format import EMPTY_WASM, ArchiveError, Manifest, SignatureError, SyncBuilder, open_archive
from sync_format.signing import (
    EXTENSION,
    ManifestVerification,
    SigningKey,
    b58decode,
    b58encode,
    compute_content_hash,
    did_from_public_key,
    file_signature,
    manifest_hash,
    public_key_from_did,
    read_key_file,
    sign_file,
    sign_manifest,
    verify_manifest_signature,
    verify_sync_file,
    write_key_file,
)
from sync_format.signing.canonical import b64decode_strict, canonical_json
from sync_format.signing.manifest_signature import signing_payload
from sync_format.swap import commit_payload
from sync_format.testing import (
    REFERENCE_MANIFEST_TOML,
    RFC8032_DID,
    RFC8032_SEED,
    make_archive,
    reference_manifest,
)

RFC8032_PUBLIC_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
TIMESTAMP = "2099-01-23T12:00:00Z"
TV5_MANIFEST_HASH = "blake3:7b692bf3651bea1e3497378fb2012e4f7fcab9c85a7a8a27ec2a59e621598a7a"
TV5_PAYLOAD_HASH = "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
TV5_VALUE = "SAZuP9zLDVx34jKrUwrKU+UB+2yC4b70lxLH9X52qdjVXl8n2XegeJgiXSIXC0oWj61MOoPqraGZrqen0v9KDA=="
NO_PAYLOAD_VALUE = "r2zkP0YnvtVulwrgnoVSiVSkhoAmRuR1h+lzIrEI+UM6kazprv9LiwONcRb+Wd0Xt3+re3tsqVw5q5Mh862SCg=="
TTL_3601_HASH = "blake3:88d57c6077ef957f54647cb27db4617c00f3166c3ea78ec6969c3f2573c840f4"
TV6_CONTENT = b"test sync file content"
TV6_CONTENT_HASH = "blake3:58f6b945ee063d935cd037677c97025cb3ad6fb8d9d56e0d15b37f2a2849fd8a"
TV6_SIGNATURE = "xDwZfAu+3cfrxv1uLhA4K0ZWLCnpM6Vd/u8lWKrXeDyljPLU3QDjJVtY4Jl1fL4Fq6E9+w1hqK1vFADe88naBg=="

#: §3.4: the canonical bytes of the normalised TV-5 manifest.
TV5_CANONICAL = (
    b'{"capabilities":{"values":[]},"encryption":{"algorithm":null,"enabled":false,"meta":null},'
    b'"meta":{"created_at":"2099-01-23T12:00:00Z",'
    b'"created_by":"did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw","hash_algo":"blake3"},'
    b'"ownership":{"owner_capsule":null,"write_allowed":false},'
    b'"permissions":{"allow_env":[],"allow_hosts":[]},"policy":{"timeout":30,"ttl":3600},'
    b'"sync":{"content_type":"text/plain","display_ext":"txt","variant":"plain","version":"1.2"},'
    b'"verification":{"enabled":false,"proof_type":null,"vm_type":null}}'
)

#: A second valid module: the empty module plus a custom section named "abc".
OTHER_WASM = EMPTY_WASM + b"\x00\x04\x03abc"

# Small-order Ed25519 points (orders 1, 2, 4, 4, 8, 8): the identity, (0, -1), (±1, 0) with both signs of
# x, and the two canonical order-8 encodings. Reference verification accepts them; we must not.
SMALL_ORDER_KEYS = [
    "01" + "00" * 31,
    "ec" + "ff" * 30 + "7f",
    "00" * 32,
    "00" * 31 + "80",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
]


def _swap(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` (a vector edit that matches nothing would prove nothing)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def _signature_table(value: str, *, payload_hash: str | None = TV5_PAYLOAD_HASH) -> str:
    lines = ["[signature]", 'algo = "Ed25519"', f'manifest_hash = "{TV5_MANIFEST_HASH}"']
    if payload_hash is not None:
        lines.append(f'payload_hash = "{payload_hash}"')
    lines += [f'timestamp = "{TIMESTAMP}"', f'value = "{value}"']
    return "\n".join(lines) + "\n\n"


#: The §2.7 manifest with the §3.4 DID as creator, unsigned.
TV5_UNSIGNED = _swap(REFERENCE_MANIFEST_TOML, 'created_by = "builder"', f'created_by = "{RFC8032_DID}"')
#: TV-5: the signature table inserted between ``[capabilities]`` and ``[encryption]``.
TV5_TEXT = _swap(TV5_UNSIGNED, "[encryption]", _signature_table(TV5_VALUE) + "[encryption]")


def _build(
    path: Path,
    manifest: str | bytes,
    payload: bytes = b"hello",
    *,
    wasm: bytes = EMPTY_WASM,
    context: bytes | None = None,
    proof: bytes | None = None,
) -> Path:
    """Build an archive from exact manifest bytes (TV-1 layout plus the optional entries)."""
    data = manifest.encode("utf-8") if isinstance(manifest, str) else manifest
    builder = SyncBuilder().with_manifest_bytes(data).with_payload_bytes(payload).with_wasm_bytes(wasm)
    if context is not None:
        builder.with_context_bytes(context)
    if proof is not None:
        builder.with_proof_bytes(proof)
    builder.without_state().write_to(path)
    return path


def _verify(path: Path) -> ManifestVerification:
    with open_archive(path) as snapshot:
        return verify_manifest_signature(snapshot)


def _rehashed(text: str) -> str:
    """Recompute the stored ``manifest_hash`` of a mutated manifest so verification gets past step 4."""
    computed = manifest_hash(Manifest.from_toml(text))
    return _swap(text, f'manifest_hash = "{TV5_MANIFEST_HASH}"', f'manifest_hash = "{computed}"')


_BUILDER_TEXT = _swap(TV5_TEXT, f'created_by = "{RFC8032_DID}"', 'created_by = "builder"')

# (manifest text, payload, wasm, valid, error prefix, computed manifest_hash)
TV5_VERDICTS = [
    pytest.param(TV5_TEXT, b"hello", EMPTY_WASM, True, None, TV5_MANIFEST_HASH, id="TV-5"),
    pytest.param(
        TV5_TEXT, b"hellO", EMPTY_WASM, False, "payload hash mismatch", TV5_MANIFEST_HASH,
        id="TV-5-payload-hellO",
    ),
    pytest.param(
        _swap(TV5_TEXT, "ttl = 3600", "ttl = 3601"), b"hello", EMPTY_WASM, False,
        "manifest hash mismatch", TTL_3601_HASH, id="TV-5-ttl-3601",
    ),
    pytest.param(
        _swap(TV5_TEXT, f'timestamp = "{TIMESTAMP}"', 'timestamp = "2099-01-23T12:00:01Z"'),
        b"hello", EMPTY_WASM, False, "Signature verification failed", TV5_MANIFEST_HASH,
        id="TV-5-timestamp-plus-1s",
    ),
    pytest.param(
        _swap(
            _swap(
                _swap(TV5_TEXT, 'variant = "plain"\n', ""),
                "[capabilities]\nvalues = []\n\n", "",
            ),
            "\n[encryption]\nenabled = false\n", "",
        ),
        b"hello", EMPTY_WASM, True, None, TV5_MANIFEST_HASH, id="TV-5-defaultable-lines-removed",
    ),
    pytest.param(
        _swap(TV5_TEXT, 'hash_algo = "blake3"\n', 'hash_algo = "blake3"\nspec_version = "1.0"\n'),
        b"hello", EMPTY_WASM, True, None, TV5_MANIFEST_HASH, id="TV-5-spec_version-added",
    ),
    pytest.param(
        TV5_TEXT, b"hello", OTHER_WASM, True, None, TV5_MANIFEST_HASH, id="TV-5-wasm-replaced",
    ),
    pytest.param(
        TV5_UNSIGNED, b"hello", EMPTY_WASM, False, "signature section missing", "",
        id="TV-5-no-signature",
    ),
    pytest.param(
        _BUILDER_TEXT, b"hello", EMPTY_WASM, False, "manifest hash mismatch",
        manifest_hash(Manifest.from_toml(_BUILDER_TEXT)), id="TV-5-builder-old-hash",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "payload", "wasm", "valid", "error", "computed"), TV5_VERDICTS)
def test_tv5_verdicts(
    tmp_path: Path,
    text: str,
    payload: bytes,
    wasm: bytes,
    valid: bool,
    error: str | None,
    computed: str,
) -> None:
    """The signed manifest of TV-5 and each of its mutations get the reference's v1 verdict and error."""
    result = _verify(_build(tmp_path / "tv5.sync", text, payload, wasm=wasm))
    assert result.valid is valid
    assert result.ok is valid  # no extension fields: ok is the v1 verdict
    if error is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert result.error.startswith(error), result.error
    assert result.manifest_hash == computed
    if error in (None, "payload hash mismatch", "Signature verification failed"):
        assert result.payload_hash == "blake3:" + blake3.blake3(payload).hexdigest()
    else:
        assert result.payload_hash is None  # stopped before the payload was read
    assert result.extension is None
    assert result.extension_valid is None
    assert result.covers_wasm is False


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param(
            _swap(TV5_TEXT, 'algo = "Ed25519"', 'algo = "ed25519"'),
            "unsupported_algorithm",
            id="TV-5-algo-lowercase",
        ),
        pytest.param(_rehashed(_BUILDER_TEXT), "invalid_public_key", id="TV-5-builder-rehashed"),
    ],
)
def test_tv5_hard_errors(tmp_path: Path, text: str, kind: str) -> None:
    """TV-5's hard errors raise SignatureError of the named kind instead of returning a verdict."""
    path = _build(tmp_path / "tv5.sync", text)
    with pytest.raises(SignatureError) as info:
        _verify(path)
    assert info.value.kind == kind


def test_tv5_payload_is_checked_before_the_signer(tmp_path: Path) -> None:
    """With a payload mismatch the verdict is reported even when the signer is not a did:key (step 5 < 7)."""
    result = _verify(_build(tmp_path / "tv5.sync", _rehashed(_BUILDER_TEXT), b"hellO"))
    assert result.valid is False
    assert result.error == "payload hash mismatch"
    assert result.payload_hash == "blake3:" + blake3.blake3(b"hellO").hexdigest()


def test_spec_3_4_canonical_bytes_and_manifest_hash() -> None:
    """The normalised TV-5 manifest canonicalises to the §3.4 bytes, whose hash is the vector's."""
    manifest = Manifest.from_toml(TV5_TEXT)
    assert canonical_json(manifest.normalized()) == TV5_CANONICAL
    assert manifest_hash(manifest) == TV5_MANIFEST_HASH
    assert manifest_hash(Manifest.from_toml(TV5_UNSIGNED)) == TV5_MANIFEST_HASH


def test_spec_3_4_signing_payload_bytes() -> None:
    """The v1 message is the canonical four-key JSON of §3.4, byte for byte."""
    manifest = Manifest.from_toml(TV5_TEXT)
    assert manifest.signature is not None
    expected = (
        f'{{"manifest_hash":"{TV5_MANIFEST_HASH}","payload_hash":"{TV5_PAYLOAD_HASH}",'
        f'"signer":"{RFC8032_DID}","timestamp":"{TIMESTAMP}"}}'
    ).encode()
    assert signing_payload(manifest.signature, RFC8032_DID) == expected


@pytest.mark.parametrize(
    ("payload", "value", "payload_hash"),
    [
        pytest.param(b"hello", TV5_VALUE, TV5_PAYLOAD_HASH, id="with-payload_hash"),
        pytest.param(None, NO_PAYLOAD_VALUE, None, id="without-payload_hash"),
    ],
)
def test_spec_3_4_sign_manifest_reproduces_values(
    payload: bytes | None, value: str, payload_hash: str | None
) -> None:
    """Signing the §2.7 manifest with the RFC 8032 key (v1 only) reproduces the §3.4 values exactly."""
    signed = sign_manifest(
        reference_manifest(),
        SigningKey(RFC8032_SEED),
        timestamp=TIMESTAMP,
        payload=payload,
        extension=False,
    )
    assert signed.meta.created_by == RFC8032_DID
    assert signed.signature is not None
    assert signed.signature.value == value
    assert signed.signature.payload_hash == payload_hash
    assert signed.signature.manifest_hash == TV5_MANIFEST_HASH
    assert signed.signature.extension is None
    if payload is not None:
        assert signed.to_toml() == TV5_TEXT  # the serialiser writes TV-5's text exactly


def test_spec_3_4_value_without_payload_hash_verifies_and_ignores_payload(tmp_path: Path) -> None:
    """The §3.4 signature without ``payload_hash`` is valid whatever the payload (it is not covered)."""
    text = _swap(
        TV5_UNSIGNED,
        "[encryption]",
        _signature_table(NO_PAYLOAD_VALUE, payload_hash=None) + "[encryption]",
    )
    for payload in (b"hello", b"anything else"):
        result = _verify(_build(tmp_path / f"{len(payload)}.sync", text, payload))
        assert result.valid is True
        assert result.payload_hash is None


@pytest.mark.parametrize(
    ("value", "case"),
    [
        pytest.param(TV5_VALUE.rstrip("="), "missing padding", id="missing-padding"),
        pytest.param(TV5_VALUE + "=", "extra padding", id="extra-padding"),
        pytest.param(TV5_VALUE[:40] + " " + TV5_VALUE[40:], "space", id="space"),
        pytest.param(TV5_VALUE[:40] + "\\n" + TV5_VALUE[40:], "newline", id="newline"),
        pytest.param(TV5_VALUE[:-3] + "B==", "non-zero trailing bits", id="trailing-bits"),
    ],
)
def test_manifest_signature_value_base64_is_strict(tmp_path: Path, value: str, case: str) -> None:
    """A signature value that is not canonical padded base64 is a hard invalid_signature error."""
    text = _swap(TV5_TEXT, TV5_VALUE, value)
    with pytest.raises(SignatureError) as info:
        _verify(_build(tmp_path / "b64.sync", text))
    assert info.value.kind == "invalid_signature", case


def test_b64decode_strict_accepts_only_the_canonical_encoding() -> None:
    """The strict decoder round-trips canonical text and rejects padding, whitespace and bit variants."""
    assert b64decode_strict("QQ==") == b"A"
    for bad in ("QQ", "QQ===", "Q Q==", "QQ==\n", "QR==", "Q-==", "QQ=="[:3] + "\u00e9"):
        with pytest.raises(ValueError, match="base64"):
            b64decode_strict(bad)


# --- TV-6: detached file signature ----------------------------------------------------------------


@pytest.fixture
def tv6_file(tmp_path: Path) -> Path:
    """The 22-byte file of TV-6."""
    path = tmp_path / "tv6.sync"
    path.write_bytes(TV6_CONTENT)
    return path


@pytest.mark.parametrize(
    ("signed_content", "valid", "error"),
    [
        pytest.param(TV6_CONTENT, True, None, id="TV-6"),
        pytest.param(b"wrong content", False, "hash mismatch", id="TV-6-wrong-content"),
    ],
)
def test_tv6_detached_signature(
    tv6_file: Path, tmp_path: Path, signed_content: bytes, valid: bool, error: str | None
) -> None:
    """TV-6: a document signed over the file's raw BLAKE3 digest verifies with the vector's values, and
    one signed over ``wrong content`` is ``valid=False`` with a hash mismatch."""
    assert compute_content_hash(tv6_file) == TV6_CONTENT_HASH
    signed = tmp_path / "signed.bin"
    signed.write_bytes(signed_content)
    document = sign_file(signed, SigningKey(RFC8032_SEED), signed_at=1_234_567_890)
    if valid:
        assert document == {
            "algorithm": "Ed25519",
            "public_key": RFC8032_DID,
            "signature": TV6_SIGNATURE,
            "content_hash": TV6_CONTENT_HASH,
            "signed_at": 1_234_567_890,
        }
    result = verify_sync_file(tv6_file, json.loads(json.dumps(document)))
    assert result.valid is valid
    assert result.computed_hash == TV6_CONTENT_HASH
    if error is None:
        assert result.error is None
        assert result.public_key == RFC8032_PUBLIC_KEY
    else:
        assert result.error is not None
        assert error in result.error


def _tv6_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "algorithm": "Ed25519",
        "public_key": RFC8032_DID,
        "signature": TV6_SIGNATURE,
        "content_hash": TV6_CONTENT_HASH,
        "signed_at": 1_234_567_890,
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"public_key": "did:web:example.com"}, "Invalid public key", id="TV-6-did-web"),
        pytest.param(
            {"public_key": did_from_public_key(bytes.fromhex(SMALL_ORDER_KEYS[0]))},
            "Invalid public key",
            id="TV-6-small-order-key",
        ),
        pytest.param({"signature": TV6_SIGNATURE.rstrip("=")}, "base64", id="TV-6-no-padding"),
        pytest.param({"signature": TV6_SIGNATURE[:10] + " " + TV6_SIGNATURE[10:]}, "base64", id="TV-6-space"),
        pytest.param({"signature": "QQ=="}, "Invalid signature length", id="TV-6-short-signature"),
        pytest.param(
            {"signed_at": 0, "signature": NO_PAYLOAD_VALUE},
            "Signature verification failed",
            id="TV-6-other-signature",
        ),
    ],
)
def test_tv6_invalid_documents(tv6_file: Path, changes: dict[str, object], error: str) -> None:
    """A detached document with a bad key, encoding, length or signature is ``valid=False``, not an error."""
    result = verify_sync_file(tv6_file, _tv6_document(**changes))
    assert result.valid is False
    assert result.error is not None
    assert error in result.error
    assert result.computed_hash == TV6_CONTENT_HASH


@pytest.mark.parametrize(
    "algorithm",
    [pytest.param("RSA", id="TV-6-RSA"), pytest.param("ed25519", id="TV-6-lowercase")],
)
def test_tv6_other_algorithms_are_hard_errors(tv6_file: Path, algorithm: str) -> None:
    """TV-6: an algorithm other than exactly ``Ed25519`` raises SignatureError unsupported_algorithm."""
    with pytest.raises(SignatureError) as info:
        verify_sync_file(tv6_file, _tv6_document(algorithm=algorithm))
    assert info.value.kind == "unsupported_algorithm"


# --- TV-7: did:key parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("did", "message"),
    [
        pytest.param("did:web:example.com", "not an Ed25519 did:key", id="TV-7-did-web"),
        pytest.param(
            "did:key:z6MkhaXgEzG8b4P8Xn8Xn8Xn8Xn8Xn8Xn8Xn8Xn8Xn8Xn8",
            "Invalid multicodec prefix 12 09",
            id="TV-7-multicodec",
        ),
        pytest.param(
            "did:key:z" + b58encode(b"\xed\x01" + bytes(range(1, 32))),
            "invalid key length 31",
            id="TV-7-key-length",
        ),
        pytest.param(RFC8032_DID[:-1] + "0", "invalid base58", id="TV-7-base58-0"),
        pytest.param(RFC8032_DID[:-1] + "O", "invalid base58", id="TV-7-base58-O"),
        pytest.param(RFC8032_DID[:-1] + "I", "invalid base58", id="TV-7-base58-I"),
        pytest.param(RFC8032_DID[:-1] + "l", "invalid base58", id="TV-7-base58-l"),
        pytest.param("did:key:z", "too short", id="TV-7-empty"),
    ],
)
def test_tv7_invalid_did_keys(did: str, message: str) -> None:
    """TV-7: each malformed did:key is rejected as invalid_public_key naming the rule it broke."""
    with pytest.raises(SignatureError, match=message) as info:
        public_key_from_did(did)
    assert info.value.kind == "invalid_public_key"


@pytest.mark.parametrize("did", [pytest.param(RFC8032_DID, id="TV-7")])
def test_tv7_reference_did(did: str) -> None:
    """TV-7: the §3.4 DID decodes to the RFC 8032 public key, and encoding it gives the DID back."""
    assert public_key_from_did(did) == RFC8032_PUBLIC_KEY
    assert did_from_public_key(RFC8032_PUBLIC_KEY) == RFC8032_DID
    assert SigningKey(RFC8032_SEED).did == RFC8032_DID


@pytest.mark.parametrize("key_hex", SMALL_ORDER_KEYS)
def test_small_order_did_key_is_rejected(key_hex: str) -> None:
    """A did:key holding a small-order point is refused (strict verification, §3.1 SHOULD)."""
    did = did_from_public_key(bytes.fromhex(key_hex))
    with pytest.raises(SignatureError, match="small order") as info:
        public_key_from_did(did)
    assert info.value.kind == "invalid_public_key"


def test_small_order_signer_is_a_hard_error_in_manifest_verification(tmp_path: Path) -> None:
    """A manifest whose signer is a small-order key fails with invalid_public_key once its hashes match."""
    did = did_from_public_key(bytes.fromhex(SMALL_ORDER_KEYS[0]))
    text = _rehashed(_swap(TV5_TEXT, f'created_by = "{RFC8032_DID}"', f'created_by = "{did}"'))
    with pytest.raises(SignatureError) as info:
        _verify(_build(tmp_path / "small.sync", text))
    assert info.value.kind == "invalid_public_key"


@given(st.binary(max_size=64))
def test_base58_round_trips(data: bytes) -> None:
    """base58btc encoding round-trips any bytes, leading zero bytes included."""
    assert b58decode(b58encode(data)) == data


# --- our extension: sync-ext/1 ------------------------------------------------------------------

EXT_CONTEXT = b'{"region":"eu"}'
EXT_PROOF = b"proof"
EXT_MANIFEST = REFERENCE_MANIFEST_TOML + '\n[x-publisher]\nnote = "original"\n'


def _signed_extension_text(*, payload: bytes | None = None) -> str:
    signed = sign_manifest(
        Manifest.from_toml(EXT_MANIFEST),
        SigningKey(RFC8032_SEED),
        timestamp=TIMESTAMP,
        payload=payload,
        wasm=OTHER_WASM,
        context=EXT_CONTEXT,
        proof=EXT_PROOF,
        extension=True,
    )
    return signed.to_toml()


@pytest.fixture
def ext_text() -> str:
    """A manifest signed with the extension, binding wasm, context and proof (payload left unbound)."""
    return _signed_extension_text()


def _build_ext(path: Path, text: str, **changes: bytes | None) -> Path:
    entries: dict[str, bytes | None] = {
        "wasm": OTHER_WASM,
        "context": EXT_CONTEXT,
        "proof": EXT_PROOF,
    }
    entries.update(changes)
    wasm = entries["wasm"]
    assert wasm is not None
    return _build(path, text, wasm=wasm, context=entries["context"], proof=entries["proof"])


def test_extension_signature_is_ok_and_covers_wasm(tmp_path: Path, ext_text: str) -> None:
    """An extended signature verifies in both profiles and reports that it binds ``sync.wasm``."""
    assert "[x-publisher]" in ext_text
    result = _verify(_build_ext(tmp_path / "ext.sync", ext_text))
    assert result.valid is True
    assert result.extension == EXTENSION == "sync-ext/1"
    assert result.extension_valid is True
    assert result.extension_error is None
    assert result.ok is True
    assert result.covers_wasm is True
    assert result.signer == RFC8032_DID
    assert result.to_json()["ok"] is True


def test_a_bom_before_a_signed_manifest_keeps_both_signatures_valid(tmp_path: Path, ext_text: str) -> None:
    """The reference opens a manifest with a leading BOM; signatures cover the document, so both still verify.

    The archive keeps the stored bytes (BOM included) and a payload commit copies them unchanged.
    """
    data = b"\xef\xbb\xbf" + ext_text.encode()
    path = _build_ext(tmp_path / "bom.sync", data.decode("utf-8"))
    with open_archive(path) as snapshot:
        assert snapshot.manifest_bytes == data
        assert snapshot.manifest == Manifest.from_toml(ext_text)
    result = _verify(path)
    assert (result.valid, result.extension_valid, result.ok) == (True, True, True)
    commit_payload(path, 0, b"fresh")
    with open_archive(path) as snapshot:
        assert snapshot.manifest_bytes == data
    edited = data.replace(b'note = "original"', b'note = "changed"')
    changed = _verify(_build_ext(tmp_path / "bom2.sync", edited.decode()))
    assert "document hash" in str(changed.extension_error)


@pytest.mark.parametrize(
    ("edit", "changes", "error"),
    [
        pytest.param(None, {"wasm": EMPTY_WASM}, "sync.wasm", id="wasm-replaced"),
        pytest.param(None, {"context": b'{"region":"us"}'}, "context.json", id="context-changed"),
        pytest.param(None, {"context": None}, "context.json", id="context-removed"),
        pytest.param(None, {"proof": b"forged"}, "sync.proof", id="proof-changed"),
        pytest.param(None, {"proof": None}, "sync.proof", id="proof-removed"),
        pytest.param(
            ('note = "original"', 'note = "changed"'), {}, "document hash", id="unknown-key-changed"
        ),
        pytest.param(
            ('hash_algo = "blake3"\n', 'hash_algo = "blake3"\nspec_version = "9"\n'),
            {},
            "document hash",
            id="unknown-key-added",
        ),
    ],
)
def test_extension_detects_what_v1_misses(
    tmp_path: Path,
    ext_text: str,
    edit: tuple[str, str] | None,
    changes: dict[str, bytes | None],
    error: str,
) -> None:
    """Changing sync.wasm, context.json, sync.proof or an unknown manifest key leaves v1 valid (D7) but
    fails the extension, so ``ok`` is False."""
    text = ext_text if edit is None else _swap(ext_text, *edit)
    result = _verify(_build_ext(tmp_path / "ext.sync", text, **changes))
    assert result.valid is True
    assert result.extension_valid is False
    assert result.extension_error is not None
    assert error in result.extension_error
    assert result.ok is False
    assert result.covers_wasm is False


def test_extension_value_is_checked(tmp_path: Path, ext_text: str) -> None:
    """A forged extension field (a wasm hash rewritten to match other wasm) fails the extension signature."""
    manifest = Manifest.from_toml(ext_text)
    assert manifest.signature is not None
    forged_hash = "blake3:" + blake3.blake3(EMPTY_WASM).hexdigest()
    text = _swap(ext_text, str(manifest.signature.wasm_hash), forged_hash)
    result = _verify(_build_ext(tmp_path / "ext.sync", text, wasm=EMPTY_WASM))
    assert result.valid is True
    assert result.extension_valid is False
    assert result.extension_error == "extension signature verification failed"
    assert result.ok is False


def test_refresh_keeps_an_unbound_payload_signature_ok(tmp_path: Path, ext_text: str) -> None:
    """A commit_payload refresh leaves the manifest bytes unchanged, so a signature that does not bind
    the payload stays ok."""
    path = _build_ext(tmp_path / "ext.sync", ext_text)
    with open_archive(path) as before:
        manifest_bytes = before.manifest_bytes
        generation = before.generation
    commit_payload(path, generation, b"refreshed payload")
    with open_archive(path) as after:
        assert after.manifest_bytes == manifest_bytes
        assert after.read_payload() == b"refreshed payload"
        result = verify_manifest_signature(after)
    assert result.ok is True
    assert result.covers_wasm is True


def test_refresh_reports_a_bound_payload_signature_as_stale(tmp_path: Path) -> None:
    """After a refresh, a signature that binds the old payload reports "payload hash mismatch"."""
    path = _build_ext(tmp_path / "bound.sync", _signed_extension_text(payload=b"hello"))
    assert _verify(path).ok is True
    commit_payload(path, 0, b"refreshed payload")
    result = _verify(path)
    assert result.valid is False
    assert result.error == "payload hash mismatch"
    assert result.ok is False


def test_unknown_extension_name_is_reported_invalid(tmp_path: Path, ext_text: str) -> None:
    """An extension name we do not know is reported as an invalid extension, never silently accepted."""
    text = _swap(ext_text, 'extension = "sync-ext/1"', 'extension = "sync-ext/2"')
    result = _verify(_build_ext(tmp_path / "ext.sync", text))
    assert result.valid is True
    assert result.extension == "sync-ext/2"
    assert result.extension_valid is False
    assert result.ok is False


def test_sign_manifest_replaces_an_existing_signature(tmp_path: Path) -> None:
    """Re-signing a signed manifest with another key replaces signer and signature; the result verifies."""
    key = SigningKey(bytes(range(32)))
    first = sign_manifest(reference_manifest(), SigningKey(RFC8032_SEED), timestamp=TIMESTAMP)
    second = sign_manifest(first, key, timestamp=TIMESTAMP, wasm=EMPTY_WASM)
    assert second.meta.created_by == key.did
    path = tmp_path / "resigned.sync"
    make_archive(path, manifest=second)
    assert _verify(path).ok is True


# --- keys -------------------------------------------------------------------------------------------

#: RFC 8410 §10.3's example Ed25519 private key, as ``openssl genpkey`` writes such keys.
RFC8410_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n"
    b"-----END PRIVATE KEY-----\n"
)
RFC8410_SEED = bytes.fromhex("d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842")
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PKCS8_X25519 = bytes.fromhex("302e020100300506032b656e04220420")


def _pem(der: bytes, label: str = "PRIVATE KEY") -> bytes:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def test_pem_round_trip() -> None:
    """A key survives PEM encoding and decoding, and the RFC 8410 example key decodes to its seed."""
    key = SigningKey(RFC8032_SEED)
    pem = key.to_pem()
    assert pem == _pem(_PKCS8_ED25519 + RFC8032_SEED)
    assert SigningKey.from_pem(pem) == key
    assert SigningKey.from_pem(RFC8410_PEM).seed == RFC8410_SEED
    assert SigningKey.from_pem(b"\r\n" + RFC8410_PEM.replace(b"\n", b"\r\n")).seed == RFC8410_SEED
    assert RFC8032_SEED.hex() not in repr(key)


def test_write_key_file_is_private_and_never_overwrites(tmp_path: Path) -> None:
    """write_key_file creates a 0600 file that read_key_file reads back, and refuses an existing path."""
    path = tmp_path / "signer.pem"
    key = SigningKey.generate()
    old_umask = os.umask(0)
    try:
        write_key_file(path, key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    before = path.read_bytes()
    with pytest.raises(SignatureError) as info:
        write_key_file(path, SigningKey.generate())
    assert info.value.kind == "invalid_key_file"
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00binary", id="not-text"),
        pytest.param(RFC8410_PEM.replace(b"PRIVATE KEY", b"PUBLIC KEY"), id="public-key-label"),
        pytest.param(RFC8410_PEM.replace(b"-----END PRIVATE KEY-----\n", b""), id="no-end-line"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", id="bad-base64"),
        pytest.param(_pem(_PKCS8_X25519 + RFC8410_SEED), id="x25519-oid"),
        pytest.param(_pem(_PKCS8_ED25519 + RFC8410_SEED[:31]), id="truncated-seed"),
        pytest.param(_pem(_PKCS8_ED25519 + RFC8410_SEED + b"\x00"), id="trailing-byte"),
    ],
)
def test_malformed_key_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    """A key file that is not an Ed25519 PKCS#8 PEM key raises SignatureError invalid_key_file."""
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(SignatureError) as info:
        read_key_file(path)
    assert info.value.kind == "invalid_key_file"


def test_missing_key_file_and_bad_seed_are_rejected(tmp_path: Path) -> None:
    """A missing key file and a seed that is not 32 bytes both raise invalid_key_file."""
    with pytest.raises(SignatureError) as info:
        read_key_file(tmp_path / "absent.pem")
    assert info.value.kind == "invalid_key_file"
    with pytest.raises(SignatureError) as info:
        SigningKey(b"too short")
    assert info.value.kind == "invalid_key_file"


def test_generated_keys_sign_verifiable_manifests(tmp_path: Path) -> None:
    """A freshly generated key signs a manifest (payload bound) that verifies with the extension."""
    key = SigningKey.generate()
    signed = sign_manifest(reference_manifest(), key, timestamp=TIMESTAMP, payload=b"hello", wasm=EMPTY_WASM)
    path = tmp_path / "fresh.sync"
    make_archive(path, manifest=signed)
    result = _verify(path)
    assert result.valid is True
    assert result.error is None
    assert result.ok is True
    assert result.payload_hash == TV5_PAYLOAD_HASH
    assert result.signer == key.did


def test_a_fifo_for_a_signed_file_or_its_document_is_refused_at_once(tmp_path: Path) -> None:
    """``syncctl verify`` reads the archive again to hash it, and its ``.sig.json``: a FIFO put in either
    place (or renamed over it meanwhile) is refused at once, not waited on; a document over 64 KiB is
    refused unread."""
    fifo = tmp_path / "a.sync"
    os.mkfifo(fifo)
    digest_error = outcome_beside_a_fifo(lambda: file_signature.file_digest(fifo), fifo)
    assert isinstance(digest_error, ArchiveError)
    assert "not a regular file" in str(digest_error)
    document_error = outcome_beside_a_fifo(lambda: file_signature.read_signature_document(fifo), fifo)
    assert isinstance(document_error, SignatureError)
    big = tmp_path / "big.sig.json"
    big.write_text(json.dumps({"padding": "x" * (file_signature.MAX_SIGNATURE_DOCUMENT + 1)}))
    with pytest.raises(SignatureError, match="more than"):
        file_signature.read_signature_document(big)
