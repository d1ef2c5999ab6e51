"""The ``manifest.toml`` model: every section and field of spec §2, typed, validated and immutable.

Parsing follows the reference reader (spec §2.1): UTF-8 only, standard TOML, required tables ``[sync]``,
``[meta]``, ``[policy]``, exact types (an unquoted datetime or a negative ``ttl`` is an error), exact
lowercase ``variant``. Unlike the reference we keep unknown keys and tables (``extra``) so that re-writing a
manifest loses nothing; the normalised form used by signatures (spec §3.3) still drops them, exactly as
the reference does. Errors name the field that broke the rule.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from sync_format.errors import ManifestError
from sync_format.manifest_toml import Table, dump_tables

#: TOML integers are signed 64-bit; ``ttl``/``timeout`` use the non-negative half (spec §2.2).
MAX_TOML_INT = 2**63 - 1

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: The UTF-8 byte order mark; the reference's TOML parser skips one at the start of a document.
UTF8_BOM = b"\xef\xbb\xbf"
#: Deepest nesting of tables and arrays accepted. ``tomllib`` builds a dotted table header such as
#: ``[a.a.a…]`` of 5,000 parts (10 KB) without recursion, but everything that walks a manifest afterwards
#: (freezing it, writing it back, the signature's canonical JSON) recurses: past about 500 levels that was a
#: ``RecursionError``, not a ``ManifestError``. The reference's manifests nest 2 levels.
MAX_NESTING = 32
#: Parsed manifests remembered by their bytes (an LRU); a store's first listing opens each archive once,
#: later opens of the same archive hit.
MEMO_ENTRIES = 1024
#: Only manifests up to this size are remembered (the reference's are under 2 KiB), which bounds the
#: memo's keys to ``MEMO_ENTRIES * MEMO_MAX_BYTES`` bytes at worst.
MEMO_MAX_BYTES = 16 * 1024


def manifest_text(data: bytes) -> str:
    """Decode manifest bytes as the reference does: strict UTF-8, one leading BOM skipped.

    Args:
        data: The raw ``manifest.toml`` entry.

    Returns:
        The TOML text, without a BOM.

    Raises:
        ManifestError: The bytes are not UTF-8.
    """
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"invalid UTF-8 at byte {exc.start + start}") from exc


class Variant(StrEnum):
    """``sync.variant`` (spec §2.3); parsed exactly, lowercase only."""

    PLAIN = "plain"
    VAULT = "vault"
    APP = "app"
    DATA = "data"


@dataclass(frozen=True)
class SyncSection:
    """``[sync]``: what the payload is."""

    version: str
    content_type: str
    display_ext: str
    variant: Variant = Variant.PLAIN
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class MetaSection:
    """``[meta]``: who made the archive and when (``created_at`` is the TTL base)."""

    created_by: str
    created_at: str
    hash_algo: str = "blake3"
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class PolicySection:
    """``[policy]``: freshness (``ttl``) and the guest's execution budget (``timeout``), in seconds."""

    ttl: int
    timeout: int
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class PermissionsSection:
    """``[permissions]``: the network and environment allow-lists of the guest."""

    allow_hosts: tuple[str, ...] = ()
    allow_env: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class OwnershipSection:
    """``[ownership]``: the owner capsule and whether writes are allowed at all."""

    owner_capsule: str | None = None
    write_allowed: bool = False
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class VerificationSection:
    """``[verification]``: declared proof settings (informational)."""

    enabled: bool = False
    vm_type: str | None = None
    proof_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class CapabilitiesSection:
    """``[capabilities]``: free-form capability tags."""

    values: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class SignatureSection:
    """``[signature]``: the reference's manifest signature (spec §3.3) plus our versioned extension.

    The v1 fields (``algo`` … ``value``) are exactly the reference's. The extension fields bind what v1
    leaves out (``sync.wasm``, ``context.json``, ``sync.proof`` and unknown manifest keys, spec §9 D7);
    the reference ignores them, so an extended signature still verifies there.
    """

    algo: str
    manifest_hash: str
    timestamp: str
    value: str
    payload_hash: str | None = None
    extension: str | None = None
    document_hash: str | None = None
    wasm_hash: str | None = None
    context_hash: str | None = None
    proof_hash: str | None = None
    extension_value: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class EncryptionMeta:
    """``[encryption.meta]``: UI hints only, never a trusted source."""

    keys: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    kdf: str | None = None
    hint: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class EncryptionSection:
    """``[encryption]``: whether the payload is age-encrypted (a vault)."""

    enabled: bool = False
    algorithm: str | None = None
    meta: EncryptionMeta | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.toml``.

    Attributes:
        extra_tables: Top-level tables and keys we do not know, kept in document order.
    """

    sync: SyncSection
    meta: MetaSection
    policy: PolicySection
    permissions: PermissionsSection = field(default_factory=PermissionsSection)
    ownership: OwnershipSection = field(default_factory=OwnershipSection)
    verification: VerificationSection = field(default_factory=VerificationSection)
    capabilities: CapabilitiesSection = field(default_factory=CapabilitiesSection)
    signature: SignatureSection | None = None
    encryption: EncryptionSection = field(default_factory=EncryptionSection)
    extra_tables: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest bytes as the reference does (spec §2.1).

        A leading UTF-8 BOM is skipped, as the reference's TOML parser does; it is not part of the
        document (hashes and signatures cover the parsed document, never the raw bytes). Parsed manifests
        are remembered by their bytes (a bounded LRU of small manifests): the same bytes always give the
        same immutable ``Manifest``, so re-opening an archive does not parse its manifest again.

        Args:
            data: The raw ``manifest.toml`` entry.

        Returns:
            The validated manifest.

        Raises:
            ManifestError: Invalid UTF-8, invalid TOML, or a schema violation; the error names the field.
        """
        if len(data) > MEMO_MAX_BYTES:
            return cls.from_toml(manifest_text(data))
        return _parse_memoized(bytes(data))

    @classmethod
    def from_toml(cls, text: str) -> Manifest:
        """Parse manifest text.

        Args:
            text: TOML source.

        Returns:
            The validated manifest.

        Raises:
            ManifestError: Invalid TOML or a schema violation.
        """
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(f"invalid TOML: {exc}") from exc
        except ValueError as exc:  # int() refuses literals longer than sys.get_int_max_str_digits()
            raise ManifestError(f"invalid TOML: {exc}") from exc
        except RecursionError as exc:
            raise ManifestError("invalid TOML: nested too deeply") from exc
        if _nested_deeper(doc, MAX_NESTING):
            raise ManifestError(f"invalid TOML: tables or arrays nested more than {MAX_NESTING} levels deep")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Manifest:
        """Build a manifest from a parsed TOML document.

        Args:
            doc: The document as ``tomllib`` returns it.

        Returns:
            The validated manifest.

        Raises:
            ManifestError: A required table or key is missing, or a value has the wrong type or range.
        """
        r = _Reader(doc)
        return cls(
            sync=r.sync(),
            meta=r.meta(),
            policy=r.policy(),
            permissions=r.permissions(),
            ownership=r.ownership(),
            verification=r.verification(),
            capabilities=r.capabilities(),
            signature=r.signature(),
            encryption=r.encryption(),
            extra_tables=_freeze({k: v for k, v in doc.items() if k not in _KNOWN_TABLES}),
        )

    def to_toml(self) -> str:
        """Serialise the way the reference's ``toml::to_string_pretty`` does (spec §2.7).

        Tables in the fixed order ``sync, meta, policy, permissions, ownership, verification,
        capabilities, [signature], encryption, [encryption.meta]``, keys in schema order, absent optional
        values omitted, strings quoted by the reference's rule (``manifest_toml``).

        Returns:
            TOML text ending with a newline.
        """
        tables: list[Table] = [
            (
                "sync",
                (
                    ("version", self.sync.version),
                    ("content_type", self.sync.content_type),
                    ("display_ext", self.sync.display_ext),
                    ("variant", self.sync.variant.value),
                ),
                self.sync.extra,
            ),
            (
                "meta",
                (
                    ("created_by", self.meta.created_by),
                    ("created_at", self.meta.created_at),
                    ("hash_algo", self.meta.hash_algo),
                ),
                self.meta.extra,
            ),
            ("policy", (("ttl", self.policy.ttl), ("timeout", self.policy.timeout)), self.policy.extra),
            (
                "permissions",
                (("allow_hosts", self.permissions.allow_hosts), ("allow_env", self.permissions.allow_env)),
                self.permissions.extra,
            ),
            (
                "ownership",
                (
                    ("owner_capsule", self.ownership.owner_capsule),
                    ("write_allowed", self.ownership.write_allowed),
                ),
                self.ownership.extra,
            ),
            (
                "verification",
                (
                    ("enabled", self.verification.enabled),
                    ("vm_type", self.verification.vm_type),
                    ("proof_type", self.verification.proof_type),
                ),
                self.verification.extra,
            ),
            ("capabilities", (("values", self.capabilities.values),), self.capabilities.extra),
        ]
        sig = self.signature
        if sig is not None:
            tables.append(("signature", tuple((k, getattr(sig, k)) for k in SIGNATURE_KEYS), sig.extra))
        enc = self.encryption
        tables.append(("encryption", (("enabled", enc.enabled), ("algorithm", enc.algorithm)), enc.extra))
        if enc.meta is not None:
            tables.append(
                (
                    "encryption.meta",
                    (
                        ("keys", enc.meta.keys),
                        ("recipients", enc.meta.recipients),
                        ("kdf", enc.meta.kdf),
                        ("hint", enc.meta.hint),
                    ),
                    enc.meta.extra,
                )
            )
        return dump_tables(self.extra_tables, tables)

    def to_bytes(self) -> bytes:
        """Serialise to the UTF-8 bytes stored as ``manifest.toml``.

        Returns:
            The encoded manifest.
        """
        return self.to_toml().encode("utf-8")

    def normalized(self) -> dict[str, Any]:
        """The normalised manifest of spec §3.3: typed fields only, no ``signature``, no unknown keys.

        Returns:
            A JSON-ready dict; canonicalising it gives the bytes behind ``manifest_hash``.
        """
        enc_meta = self.encryption.meta
        return {
            "sync": {
                "version": self.sync.version,
                "content_type": self.sync.content_type,
                "display_ext": self.sync.display_ext,
                "variant": self.sync.variant.value,
            },
            "meta": {
                "created_by": self.meta.created_by,
                "created_at": self.meta.created_at,
                "hash_algo": self.meta.hash_algo,
            },
            "policy": {"ttl": self.policy.ttl, "timeout": self.policy.timeout},
            "permissions": {
                "allow_hosts": list(self.permissions.allow_hosts),
                "allow_env": list(self.permissions.allow_env),
            },
            "ownership": {
                "owner_capsule": self.ownership.owner_capsule,
                "write_allowed": self.ownership.write_allowed,
            },
            "verification": {
                "enabled": self.verification.enabled,
                "vm_type": self.verification.vm_type,
                "proof_type": self.verification.proof_type,
            },
            "capabilities": {"values": list(self.capabilities.values)},
            "encryption": {
                "enabled": self.encryption.enabled,
                "algorithm": self.encryption.algorithm,
                "meta": None
                if enc_meta is None
                else {
                    "keys": list(enc_meta.keys),
                    "recipients": list(enc_meta.recipients),
                    "kdf": enc_meta.kdf,
                    "hint": enc_meta.hint,
                },
            },
        }

    def without_signature(self) -> Manifest:
        """Return a copy with no ``[signature]`` table.

        Returns:
            The manifest as it stands before signing.
        """
        return replace(self, signature=None)

    @property
    def is_vault(self) -> bool:
        """True when the payload is encrypted: ``variant == vault`` or ``encryption.enabled`` (spec §2.6)."""
        return self.sync.variant is Variant.VAULT or self.encryption.enabled

    @property
    def is_app(self) -> bool:
        """True for application capsules (``variant == app``)."""
        return self.sync.variant is Variant.APP

    @property
    def write_allowed(self) -> bool:
        """``ownership.write_allowed``; required (with the owner role) for any write."""
        return self.ownership.write_allowed


