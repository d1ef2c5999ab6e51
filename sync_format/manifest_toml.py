"""Write TOML byte-for-byte the way the reference's ``toml::to_string_pretty`` does (spec §2.7).

This module knows TOML, not manifests: ``manifest.py`` hands it the tables in the reference's order and it
writes them (it imports nothing from the model, so the two never import each other). Layout: a blank line
between tables; ``key = value`` with single spaces; arrays of 0 or 1 elements inline, longer ones one
element per line indented by four spaces with a trailing comma; unknown keys and tables a parsed manifest
kept are written after the known ones, so nothing is lost (the reference ignores them when it reads).

Strings are quoted by the rule of ``toml_write`` 0.1.2, the crate behind the reference's serializer
(``TomlStringBuilder::as_default``); "control" means any ASCII control character (U+0000..U+001F, U+007F)
except TAB and LF:

1. no control, ``\\``, ``"`` or LF: basic ``"…"`` (a TAB in it is written ``\\t``);
2. else no control, ``'`` or LF: literal ``'…'`` (TABs raw);
3. else no control or ``\\`` and never three ``"`` in a row: multi-line basic ``\"\"\"…\"\"\"``;
4. else no control and never three ``'`` in a row: multi-line literal ``'''…'''``;
5. else escaped basic ``"…"``, or escaped multi-line basic when the value has an LF.

A multi-line string whose value has an LF starts with a newline right after its opening quotes (TOML drops
that newline when reading, so a leading LF of the value survives). Escaping writes ``\\b \\t \\n \\f \\r``
for those controls (``\\n`` only outside multi-line strings, where LF stays raw), ``\\\\`` for a backslash,
``\\"`` for a double quote (inside a multi-line string only the third of three in a row), and ``\\u00XX``
(upper-case hex) for every other control, DEL included. Keys use the key rule of the same crate: bare when
made of ``A-Za-z0-9_-`` (and not empty), else basic, else literal, else escaped basic, where LF counts as a
control.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: A table to write: its dotted header, its known keys in order (None values are skipped) and the unknown
#: keys and sub-tables kept from parsing.
Table = tuple[str, Sequence[tuple[str, Any]], Mapping[str, Any]]

# Controls that force escaping: every ASCII control but TAB (U+0009) and LF (U+000A), and DEL.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
# For keys LF counts as a control too (a key is never multi-line).
_KEY_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_BARE_KEY = re.compile("[A-Za-z0-9_-]+")
# What an escaped string must escape: a control (TAB and LF included) or a backslash.
_ESCAPE_BASIC = re.compile('[\x00-\x1f\x7f\\\\"]')
_ESCAPE_ML = re.compile('[\x00-\x09\x0b-\x1f\x7f\\\\]|"""')
_NAMED = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


def dump_tables(top_extra: Mapping[str, Any], tables: Iterable[Table]) -> str:
    """Write a document: unknown top-level keys first, then each table, then unknown top-level tables.

    Args:
        top_extra: Top-level keys and tables outside the schema, kept from parsing.
        tables: The known tables in the order they are written.

    Returns:
        TOML text ending with ``\\n``.
    """
    # Unknown top-level keys must precede every table header to stay top-level.
    top_keys, top_tables = _split_extra(top_extra)
    head = "".join(line + "\n" for line in _key_lines(top_keys))
    blocks = [_table_block(name, known, extra) for name, known, extra in tables]
    blocks.extend(_generic_table(toml_key(name), table) for name, table in top_tables)
    return head + "\n".join(blocks)


def toml_string(text: str) -> str:
    """Quote a string value exactly as ``toml_write`` 0.1.2 does (the five steps in the module docstring).

    Args:
        text: The value.

    Returns:
        The TOML string literal, delimiters included.
    """
    if _CONTROL.search(text) is None:
        has_backslash = "\\" in text
        if not has_backslash and '"' not in text and "\n" not in text:
            return f'"{_escape_basic(text)}"' if "\t" in text else f'"{text}"'
        if "'" not in text and "\n" not in text:
            return f"'{text}'"
        newline = "\n" if "\n" in text else ""
        if not has_backslash and '"""' not in text:
            return f'"""{newline}{_escape_ml(text)}"""'
        if "'''" not in text:
            return f"'''{newline}{text}'''"
    if "\n" in text:
        return f'"""\n{_escape_ml(text)}"""'
    return f'"{_escape_basic(text)}"'


def toml_key(name: str) -> str:
    """Write a key as ``toml_write`` 0.1.2 does: bare, else basic, else literal, else escaped basic.

    Args:
        name: The key.

    Returns:
        The key as it appears before ``=`` or in a table header.
    """
    if _BARE_KEY.fullmatch(name):
        return name
    control = _KEY_CONTROL.search(name) is not None
    if not control and "\\" not in name and '"' not in name:
        return f'"{_escape_basic(name)}"'
    if not control and "'" not in name:
        return f"'{name}'"
    return f'"{_escape_basic(name)}"'


def _escape_char(c: str) -> str:
    named = _NAMED.get(c)
    return named if named is not None else f"\\u{ord(c):04X}"


def _escape_basic(text: str) -> str:
    return _ESCAPE_BASIC.sub(lambda m: _escape_char(m.group()), text)


def _escape_ml(text: str) -> str:
    # Inside \"\"\"…\"\"\" a double quote is escaped only as the third of three in a row (two may stand raw);
    # LF stays raw.
    return _ESCAPE_ML.sub(lambda m: '""\\"' if m.group() == '"""' else _escape_char(m.group()), text)


def _table_block(name: str, known: Sequence[tuple[str, Any]], extra: Mapping[str, Any]) -> str:
    """One ``[name]`` header with its keys, then any sub-tables kept in ``extra``."""
    lines = [f"[{name}]"]
    lines.extend(_key_lines((k, v) for k, v in known if v is not None))
    scalars, subtables = _split_extra(extra)
    lines.extend(_key_lines(scalars))
    text = "\n".join(lines) + "\n"
    for sub_name, sub in subtables:
        text += "\n" + _generic_table(f"{name}.{toml_key(sub_name)}", sub)
    return text


def _generic_table(header: str, table: Mapping[str, Any]) -> str:
    scalars, subtables = _split_extra(table)
    text = "\n".join([f"[{header}]", *_key_lines(scalars)]) + "\n"
    for sub_name, sub in subtables:
        text += "\n" + _generic_table(f"{header}.{toml_key(sub_name)}", sub)
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
    return [f"{toml_key(k)} = {_value(v, top=True)}" for k, v in items]


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
        return toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(f"{toml_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        items = [_value(v) for v in value]
        if len(items) < 2 or not top:
            return "[" + ", ".join(items) + "]"
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
