"""``manifest.toml`` parsing and serialisation (spec §2): byte-exact output, kept unknowns, named errors.

The serialiser must reproduce the reference's ``toml::to_string_pretty`` byte for byte (§2.7); the parser
must accept any valid TOML, refuse what the reference refuses (§2.1) and name the offending field.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_format import (
    CapabilitiesSection,
    EncryptionMeta,
    EncryptionSection,
    Manifest,
    ManifestError,
    MetaSection,
    OwnershipSection,
    PermissionsSection,
    SignatureSection,
    Variant,
    VerificationSection,
)
from sync_format.testing import REFERENCE_MANIFEST_TOML, make_manifest, reference_manifest

FULL_EXAMPLE = """\
[sync]
version = "1.3"
content_type = "application/json"
display_ext = "json"
variant = "vault"

[meta]
created_by = "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"
created_at = "2026-01-29T12:00:00Z"
hash_algo = "blake3"

[policy]
ttl = 86400
timeout = 30

[permissions]
allow_hosts = ["api.example.com", "*.internal.local"]
allow_env = ["NODE_ENV"]

[ownership]
owner_capsule = "capsule://demo/config"
write_allowed = true

[verification]
enabled = true
vm_type = "wasm"
proof_type = "zk-snark"

[capabilities]
values = ["local-first", "private-network"]

[signature]
algo = "Ed25519"
manifest_hash = "blake3:<64 hex>"
payload_hash = "blake3:<64 hex>"
timestamp = "2026-01-29T12:00:05Z"
value = "<88 base64 chars>"

[encryption]
enabled = true
algorithm = "age-v1"