_KNOWN_TABLES = frozenset(
    {
        "sync",
        "meta",
        "policy",
        "permissions",
        "ownership",
        "verification",
        "capabilities",
        "signature",
        "encryption",
    }
)


def _nested_deeper(doc: Any, limit: int) -> bool:
    """Whether tables or arrays nest more than ``limit`` levels deep (walked without recursion)."""
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _freeze(value: Any) -> Any:
    """Make parsed TOML values immutable: tables become read-only mappings, arrays tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class _Reader:
    """Typed accessors over a parsed document; every error names ``table.key``."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._doc = doc

    def _table(self, name: str, *, required: bool) -> Mapping[str, Any] | None:
        value = self._doc.get(name)
        if value is None:
            if required:
                raise ManifestError("missing required table", field=name)
            return None
        if not isinstance(value, dict):
            raise ManifestError("must be a table", field=name)
        return value

    @staticmethod
    def _extra(table: Mapping[str, Any], known: tuple[str, ...]) -> Mapping[str, Any]:
        extra: Mapping[str, Any] = _freeze({k: v for k, v in table.items() if k not in known})
        return extra

    @staticmethod
    def _str(table: Mapping[str, Any], where: str, key: str, *, required: bool) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise ManifestError("missing required key", field=f"{where}.{key}")
            return None
        if not isinstance(value, str):
            raise ManifestError(f"must be a string, not {_toml_type(value)}", field=f"{where}.{key}")
        return value

    def _req_str(self, table: Mapping[str, Any], where: str, key: str) -> str:
        value = self._str(table, where, key, required=True)
        assert value is not None  # required=True raised otherwise
        return value

    @staticmethod
    def _bool(table: Mapping[str, Any], where: str, key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise ManifestError(f"must be a boolean, not {_toml_type(value)}", field=f"{where}.{key}")
        return value

    @staticmethod
    def _uint(table: Mapping[str, Any], where: str, key: str) -> int:
        if key not in table:
            raise ManifestError("missing required key", field=f"{where}.{key}")
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"must be an integer, not {_toml_type(value)}", field=f"{where}.{key}")
        if not 0 <= value <= MAX_TOML_INT:
            raise ManifestError(f"must be between 0 and {MAX_TOML_INT}", field=f"{where}.{key}")
        return value

    @staticmethod
    def _strings(table: Mapping[str, Any], where: str, key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list):
            raise ManifestError(f"must be an array, not {_toml_type(value)}", field=f"{where}.{key}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ManifestError(
                    f"element {i} must be a string, not {_toml_type(item)}", field=f"{where}.{key}"
                )
        return tuple(value)

    def sync(self) -> SyncSection:
        t = self._table("sync", required=True)
        assert t is not None
        variant_text = self._str(t, "sync", "variant", required=False)
        if variant_text is None:
            variant = Variant.PLAIN
        else:
            try:
                variant = Variant(variant_text)
            except ValueError as exc:
                allowed = ", ".join(v.value for v in Variant)
                raise ManifestError(
                    f"unknown variant {variant_text!r} (one of {allowed})", field="sync.variant"
                ) from exc
        return SyncSection(
            version=self._req_str(t, "sync", "version"),
            content_type=self._req_str(t, "sync", "content_type"),
            display_ext=self._req_str(t, "sync", "display_ext"),
            variant=variant,
            extra=self._extra(t, ("version", "content_type", "display_ext", "variant")),
        )

    def meta(self) -> MetaSection:
        t = self._table("meta", required=True)
        assert t is not None
        return MetaSection(
            created_by=self._req_str(t, "meta", "created_by"),
            created_at=self._req_str(t, "meta", "created_at"),
            hash_algo=self._req_str(t, "meta", "hash_algo"),
            extra=self._extra(t, ("created_by", "created_at", "hash_algo")),
        )

    def policy(self) -> PolicySection:
        t = self._table("policy", required=True)
        assert t is not None
        return PolicySection(
            ttl=self._uint(t, "policy", "ttl"),
            timeout=self._uint(t, "policy", "timeout"),
            extra=self._extra(t, ("ttl", "timeout")),
        )

    def permissions(self) -> PermissionsSection:
        t = self._table("permissions", required=False)
        if t is None:
            return PermissionsSection()
        return PermissionsSection(
            allow_hosts=self._strings(t, "permissions", "allow_hosts"),
            allow_env=self._strings(t, "permissions", "allow_env"),
            extra=self._extra(t, ("allow_hosts", "allow_env")),
        )

    def ownership(self) -> OwnershipSection:
        t = self._table("ownership", required=False)
        if t is None:
            return OwnershipSection()
        return OwnershipSection(
            owner_capsule=self._str(t, "ownership", "owner_capsule", required=False),
            write_allowed=self._bool(t, "ownership", "write_allowed"),
            extra=self._extra(t, ("owner_capsule", "write_allowed")),
        )

    def verification(self) -> VerificationSection:
        t = self._table("verification", required=False)
        if t is None:
            return VerificationSection()
        return VerificationSection(
            enabled=self._bool(t, "verification", "enabled"),
            vm_type=self._str(t, "verification", "vm_type", required=False),
            proof_type=self._str(t, "verification", "proof_type", required=False),
            extra=self._extra(t, ("enabled", "vm_type", "proof_type")),
        )

    def capabilities(self) -> CapabilitiesSection:
        t = self._table("capabilities", required=False)
        if t is None:
            return CapabilitiesSection()
        return CapabilitiesSection(
            values=self._strings(t, "capabilities", "values"),
            extra=self._extra(t, ("values",)),
        )

    def signature(self) -> SignatureSection | None:
        t = self._table("signature", required=False)
        if t is None:
            return None
        w = "signature"
        return SignatureSection(
            algo=self._req_str(t, w, "algo"),
            manifest_hash=self._req_str(t, w, "manifest_hash"),
            timestamp=self._req_str(t, w, "timestamp"),
            value=self._req_str(t, w, "value"),
            payload_hash=self._str(t, w, "payload_hash", required=False),
            extension=self._str(t, w, "extension", required=False),
            document_hash=self._str(t, w, "document_hash", required=False),
            wasm_hash=self._str(t, w, "wasm_hash", required=False),
            context_hash=self._str(t, w, "context_hash", required=False),
            proof_hash=self._str(t, w, "proof_hash", required=False),
            extension_value=self._str(t, w, "extension_value", required=False),
            extra=self._extra(t, SIGNATURE_KEYS),
        )

    def encryption(self) -> EncryptionSection:
        t = self._table("encryption", required=False)
        if t is None:
            return EncryptionSection()
        meta: EncryptionMeta | None = None
        m = t.get("meta")
        if m is not None:
            if not isinstance(m, dict):
                raise ManifestError("must be a table", field="encryption.meta")
            w = "encryption.meta"
            meta = EncryptionMeta(
                keys=self._strings(m, w, "keys"),
                recipients=self._strings(m, w, "recipients"),
                kdf=self._str(m, w, "kdf", required=False),
                hint=self._str(m, w, "hint", required=False),
                extra=self._extra(m, ("keys", "recipients", "kdf", "hint")),
            )
        return EncryptionSection(
            enabled=self._bool(t, "encryption", "enabled"),
            algorithm=self._str(t, "encryption", "algorithm", required=False),
            meta=meta,
            extra=self._extra(t, ("enabled", "algorithm", "meta")),
        )


#: Keys of ``[signature]`` in the order they are written: the reference's, then our extension's.
SIGNATURE_KEYS = (
    "algo",
    "manifest_hash",
    "payload_hash",
    "timestamp",
    "value",
    "extension",
    "document_hash",
    "wasm_hash",
    "context_hash",
    "proof_hash",
    "extension_value",
)


def _toml_type(value: object) -> str:
    """Name a parsed TOML value's type the way a manifest author would recognise it."""
    names = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    for py_type, name in names.items():
        if isinstance(value, py_type):
            return name
    return "datetime"


def forget_parsed_manifests() -> None:
    """Empty the memo of parsed manifests (benchmarks measure a first parse with it)."""
    _parse_memoized.cache_clear()


@functools.lru_cache(maxsize=MEMO_ENTRIES)
def _parse_memoized(data: bytes) -> Manifest:
    # Safe to share: a Manifest is immutable all the way down (frozen dataclasses, tuples, read-only
    # mappings), and errors are raised again for every call (lru_cache keeps only results).
    return Manifest.from_toml(manifest_text(data))
