"""TV-14 (ours, spec §10 style): manifest strings are quoted exactly as the reference's serializer does.

The reference writes manifests with ``toml::to_string_pretty``, whose strings come from ``toml_write`` 0.1.2
(``TomlStringBuilder::as_default``). ``docs/format.md`` gives its five steps; the vectors below take each
step with the reference's outputs, including the examples of the fidelity finding (``a⏎b``, ``it's "x"``,
``a'\\``, TAB``"``). Two properties back them: ``toml_string`` agrees with a literal transliteration of the
crate's algorithm (metrics, builder chain, byte-wise escaper) on arbitrary text, and our reader parses back
exactly what our writer wrote, for every string field of a manifest.
"""

from __future__ import annotations

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
    OwnershipSection,
    PermissionsSection,
    VerificationSection,
)
from sync_format.manifest_toml import toml_key, toml_string
from sync_format.testing import reference_manifest

TAB = "\t"
LF = "\n"

# (id, value, what the reference writes)
VECTORS = [
    # step 1: no control, backslash, double quote or LF -> basic
    ("s1-plain", "builder", '"builder"'),
    ("s1-empty", "", '""'),
    ("s1-apostrophes", "'hello'world'", "\"'hello'world'\""),
    ("s1-three-apostrophes", "'''x", "\"'''x\""),
    ("s1-tab-escaped", "tab\there", '"tab\\there"'),
    ("s1-unicode-raw", "über ✓ 日本", '"über ✓ 日本"'),
    # step 2: else no control, apostrophe or LF -> literal, TABs raw
    ("s2-double-quotes", 'say "hi"', "'say \"hi\"'"),
    ("s2-backslashes", "C:\\path\\x", "'C:\\path\\x'"),
    ("s2-tab-quote", TAB + '"', "'" + TAB + "\"'"),
    ("s2-three-double-quotes", '"""x"""', '\'"""x"""\''),
    # step 3: else no control or backslash, never three double quotes in a row -> multi-line basic
    ("s3-lf", "a" + LF + "b", '"""' + LF + "a" + LF + 'b"""'),
    ("s3-both-quotes", 'it\'s "x"', '"""it\'s "x""""'),
    ("s3-quote-apostrophe", "\"'", '""""\'"""'),
    ("s3-leading-lf", LF + "x" + LF, '"""' + LF + LF + "x" + LF + '"""'),
    ("s3-lf-quotes", 'a "b"' + LF, '"""' + LF + 'a "b"' + LF + '"""'),
    ("s3-lf-tab-escaped", "a" + TAB + LF, '"""' + LF + "a\\t" + LF + '"""'),
    ("s3-two-quotes-and-apostrophe", '\'""', '"""\'"""""'),
    # step 4: else no control, never three apostrophes in a row -> multi-line literal
    ("s4-apostrophe-backslash", "a'\\", "'''a'\\'''"),
    ("s4-mixed", "mixed \\\"start\\\" 'end'' q", "'''mixed \\\"start\\\" 'end'' q'''"),
    ("s4-lf-backslash", "a\\" + LF + "b", "'''" + LF + "a\\" + LF + "b'''"),
    ("s4-three-quotes-apostrophe", '"""\'', "'''\"\"\"''''"),
    # step 5: anything else -> escaped basic, or escaped multi-line basic when there is an LF
    ("s5-cr", "\rhello", '"\\rhello"'),
    ("s5-named-escapes", "\b\f\r" + TAB + '"\\', '"\\b\\f\\r\\t\\"\\\\"'),
    ("s5-other-controls-and-del", "bell\x07\x00\x1b\x7f", '"bell\\u0007\\u0000\\u001B\\u007F"'),
    ("s5-crlf", "\r\nhello\r\n", '"""' + LF + "\\r" + LF + "hello\\r" + LF + '"""'),
    ("s5-three-apostrophes-and-backslash-quote", "'''\\\"", "\"'''\\\\\\\"\""),
    ("s5-ml-third-quote-escaped", 'a\x01""""' + LF, '"""' + LF + 'a\\u0001""\\""' + LF + '"""'),
]


@pytest.mark.parametrize(("value", "written"), [pytest.param(v, w, id=i) for i, v, w in VECTORS])
def test_tv14_string_quoting(value: str, written: str) -> None:
    """Each step of the reference's rule, as written in ``created_by`` and in an array element."""
    base = reference_manifest()
    m = replace(
        base,
        meta=replace(base.meta, created_by=value),
        permissions=PermissionsSection(allow_env=(value,)),
    )
    text = m.to_toml()
    assert f"created_by = {written}\n" in text
    assert f"allow_env = [{written}]\n" in text
    assert tomllib.loads(f"v = {written}")["v"] == value
    assert Manifest.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize(
    ("key", "written"),
    [
        pytest.param("spec_version", "spec_version", id="bare"),
        pytest.param("odd key", '"odd key"', id="basic"),
        pytest.param("", '""', id="empty-basic"),
        pytest.param('a"b', "'a\"b'", id="literal"),
        pytest.param("a\\b", "'a\\b'", id="backslash-literal"),
        pytest.param('it\'s "x"', '"it\'s \\"x\\""', id="escaped"),
        pytest.param("a\nb", '"a\\nb"', id="lf-escaped"),
        pytest.param("t\tab", '"t\\tab"', id="tab-escaped"),
    ],
)
def test_tv14_key_quoting(key: str, written: str) -> None:
    """Keys (only unknown ones kept from parsing) follow the crate's key rule."""
    assert toml_key(key) == written
    assert tomllib.loads(f"{written} = 1") == {key: 1}


