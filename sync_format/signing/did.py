"""``did:key`` for Ed25519 public keys and the strict base58btc it is written in (spec §3.1, TV-7).

``did:key:z`` + base58btc(``0xED 0x01`` + 32-byte key). Decoding checks the prefix, the alphabet, the
multicodec bytes, the key length, and that the key is a valid, non-small-order curve point.
"""

from __future__ import annotations

from nacl.bindings import crypto_core_ed25519_is_valid_point

from sync_format.errors import SignatureError

DID_KEY_PREFIX = "did:key:z"
ED25519_MULTICODEC = b"\xed\x01"
PUBLIC_KEY_SIZE = 32

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Encode bytes in base58btc (Bitcoin alphabet), leading zero bytes as ``1``.

    Args:
        data: Bytes to encode.

    Returns:
        The base58 text.
    """
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Decode base58btc strictly.

    Args:
        text: Base58 text.

    Returns:
        The bytes.

    Raises:
        ValueError: A character outside the alphabet (``0``, ``O``, ``I``, ``l``, anything non-base58).
    """
    number = 0
    for c in text:
        digit = _INDEX.get(c)
        if digit is None:
            raise ValueError(f"invalid base58 character {c!r}")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


def did_from_public_key(public_key: bytes) -> str:
    """The ``did:key`` of an Ed25519 public key.

    Args:
        public_key: 32 bytes.

    Returns:
        ``did:key:z6Mk…``.

    Raises:
        ValueError: The key is not 32 bytes.
    """
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return DID_KEY_PREFIX + b58encode(ED25519_MULTICODEC + public_key)


def public_key_from_did(did: str) -> bytes:
    """Decode an Ed25519 ``did:key``.

    Args:
        did: The DID.

    Returns:
        The 32-byte public key.

    Raises:
        SignatureError: ``invalid_public_key`` naming the rule that failed.
    """
    if not did.startswith(DID_KEY_PREFIX):
        raise SignatureError("invalid_public_key", f"not an Ed25519 did:key: {did!r}")
    try:
        raw = b58decode(did[len(DID_KEY_PREFIX) :])
    except ValueError as exc:
        raise SignatureError("invalid_public_key", f"invalid base58 in did:key: {exc}") from exc
    if len(raw) < 2:
        raise SignatureError("invalid_public_key", "did:key is too short")
    if raw[:2] != ED25519_MULTICODEC:
        raise SignatureError(
            "invalid_public_key", f"Invalid multicodec prefix {raw[:2].hex(' ')} (expected ed 01)"
        )
    key = raw[2:]
    if len(key) != PUBLIC_KEY_SIZE:
        raise SignatureError("invalid_public_key", f"invalid key length {len(key)} (expected 32)")
    if not crypto_core_ed25519_is_valid_point(key):
        raise SignatureError("invalid_public_key", "key is not a valid Ed25519 point (or has small order)")
    return key