[encryption.meta]
keys = ["OPENAI_API_KEY"]
recipients = []
kdf = "scrypt"
hint = "Ask the owner for the passphrase"
"""


def _edit(old: str, new: str) -> str:
    """The reference manifest with one exact substring replaced (it must occur once)."""
    assert REFERENCE_MANIFEST_TOML.count(old) == 1
    return REFERENCE_MANIFEST_TOML.replace(old, new)


# --- serialisation -------------------------------------------------------------------------------------


def test_reference_manifest_round_trips_byte_exactly() -> None:
    """The §2.7 builder manifest (383 bytes) is re-emitted byte for byte after parsing."""
    manifest = Manifest.from_toml(REFERENCE_MANIFEST_TOML)
    assert manifest.to_toml() == REFERENCE_MANIFEST_TOML
    assert len(manifest.to_bytes()) == 383


def test_reference_manifest_fields() -> None:
    """The §2.7 manifest parses to the builder-test values with the documented defaults."""
    m = reference_manifest()
    assert (m.sync.version, m.sync.content_type, m.sync.display_ext) == ("1.2", "text/plain", "txt")
    assert m.sync.variant is Variant.PLAIN
    assert (m.meta.created_by, m.meta.created_at, m.meta.hash_algo) == (
        "builder",
        "2099-01-23T12:00:00Z",
        "blake3",
    )
    assert (m.policy.ttl, m.policy.timeout) == (3600, 30)
    assert m.permissions == PermissionsSection()
    assert m.ownership == OwnershipSection()
    assert m.verification == VerificationSection()
    assert m.capabilities == CapabilitiesSection()
    assert m.signature is None
    assert m.encryption == EncryptionSection()
    assert not m.is_vault
    assert not m.is_app
    assert not m.write_allowed


def test_defaultable_tables_are_written_when_absent() -> None:
    """A manifest with only the required tables is written with every defaultable table filled in."""
    minimal = REFERENCE_MANIFEST_TOML.split("[permissions]")[0]
    assert Manifest.from_toml(minimal).to_toml() == REFERENCE_MANIFEST_TOML


def test_full_example_parses_every_field() -> None:
    """The hand-written §2.7 example with every section parses into every typed field."""
    m = Manifest.from_toml(FULL_EXAMPLE)
    assert m.sync.version == "1.3"
    assert m.sync.content_type == "application/json"
    assert m.sync.display_ext == "json"
    assert m.sync.variant is Variant.VAULT
    assert m.meta == MetaSection(
        created_by="did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",
        created_at="2026-01-29T12:00:00Z",
        hash_algo="blake3",
    )
    assert (m.policy.ttl, m.policy.timeout) == (86400, 30)
    assert m.permissions == PermissionsSection(
        allow_hosts=("api.example.com", "*.internal.local"), allow_env=("NODE_ENV",)
    )
    assert m.ownership == OwnershipSection(owner_capsule="capsule://demo/config", write_allowed=True)
    assert m.verification == VerificationSection(enabled=True, vm_type="wasm", proof_type="zk-snark")
    assert m.capabilities == CapabilitiesSection(values=("local-first", "private-network"))
    assert m.signature == SignatureSection(
        algo="Ed25519",
        manifest_hash="blake3:<64 hex>",
        payload_hash="blake3:<64 hex>",
        timestamp="2026-01-29T12:00:05Z",
        value="<88 base64 chars>",
    )
    assert m.encryption == EncryptionSection(
        enabled=True,
        algorithm="age-v1",
        meta=EncryptionMeta(
            keys=("OPENAI_API_KEY",),
            recipients=(),
            kdf="scrypt",
            hint="Ask the owner for the passphrase",
        ),
    )
    assert m.extra_tables == {}
    assert m.is_vault
    assert m.write_allowed


def test_full_example_is_written_in_reference_form() -> None:
    """Re-writing the full example differs only in the multi-line form of its 2-element arrays."""
    written = Manifest.from_toml(FULL_EXAMPLE).to_toml()
    expected = FULL_EXAMPLE.replace(
        'allow_hosts = ["api.example.com", "*.internal.local"]',
        'allow_hosts = [\n    "api.example.com",\n    "*.internal.local",\n]',
    ).replace(
        'values = ["local-first", "private-network"]',
        'values = [\n    "local-first",\n    "private-network",\n]',
    )
    assert written == expected
    assert Manifest.from_toml(written) == Manifest.from_toml(FULL_EXAMPLE)


@pytest.mark.parametrize(
    ("values", "text"),
    [
        pytest.param((), "allow_hosts = []\n", id="empty-inline"),
        pytest.param(("a",), 'allow_hosts = ["a"]\n', id="one-inline"),
        pytest.param(("a", "b"), 'allow_hosts = [\n    "a",\n    "b",\n]\n', id="two-multiline"),
        pytest.param(
            ("a", "b", "c"), 'allow_hosts = [\n    "a",\n    "b",\n    "c",\n]\n', id="three-multiline"
        ),
    ],
)
def test_array_layout(values: tuple[str, ...], text: str) -> None:
    """Arrays of 0 or 1 elements are written inline and arrays of 2+ one element per line."""
    m = replace(reference_manifest(), permissions=PermissionsSection(allow_hosts=values))
    assert text in m.to_toml()
    assert Manifest.from_toml(m.to_toml()).permissions.allow_hosts == values


_TEXT = st.text(max_size=40)
_KNOWN_META = {"created_by", "created_at", "hash_algo"}


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    created_by=_TEXT,
    display_ext=_TEXT,
    hosts=st.lists(_TEXT, max_size=4).map(tuple),
    owner=st.none() | _TEXT,
    extra=st.dictionaries(
        _TEXT.filter(lambda k: k not in _KNOWN_META),
        st.one_of(
            _TEXT,
            st.integers(-(2**63), 2**63 - 1),
            st.booleans(),
            st.lists(st.integers(0, 9), max_size=3).map(tuple),
        ),
        max_size=3,
    ),
)
def test_any_strings_round_trip(
    created_by: str,
    display_ext: str,
    hosts: tuple[str, ...],
    owner: str | None,
    extra: dict[str, object],
) -> None:
    """Any unicode text in values and unknown keys survives ``to_toml`` then parsing unchanged."""
    base = reference_manifest()
    m = replace(
        base,
        sync=replace(base.sync, display_ext=display_ext),
        meta=replace(base.meta, created_by=created_by, extra=extra),
        permissions=PermissionsSection(allow_hosts=hosts),
        ownership=OwnershipSection(owner_capsule=owner),
    )
    text = m.to_toml()
    assert Manifest.from_toml(text) == m
    assert Manifest.from_toml(text).to_toml() == text


# --- unknown keys and tables ---------------------------------------------------------------------------

UNKNOWN_RICH = """\
title = "top-level key"