# --- the crate's algorithm, transliterated as an oracle ------------------------------------------------


def _reference_quote(decoded: str) -> str:
    """``TomlStringBuilder::new(decoded).as_default()`` written out, step by step as the crate does."""
    raw = decoded.encode()
    max_single = max_double = single = double = 0
    escape_codes = escape = newline = False
    for b in raw:
        single = single + 1 if b == 0x27 else 0
        max_single = max(max_single, single)
        double = double + 1 if b == 0x22 else 0
        max_double = max(max_double, double)
        if b == 0x5C:
            escape = True
        elif b == 0x09:
            pass
        elif b == 0x0A:
            newline = True
        elif b <= 0x1F or b == 0x7F:
            escape_codes = True
    if not (escape_codes or escape or max_double > 0 or newline):
        return _reference_write(decoded, '"', is_ml=False, newline=newline)
    if not (escape_codes or max_single > 0 or newline):
        return "'" + decoded + "'"
    if not (escape_codes or escape or max_double > 2):
        return _reference_write(decoded, '"""', is_ml=True, newline=newline)
    if not (escape_codes or max_single > 2):
        return "'''" + ("\n" if newline else "") + decoded + "'''"
    if newline:
        return _reference_write(decoded, '"""', is_ml=True, newline=newline)
    return _reference_write(decoded, '"', is_ml=False, newline=newline)


def _reference_write(decoded: str, delimiter: str, *, is_ml: bool, newline: bool) -> str:
    named = {0x08: "\\b", 0x09: "\\t", 0x0C: "\\f", 0x0D: "\\r", 0x5C: "\\\\"}
    max_seq = 2 if is_ml else 0
    out = [delimiter, "\n" if newline and is_ml else ""]
    stream = decoded.encode()
    while stream:
        end, escaped, seq = 0, None, 0
        for i, b in enumerate(stream):
            if b == 0x22:
                seq += 1
                if seq > max_seq:
                    escaped = '\\"'
                    break
            else:
                seq = 0
            if b in named:
                escaped = named[b]
                break
            if b == 0x0A and not is_ml:
                escaped = "\\n"
                break
            if b not in {0x0A, 0x22} and (b <= 0x1F or b == 0x7F):
                break
            end = i + 1
        out.append(stream[:end].decode() + (escaped or ""))
        stream = stream[end + (1 if escaped else 0) :]
        if escaped is None and stream:
            out.append(f"\\u{stream[0]:04X}")
            stream = stream[1:]
    out.append(delimiter)
    return "".join(out)


# Any character a Rust string can hold (no lone surrogates).
_CHARS = st.characters(blacklist_categories=("Cs",))
# Text biased toward the characters the rule cares about, plus anything else.
_TRICKY = st.text(st.sampled_from(list("\"'\\\t\n\r\b\f\x00\x01\x1b\x7f ab✓")) | _CHARS, max_size=24)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(_TRICKY)
def test_quoting_matches_the_crates_algorithm(value: str) -> None:
    """``toml_string`` writes what the crate's algorithm writes, and TOML reads it back as the value."""
    written = toml_string(value)
    assert written == _reference_quote(value)
    assert tomllib.loads(f"v = {written}")["v"] == value


_FIELD = st.text(st.sampled_from(list("\"'\\\t\n\rx\x07\x7f")) | _CHARS, max_size=16)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    strings=st.lists(_FIELD, min_size=10, max_size=10),
    lists=st.lists(st.lists(_FIELD, max_size=3).map(tuple), min_size=5, max_size=5),
)
def test_reader_parses_back_what_the_writer_wrote(strings: list[str], lists: list[tuple[str, ...]]) -> None:
    """Every string the manifest writes (scalars and array elements) comes back unchanged from the bytes."""
    base = reference_manifest()
    m = replace(
        base,
        # content_type and display_ext stay valid: the strict reader checks their syntax.
        sync=replace(base.sync, version=strings[0]),
        meta=replace(base.meta, created_by=strings[3], created_at=strings[4], hash_algo=strings[5]),
        permissions=PermissionsSection(allow_hosts=lists[0], allow_env=lists[1]),
        ownership=OwnershipSection(owner_capsule=strings[6]),
        verification=VerificationSection(vm_type=strings[7], proof_type=strings[8]),
        capabilities=CapabilitiesSection(values=lists[2]),
        encryption=EncryptionSection(
            algorithm=strings[9], meta=EncryptionMeta(keys=lists[3], recipients=lists[4], hint=strings[9])
        ),
    )
    data = m.to_bytes()
    assert Manifest.from_bytes(data) == m
    assert Manifest.from_bytes(data).to_bytes() == data
