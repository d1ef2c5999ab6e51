"""Ed25519 signing keys: generation, the key file format, and signing (RFC 8032 pure Ed25519).

Key files are PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), the format ``openssl genpkey -algorithm ed25519``
writes and reads, created with mode 0600 and never overwritten.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey as _NaclSigningKey

from sync_format.errors import SignatureError
from sync_format.signing.did import did_from_public_key

# PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
# OCTET STRING { OCTET STRING seed } } — a fixed 16-byte prefix followed by the 32-byte seed.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN = "-----BEGIN PRIVATE KEY-----"
_PEM_END = "-----END PRIVATE KEY-----"
SEED_SIZE = 32


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 private key.

    Attributes:
        seed: The 32-byte RFC 8032 secret seed.
    """

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE:
            raise SignatureError("invalid_key_file", "an Ed25519 seed is 32 bytes")

    def __repr__(self) -> str:
        return f"SigningKey({self.did})"

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a new random key.

        Returns:
            The key.
        """
        return cls(os.urandom(SEED_SIZE))

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key."""
        return bytes(_NaclSigningKey(self.seed).verify_key)

    @property
    def did(self) -> str:
        """The key's ``did:key``."""
        return did_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Sign a message.

        Args:
            message: The exact bytes to sign.

        Returns:
            The 64-byte signature.
        """
        return bytes(_NaclSigningKey(self.seed).sign(message).signature)

    def to_pem(self) -> bytes:
        """Encode as PKCS#8 PEM.

        Returns:
            The PEM text as bytes.
        """
        body = base64.b64encode(_PKCS8_PREFIX + self.seed).decode("ascii")
        return f"{_PEM_BEGIN}\n{body}\n{_PEM_END}\n".encode("ascii")

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Decode a PKCS#8 PEM Ed25519 key.

        Args:
            data: The file's bytes.

        Returns:
            The key.

        Raises:
            SignatureError: ``invalid_key_file`` when it is not such a key.
        """
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise SignatureError("invalid_key_file", "key file is not PEM text") from exc
        if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
            raise SignatureError("invalid_key_file", "key file is not a PKCS#8 PEM private key")
        body = "".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
        try:
            der = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise SignatureError("invalid_key_file", "key file has invalid base64") from exc
        if len(der) != len(_PKCS8_PREFIX) + SEED_SIZE or not der.startswith(_PKCS8_PREFIX):
            raise SignatureError("invalid_key_file", "key file is not an Ed25519 PKCS#8 key")
        return cls(der[len(_PKCS8_PREFIX) :])


def write_key_file(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Write a key file with mode 0600; an existing file is never overwritten.

    Args:
        path: Destination.
        key: The key.

    Raises:
        SignatureError: ``invalid_key_file`` when the file exists or cannot be written.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise SignatureError(
            "invalid_key_file", "refusing to overwrite an existing key file", path=p
        ) from exc
    except OSError as exc:
        raise SignatureError("invalid_key_file", f"cannot create key file: {exc.strerror}", path=p) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_pem())
        handle.flush()
        os.fsync(handle.fileno())


def read_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key file.

    Args:
        path: The PEM file.

    Returns:
        The key.

    Raises:
        SignatureError: ``invalid_key_file`` when missing or malformed.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SignatureError("invalid_key_file", f"cannot read key file: {exc.strerror}", path=p) from exc
    try:
        return SigningKey.from_pem(data)
    except SignatureError as exc:
        exc.at(p)
        raise
