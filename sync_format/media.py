"""The strict shapes of ``sync.content_type`` and ``sync.display_ext``: values that become HTTP headers and
file names.

mountd sends ``content_type`` as a ``Content-Type`` header and builds the name an archive is listed under
from ``display_ext``, so an archive's author must not be able to smuggle a header
(``text/html\\r\\nSet-Cookie: ...``), a non-Latin-1 value, or a path (``/../../tmp/pwn``) through them.
Rules (deliberately stricter than the reference, which accepts any string; ``docs/format.md``):

* ``content_type`` is an RFC 9110 media type: ``type "/" subtype *( OWS ";" OWS parameter )``, where type,
  subtype and parameter names are tokens (``tchar``) and parameter values tokens or quoted strings of
  visible ASCII, space and tab; at most ``MAX_CONTENT_TYPE`` characters.
* ``display_ext`` is empty or labels of ASCII letters, digits, ``_`` and ``-`` joined by single dots
  (``csv``, ``tar.gz``): no ``/``, ``\\``, empty or dot-only segment, space or control character; at most
  ``MAX_DISPLAY_EXT`` characters.
"""

from __future__ import annotations

import re

from sync_format.errors import ManifestError
from sync_format.escape import escape_text

#: Longest accepted ``content_type``, in characters.
MAX_CONTENT_TYPE = 255
#: Longest accepted ``display_ext``, in characters.
MAX_DISPLAY_EXT = 32
#: What mountd sends instead of a ``content_type`` that fails the rule.
FALLBACK_CONTENT_TYPE = "application/octet-stream"

_TCHAR_RUN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_MEDIA_TYPE = re.compile(
    rf"{_TCHAR_RUN}/{_TCHAR_RUN}(?:[ \t]*;[ \t]*(?:{_TCHAR_RUN}=(?:{_TCHAR_RUN}|{_QUOTED}))?)*", re.ASCII
)
_DISPLAY_EXT = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)?", re.ASCII)

#: Most accepted values of each field remembered (``_remember``).
MAX_ACCEPTED = 1024
_GOOD_TYPES: set[str] = set()
_GOOD_EXTS: set[str] = set()


def media_type_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable ``content_type``, or None when it is.

    Args:
        value: The manifest's ``sync.content_type``.

    Returns:
        A short reason, or None.
    """
    if type(value) is str and value in _GOOD_TYPES:
        return None
    if len(value) > MAX_CONTENT_TYPE:
        return f"is longer than {MAX_CONTENT_TYPE} characters"
    if _MEDIA_TYPE.fullmatch(value) is None:
        return 'must be a media type "type/subtype" with optional "; name=value" parameters (RFC 9110)'
    _remember(_GOOD_TYPES, value)
    return None


def display_ext_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable ``display_ext``, or None when it is.

    Args:
        value: The manifest's ``sync.display_ext``.

    Returns:
        A short reason, or None.
    """
    if type(value) is str and value in _GOOD_EXTS:
        return None
    if len(value) > MAX_DISPLAY_EXT:
        return f"is longer than {MAX_DISPLAY_EXT} characters"
    if _DISPLAY_EXT.fullmatch(value) is None:
        return "must be letters, digits, '_' and '-', in labels joined by single dots (csv, tar.gz)"
    _remember(_GOOD_EXTS, value)
    return None


def _remember(accepted: set[str], value: str) -> None:
    # Every open of an archive checks both fields (a listing twice), and a store's archives share a few
    # values: accepted plain strings are remembered, a bounded number (a ``str`` subclass could compare
    # equal to an accepted value yet be another one, so it is never remembered, and always checked).
    if type(value) is str:
        if len(accepted) >= MAX_ACCEPTED:
            accepted.clear()
        accepted.add(value)


def is_media_type(value: str) -> bool:
    """Whether ``value`` may be sent as a ``Content-Type`` header (``media_type_problem`` finds nothing)."""
    return media_type_problem(value) is None


def check_served_fields(content_type: str, display_ext: str) -> None:
    """Refuse a manifest whose ``content_type`` or ``display_ext`` breaks the rules above.

    Args:
        content_type: ``sync.content_type``.
        display_ext: ``sync.display_ext``.

    Raises:
        ManifestError: One line naming the field, the rule and the (escaped, shortened) value.
    """
    for field, value, problem in (
        ("sync.content_type", content_type, media_type_problem(content_type)),
        ("sync.display_ext", display_ext, display_ext_problem(display_ext)),
    ):
        if problem is not None:
            raise ManifestError(f"{problem}, not '{escape_text(value, 80)}'", field=field)


def safe_content_type(value: str) -> str:
    """The value to send as ``Content-Type``: ``value`` when it is a media type, else a neutral one.

    mountd calls this right before emitting the header, whatever checked the archive before.

    Args:
        value: A manifest's ``content_type``.

    Returns:
        ``value``, or ``application/octet-stream``.
    """
    return value if is_media_type(value) else FALLBACK_CONTENT_TYPE