[sync]
version = "1"
content_type = "a"
display_ext = ""
x-sync = 1

[sync.nested]
deep = [[1, 2], [3]]

[meta]
created_by = "x"
created_at = "2026-01-01T00:00:00Z"
hash_algo = "blake3"
spec_version = "1.0"
when = 1979-05-27T07:32:00Z
offset_when = 1979-05-27T07:32:00.123456-07:00
local_when = 1979-05-27T07:32:00
day = 1979-05-27
clock = 07:32:00.5
ratio = 1e100
neg_zero = -0.0
big = 0x7fffffffffffffff
inline = { a = 1, "odd key" = "v" }
"" = "empty key"

[policy]
ttl = 1
timeout = 2

[policy.sub.subsub]
z = "deep"

[signature]
algo = "Ed25519"
manifest_hash = "blake3:00"
timestamp = "2026-01-01T00:00:00Z"
value = "AA=="
future_field = "kept"

[encryption.meta]
keys = ["A", "B"]
note = "kept"

[x-vendor]
flag = true

[x-vendor.inner]
list = ["a", "b"]

[[records]]
a = 1

[[records]]
b = "it's \\"x\\""
"""


def test_unknown_keys_and_tables_are_kept() -> None:
    """Unknown keys in known tables and unknown top-level tables are kept with their values."""
    m = Manifest.from_toml(UNKNOWN_RICH)
    assert m.sync.extra == {"x-sync": 1, "nested": {"deep": ((1, 2), (3,))}}
    assert m.meta.extra["spec_version"] == "1.0"
    assert m.meta.extra["when"] == dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.UTC)
    assert m.meta.extra["inline"] == {"a": 1, "odd key": "v"}
    assert m.meta.extra[""] == "empty key"
    assert m.policy.extra == {"sub": {"subsub": {"z": "deep"}}}
    assert m.signature is not None
    assert m.signature.extra == {"future_field": "kept"}
    assert m.encryption.meta is not None
    assert m.encryption.meta.extra == {"note": "kept"}
    assert m.extra_tables["title"] == "top-level key"
    assert m.extra_tables["x-vendor"] == {"flag": True, "inner": {"list": ("a", "b")}}
    assert m.extra_tables["records"] == ({"a": 1}, {"b": 'it\'s "x"'})


def test_unknown_keys_and_tables_round_trip() -> None:
    """Parse, write and parse again gives an equal manifest and the same TOML document plus defaults."""
    first = Manifest.from_toml(UNKNOWN_RICH)
    text = first.to_toml()
    assert Manifest.from_toml(text) == first
    expected = tomllib.loads(UNKNOWN_RICH)
    # Defaultable tables and keys are filled in, exactly as the reference writes them.
    expected["sync"]["variant"] = "plain"
    expected["permissions"] = {"allow_hosts": [], "allow_env": []}
    expected["ownership"] = {"write_allowed": False}
    expected["verification"] = {"enabled": False}
    expected["capabilities"] = {"values": []}
    expected["encryption"]["enabled"] = False
    expected["encryption"]["meta"]["recipients"] = []
    assert tomllib.loads(text) == expected


def test_unknown_keys_do_not_reach_the_normalised_form() -> None:
    """The signature's normalised manifest drops unknown keys, as the reference does (§3.3)."""
    with_unknowns = Manifest.from_toml(
        _edit('hash_algo = "blake3"\n', 'hash_algo = "blake3"\nspec_version = "1.0"\n')
    )
    assert with_unknowns.normalized() == reference_manifest().normalized()


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(_edit("[policy]\nttl = 3600\ntimeout = 30\n\n", ""), "policy", id="missing-policy"),
        pytest.param(REFERENCE_MANIFEST_TOML.split("[meta]")[0], "meta", id="missing-meta"),
        pytest.param(_edit("[sync]\n", "[other]\n"), "sync", id="missing-sync"),
        pytest.param(
            _edit("[policy]\nttl = 3600\ntimeout = 30\n", "[policy]\n"), "policy.ttl", id="empty-policy"
        ),
        pytest.param(_edit("ttl = 3600", "ttl = -1"), "policy.ttl", id="ttl-negative"),
        pytest.param(_edit("ttl = 3600", "ttl = true"), "policy.ttl", id="ttl-bool"),
        pytest.param(_edit("ttl = 3600", "ttl = 1.5"), "policy.ttl", id="ttl-float"),
        pytest.param(_edit("ttl = 3600", 'ttl = "3600"'), "policy.ttl", id="ttl-string"),
        pytest.param(_edit("ttl = 3600", "ttl = 9223372036854775808"), "policy.ttl", id="ttl-over-i64"),
        pytest.param(_edit("ttl = 3600\n", ""), "policy.ttl", id="ttl-missing"),
        pytest.param(_edit("timeout = 30", "timeout = -5"), "policy.timeout", id="timeout-negative"),
        pytest.param(_edit('variant = "plain"', 'variant = "Vault"'), "sync.variant", id="variant-Vault"),
        pytest.param(_edit('variant = "plain"', 'variant = "secret"'), "sync.variant", id="variant-unknown"),
        pytest.param(_edit('variant = "plain"', "variant = 1"), "sync.variant", id="variant-int"),
        pytest.param(
            _edit('created_at = "2099-01-23T12:00:00Z"', "created_at = 2026-01-01T00:00:00Z"),
            "meta.created_at",
            id="created-at-unquoted",
        ),
        pytest.param(_edit('version = "1.2"\n', ""), "sync.version", id="version-missing"),
        pytest.param(_edit('hash_algo = "blake3"', "hash_algo = []"), "meta.hash_algo", id="hash-algo-array"),
        pytest.param(
            _edit("allow_hosts = []", 'allow_hosts = "api.example.com"'),
            "permissions.allow_hosts",
            id="allow-hosts-string",
        ),
        pytest.param(
            _edit("allow_hosts = []", 'allow_hosts = ["a", 1]'),
            "permissions.allow_hosts",
            id="allow-hosts-int",
        ),
        pytest.param(
            _edit("write_allowed = false", 'write_allowed = "yes"'),
            "ownership.write_allowed",
            id="write-allowed-string",
        ),
        pytest.param(
            "capabilities = 3\n" + _edit("[capabilities]\nvalues = []\n", ""), "capabilities", id="table-int"
        ),
        pytest.param(
            _edit("[encryption]\nenabled = false", "[encryption]\nmeta = 1"),
            "encryption.meta",
            id="encryption-meta-int",
        ),
        pytest.param(
            _edit("[encryption]\n", '[signature]\nalgo = "Ed25519"\n\n[encryption]\n'),
            "signature.manifest_hash",
            id="signature-incomplete",
        ),
    ],
)
def test_schema_errors_name_the_field(text: str, field: str) -> None:
    """Every schema violation raises ``ManifestError`` whose ``field`` names the offending table or key."""
    with pytest.raises(ManifestError) as info:
        Manifest.from_toml(text)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xef\xbb\xbf\xef\xbb\xbf" + REFERENCE_MANIFEST_TOML.encode(), id="two-boms"),
        pytest.param(b"\xef\xbb" + REFERENCE_MANIFEST_TOML.encode(), id="half-bom"),
        pytest.param(REFERENCE_MANIFEST_TOML.encode().replace(b"builder", b"build\xff"), id="not-utf8"),
        pytest.param(REFERENCE_MANIFEST_TOML.encode().replace(b"builder", b"\xed\xa0\x80"), id="surrogate"),
        pytest.param(b"[sync\n", id="bad-toml"),
        pytest.param(b"a = 1\na = 2\n", id="duplicate-key"),
        pytest.param(b"x = " + b"[" * 5000 + b"]" * 5000, id="deep-nesting"),
        # Dotted keys nest without recursion in tomllib; freezing, writing and signing the manifest recurse.
        pytest.param(
            REFERENCE_MANIFEST_TOML.encode() + b"\n[" + b".".join([b"a"] * 5000) + b"]\nx = 1\n",
            id="deep-dotted-table",
        ),
        pytest.param(
            REFERENCE_MANIFEST_TOML.encode() + b"\n[" + b".".join([b"a"] * 33) + b"]\nx = 1\n",
            id="dotted-table-one-past-the-limit",
        ),
        pytest.param(
            REFERENCE_MANIFEST_TOML.encode() + b"\n[x]\n" + b".".join([b"a"] * 5000) + b" = 1\n",
            id="deep-dotted-key",
        ),
        pytest.param(_edit("ttl = 3600", "ttl = " + "1" * 5000).encode(), id="int-over-digit-limit"),
        pytest.param(b"", id="empty"),
    ],
)
def test_document_errors(data: bytes) -> None:
    """Undecodable or unparsable bytes raise ``ManifestError``, never another exception."""
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


