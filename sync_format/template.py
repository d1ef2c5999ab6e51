"""The manifest new archives get by default: the reference store's template (spec §8.3).

``created_by = "sync-fs"``, ``ttl = 3600``, ``timeout = 30``, no allowed hosts, ``sync.version = "1.2"``,
``hash_algo = "blake3"``, ``created_at`` = now (``YYYY-MM-DDTHH:MM:SSZ``), variant plain. ``display_ext`` is
the extension of the input file's name by Rust's rule (text after the last dot, none for dot-files; a
trailing ``.sync`` is stripped first; whitespace and leading dots trimmed) and ``content_type`` comes from
the spec's table, looked up with the effective ``display_ext`` lower-cased. Where that text is no
extension a manifest may carry (``sync_format.media``: ``Dr. Who notes``, ``prog.c++``, ``x.ä``, over 32
characters), the file has none (``""``): the reference wrote it anyway, making an archive no strict reader
serves, and an upload of such a name failed (500).

``syncctl pack`` and the writable store of ``mountd`` (which wraps every upload with it) share this one copy.
Uploads differ in one field: ``ownership.write_allowed`` is true, because a file a user put into a writable
share is theirs to overwrite; archives packed by a publisher keep the reference's ``false`` and mountd
refuses to overwrite their payload (``write_allowed`` honoured).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

from sync_format.freshness import format_timestamp, now_ns
from sync_format.manifest import (
    Manifest,
    MetaSection,
    OwnershipSection,
    PermissionsSection,
    PolicySection,
    SyncSection,
)
from sync_format.media import display_ext_problem

#: ``meta.created_by`` of unsigned archives when none is given.
DEFAULT_CREATED_BY = "sync-fs"
#: ``policy.ttl``: seconds a payload stays fresh after it was written or refreshed.
DEFAULT_TTL = 3600
#: ``policy.timeout``: seconds one run of the update logic may take.
DEFAULT_TIMEOUT = 30
#: ``sync.version`` written by the reference.
FORMAT_VERSION = "1.2"
#: ``meta.hash_algo`` written by the reference.
HASH_ALGO = "blake3"
#: Content type for extensions not in the table (and for files without an extension).
FALLBACK_CONTENT_TYPE = "application/octet-stream"

CONTENT_TYPES = {
    "txt": "text/plain",
    "csv": "text/csv",
    "json": "application/json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "svg": "image/svg+xml",
    "html": "text/html",
    "htm": "text/html",
    "md": "text/markdown",
}

_SYNC_SUFFIX = ".sync"


def clean_ext(ext: str) -> str:
    """Trim whitespace and leading dots from an extension, as the template does.

    Args:
        ext: ``" .csv"``, ``"csv"``...

    Returns:
        ``"csv"``.
    """
    return ext.strip().lstrip(".")


def extension_of(name: str) -> str:
    """The ``display_ext`` the template derives from a file name.

    Args:
        name: A file name or path (``report.csv``, ``notes.md.sync``, ``.bashrc``).

    Returns:
        The extension (``csv``, ``md``), or ``""`` when there is none, or when the text after the last dot
        is no ``display_ext`` a manifest may carry (``media.display_ext_problem``).
    """
    base = PurePath(name).name
    if base.endswith(_SYNC_SUFFIX):
        base = base[: -len(_SYNC_SUFFIX)]
    dot = base.rfind(".")
    if dot <= 0:  # no dot, or a dot-file such as ".bashrc": Rust's Path::extension gives None
        return ""
    ext = clean_ext(base[dot + 1 :])
    return ext if display_ext_problem(ext) is None else ""


def content_type_for(display_ext: str) -> str:
    """The template's content type for an extension.

    Args:
        display_ext: The extension, any case.

    Returns:
        The MIME type from the table, or ``application/octet-stream``.
    """
    return CONTENT_TYPES.get(clean_ext(display_ext).lower(), FALLBACK_CONTENT_TYPE)


def template_manifest(
    *,
    display_ext: str,
    content_type: str | None = None,
    created_by: str = DEFAULT_CREATED_BY,
    created_at: str | None = None,
    ttl: int = DEFAULT_TTL,
    timeout: int = DEFAULT_TIMEOUT,
    allow_hosts: Sequence[str] = (),
    write_allowed: bool = False,
) -> Manifest:
    """Build the template manifest with the given overrides.

    Args:
        display_ext: ``sync.display_ext`` (cleaned).
        content_type: ``sync.content_type``; from the table for ``display_ext`` when None.
        created_by: ``meta.created_by``.
        created_at: ``meta.created_at``; now when None.
        ttl: ``policy.ttl`` in seconds.
        timeout: ``policy.timeout`` in seconds.
        allow_hosts: ``permissions.allow_hosts`` in the order given.
        write_allowed: ``ownership.write_allowed``.

    Returns:
        The manifest (validated when the builder parses its bytes).
    """
    ext = clean_ext(display_ext)
    return Manifest(
        sync=SyncSection(
            version=FORMAT_VERSION,
            content_type=content_type if content_type is not None else content_type_for(ext),
            display_ext=ext,
        ),
        meta=MetaSection(
            created_by=created_by,
            created_at=created_at if created_at is not None else format_timestamp(now_ns()),
            hash_algo=HASH_ALGO,
        ),
        policy=PolicySection(ttl=ttl, timeout=timeout),
        permissions=PermissionsSection(allow_hosts=tuple(allow_hosts)),
        ownership=OwnershipSection(write_allowed=write_allowed),
    )
