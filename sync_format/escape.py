"""``escape_text``: make an archive- or guest-controlled string safe to print, log or store.

Manifest fields, guest messages, URLs and server reasons reach terminals, log lines and status records. A
raw ESC sequence can hide text from the person reading (``\\x1b[8m`` conceals an allow-list entry), a
newline can forge a log line, and bidi controls reorder what is shown. Every such string passes through
``escape_text`` first. Invariants: the result holds no C0/C1 control character, no DEL, no Unicode format
(``Cf``: bidi controls, zero-width characters), line or paragraph separator, and no lone surrogate; those
are written as ``\\xNN`` (up to U+00FF) or ``\\uNNNN``/``\\UNNNNNNNN``. Other printable text, non-ASCII
letters included, is kept, and so is a backslash: escaping is idempotent (a string escaped twice, once where
it was produced and once where it is shown, reads the same). The result is at most ``limit`` characters,
cut ones marked by a trailing ``...``.
"""

from __future__ import annotations

import unicodedata

#: Default bound on an escaped string, in characters.
DEFAULT_LIMIT = 200
_CUT = "..."
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape_text(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """Escape control, format and bidi characters and bound the length.

    Args:
        text: The untrusted value (``str()`` of anything else).
        limit: The longest result, in characters (at least 4).

    Returns:
        The escaped, bounded text.
    """
    value = text if isinstance(text, str) else str(text)
    out: list[str] = []
    size = 0
    for char in value:
        piece = _escape_char(char)
        if size + len(piece) > limit:
            while out and size + len(_CUT) > limit:
                size -= len(out.pop())
            out.append(_CUT)
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _escape_char(char: str) -> str:
    if char == " " or (char.isprintable() and unicodedata.category(char) not in _UNSAFE_CATEGORIES):
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_json_text(document: str) -> str:
    """Escape, as JSON ``\\uNNNN``, the characters ``escape_text`` would escape that ``json.dumps(...,
    ensure_ascii=False)`` leaves raw (bidi and other format characters, line and paragraph separators).

    The result is the same JSON value: those characters only occur inside strings.

    Args:
        document: A JSON document.

    Returns:
        The document, safe to show on a terminal.
    """
    return "".join(_json_escape(c) for c in document)


def _json_escape(char: str) -> str:
    if ord(char) < 0x7F or _escape_char(char) == char:
        return char  # json.dumps already escaped C0 controls, quotes and backslashes
    if ord(char) > 0xFFFF:
        return _surrogates(char)
    return f"\\u{ord(char):04x}"


def _surrogates(char: str) -> str:
    code = ord(char) - 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