def test_a_leading_bom_is_skipped_as_the_reference_does() -> None:
    """A manifest starting with a UTF-8 BOM opens (the reference's parser skips one), as the same manifest."""
    data = REFERENCE_MANIFEST_TOML.encode()
    assert Manifest.from_bytes(b"\xef\xbb\xbf" + data) == Manifest.from_bytes(data)
    assert not Manifest.from_bytes(b"\xef\xbb\xbf" + data).to_bytes().startswith(b"\xef\xbb\xbf")


def test_parsed_manifests_are_memoized_by_their_bytes() -> None:
    """The same bytes give the same (immutable) object; other bytes and failures are never served from it."""
    data = REFERENCE_MANIFEST_TOML.encode()
    first = Manifest.from_bytes(data)
    assert Manifest.from_bytes(bytes(bytearray(data))) is first
    other = Manifest.from_bytes(data.replace(b"ttl = 3600", b"ttl = 3601"))
    assert other.policy.ttl == 3601
    assert first.policy.ttl == 3600
    for _ in range(2):  # an error is raised again, not remembered as a result
        with pytest.raises(ManifestError):
            Manifest.from_bytes(data.replace(b"ttl = 3600", b"ttl = -1"))


def test_huge_but_valid_ttl_is_kept() -> None:
    """``ttl = 2**63 - 1`` is the largest accepted value and survives a round trip."""
    m = Manifest.from_toml(_edit("ttl = 3600", f"ttl = {2**63 - 1}"))
    assert m.policy.ttl == 2**63 - 1
    assert Manifest.from_toml(m.to_toml()) == m


