"""Write ``manifest.toml`` byte-for-byte the way the reference's ``toml::to_string_pretty`` does (spec §2.7).

Tables in the fixed order ``sync, meta, policy, permissions, ownership, verification, capabilities,
[signature], encryption, [encryption.meta]``; keys in schema order; absent optional values omitted; arrays of
0 or 1 elements inline, longer ones one element per line. Unknown keys and tables that a parsed manifest kept
are written after the known ones, so nothing is lost; the reference ignores them when it reads.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sync_format.manifest import SIGNATURE_KEYS, Manifest

_BASIC_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dump_manifest(manifest: Manifest) -> str:
    """Serialise a manifest.

    Args:
        manifest: The manifest to write.

    Returns:
        TOML text ending with ``\\n``.
    """
    m = manifest
    tables: list[tuple[str, list[tuple[str, Any]], Mapping[str, Any]]] = [
        (
            "sync",
            [
                ("version", m.sync.version),
                ("content_type", m.sync.content_type),
                ("display_ext", m.sync.display_ext),
                ("variant", m.sync.variant.value),
            ],
            m.sync.extra,
        ),
        (
            "meta",
            [
                ("created_by", m.meta.created_by),
                ("created_at", m.meta.created_at),
                ("hash_algo", m.meta.hash_algo),
            ],
            m.meta.extra,
        ),
        ("policy", [("ttl", m.policy.ttl), ("timeout", m.policy.timeout)], m.policy.extra),
        (
            "permissions",
            [
                ("allow_hosts", m.permissions.allow_hosts),
                ("allow_env", m.permissions.allow_env),
            ],
            m.permissions.extra,
        ),
        (
            "ownership",
            [
                ("owner_capsule", m.ownership.owner_capsule),
                ("write_allowed", m.ownership.write_allowed),
            ],
            m.ownership.extra,
        ),
        (
            "verification",
            [
                ("enabled", m.verification.enabled),
                ("vm_type", m.verification.vm_type),
                ("proof_type", m.verification.proof_type),
            ],
            m.verification.extra,
        ),
        ("capabilities", [("values", m.capabilities.values)], m.capabilities.extra),
    ]
    if m.signature is not None:
        sig = m.signature
        tables.append(("signature", [(k, getattr(sig, k)) for k in SIGNATURE_KEYS], sig.extra))
    tables.append(
        (
            "encryption",
            [("enabled", m.encryption.enabled), ("algorithm", m.encryption.algorithm)],
            m.encryption.extra,
        )
    )
    enc_meta = m.encryption.meta
    if enc_meta is not None:
        tables.append(
            (
                "encryption.meta",
                [
                    ("keys", enc_meta.keys),
                    ("recipients", enc_meta.recipients),
                    ("kdf", enc_meta.kdf),
                    ("hint", enc_meta.hint),
                ],
                enc_meta.extra,
            )
        )

    # Unknown top-level keys must precede every table header to stay top-level; unknown tables follow
    # the known ones. The reference ignores both when it reads.
    top_keys, top_tables = _split_extra(m.extra_tables)
    head = "".join(line + "\n" for line in _key_lines(top_keys))
    blocks = [_table_block(name, known, extra) for name, known, extra in tables]
    blocks.extend(_generic_table(_key(name), table) for name, table in top_tables)
    return head + "\n".join(blocks)


def _table_block(name: str, known: list[tuple[str, Any]], extra: Mapping[str, Any]) -> str:
    """One ``[name]`` header with its keys, then any sub-tables kept in ``extra``."""
    lines = [f"[{name}]"]
    lines.extend(_key_lines((k, v) for k, v in known if v is not None))
    scalars, subtables = _split_extra(extra)
    lines.extend(_key_lines(scalars))
    text = "\n".join(lines) + "\n"
    for sub_name, sub in subtables:
        text += "\n" + _generic_table(f"{name}.{_key(sub_name)}", sub)
    return text


def _generic_table(header: str, table: Mapping[str, Any]) -> str:
    scalars, subtables = _split_extra(table)
    text = "\n".join([f"[{header}]", *_key_lines(scalars)]) + "\n"
    for sub_name, sub in subtables:
        text += "\n" + _generic_table(f"{header}.{_key(sub_name)}", sub)
    return text


def _split_extra(
    table: Mapping[str, Any],
) -> tuple[list[tuple[str, Any]], list[tuple[str, Mapping[str, Any]]]]:
    scalars: list[tuple[str, Any]] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            scalars.append((k, v))
    return scalars, tables


def _key_lines(items: Iterable[tuple[str, Any]]) -> list[str]:
    return [f"{_key(k)} = {_value(v, top=True)}" for k, v in items]


def _key(name: str) -> str:
    if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        return name
    return _string(name)


def _value(value: Any, *, top: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        items = [_value(v) for v in value]
        if len(items) < 2 or not top:
            return "[" + ", ".join(items) + "]"
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _string(text: str) -> str:
    """Basic string when it needs no escaping, literal when it has only ``"``/``\\`` to escape."""
    plain = not any(c in '"\\' or _is_control(c) for c in text)
    if plain:
        return f'"{text}"'
    if "'" not in text and not any(_is_control(c) for c in text):
        return f"'{text}'"
    return '"' + "".join(_escape(c) for c in text) + '"'


def _is_control(c: str) -> bool:
    return ord(c) < 0x20 or ord(c) == 0x7F


def _escape(c: str) -> str:
    if c in _BASIC_ESCAPES:
        return _BASIC_ESCAPES[c]
    if _is_control(c):
        return f"\\u{ord(c):04X}"
    return c