@pytest.mark.parametrize("variant", list(Variant))
def test_every_variant_parses(variant: Variant) -> None:
    """Each exact lowercase variant parses and ``is_vault``/``is_app`` follow it."""
    m = Manifest.from_toml(_edit('variant = "plain"', f'variant = "{variant.value}"'))
    assert m.sync.variant is variant
    assert m.is_vault is (variant is Variant.VAULT)
    assert m.is_app is (variant is Variant.APP)


def test_encryption_enabled_makes_a_vault() -> None:
    """``[encryption] enabled = true`` alone makes the manifest a vault (§2.6)."""
    m = Manifest.from_toml(_edit("[encryption]\nenabled = false", "[encryption]\nenabled = true"))
    assert m.sync.variant is Variant.PLAIN
    assert m.is_vault


def test_without_signature_drops_the_table() -> None:
    """``without_signature`` removes ``[signature]`` and nothing else."""
    m = Manifest.from_toml(FULL_EXAMPLE)
    bare = m.without_signature()
    assert bare.signature is None
    assert "[signature]" not in bare.to_toml()
    assert replace(bare, signature=m.signature) == m


def test_make_manifest_is_valid() -> None:
    """The test helper's manifest survives serialisation and parsing."""
    m = make_manifest(allow_hosts=("a.example", "b.example"))
    assert Manifest.from_bytes(m.to_bytes()) == m


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """32 levels (the limit; the reference's manifests use 2) still open, and write back as they were."""
    text = REFERENCE_MANIFEST_TOML + "\n[" + ".".join(["a"] * 31) + "]\nx = 1\n"
    manifest = Manifest.from_bytes(text.encode())
    assert Manifest.from_toml(manifest.to_toml()) == manifest
