"""A store is a directory tree of ``.sync`` files; this module names, finds and lists them (spec §8.1, §8.3).

Display names follow the reference exactly (``report.csv.sync`` with ``display_ext = "csv"`` shows as
``report.csv``). Store paths for uploaded names refuse anything that could leave the store (absolute
paths, ``..``, backslashes, NUL, drive prefixes). Listings skip our in-flight temp files, hidden files and
symlinks (a symlink could point outside the store), and never open archives: callers that need manifests
open them (and cache by file identity).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sync_format.atomic import is_temp_name
from sync_format.errors import ArchiveError

SYNC_SUFFIX = ".sync"


def archive_file_stem(path: str | os.PathLike[str]) -> str:
    """The file name without its last extension, by Rust's ``file_stem`` rule.

    Args:
        path: An archive path.

    Returns:
        The stem; ``.sync`` stays ``.sync``, ``foo.`` becomes ``foo``, no file name gives ``payload``.
    """
    # A path object already knows its name (listings name thousands: no re-parsing).
    name = path.name if isinstance(path, PurePosixPath) else PurePosixPath(os.fspath(path)).name
    if not name or name == "..":
        return "payload"
    dot = name.rfind(".")
    if dot <= 0:
        return name
    return name[:dot]


def _clean_ext(display_ext: str) -> str:
    return display_ext.strip().lstrip(".")


def build_display_name(base: str, display_ext: str, show_ext: bool = True) -> str:
    """Read-only display name (spec §8.1 ``build_display_name``).

    Args:
        base: The archive stem.
        display_ext: The manifest's ``sync.display_ext``.
        show_ext: Whether to append the extension at all.

    Returns:
        ``base`` plus ``.ext`` unless it already ends with it (case-sensitive).
    """
    ext = _clean_ext(display_ext)
    if not show_ext or not ext or base.endswith("." + ext):
        return base
    return f"{base}.{ext}"


def display_name(path: str | os.PathLike[str], display_ext: str) -> str:
    """How an archive appears when served read-only: ``report.csv.sync`` → ``report.csv``.

    Args:
        path: The archive path.
        display_ext: Its manifest's ``sync.display_ext``.

    Returns:
        The display name.
    """
    return build_display_name(archive_file_stem(path), display_ext)


def writable_display_name(path: str | os.PathLike[str], display_ext: str) -> str:
    """How an archive appears in a writable store (a stem that has a dot is kept as it is).

    Args:
        path: The archive path.
        display_ext: Its manifest's ``sync.display_ext``.

    Returns:
        The display name.
    """
    stem = archive_file_stem(path)
    if "." in stem:
        return stem
    return build_display_name(stem, display_ext)


def check_store_name(name: str) -> PurePosixPath:
    """Validate a name given by a client (a WebDAV path or a CLI argument) relative to the store.

    Args:
        name: ``dir/file.ext``; a leading ``/`` is ignored.

    Returns:
        The relative path.

    Raises:
        ArchiveError: The name is empty or could escape the store.
    """
    text = name.lstrip("/")
    if not text:
        raise ArchiveError("empty name")
    if "\x00" in text or "\\" in text:
        raise ArchiveError(f"invalid character in name {name!r}")
    parts = text.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ArchiveError(f"invalid path component in {name!r}")
    if len(parts[0]) >= 2 and parts[0][1] == ":" and parts[0][0].isalpha():
        raise ArchiveError(f"drive prefix in {name!r}")
    return PurePosixPath(*parts)


def store_path_for(store: str | os.PathLike[str], name: str) -> Path:
    """Where an uploaded file named ``name`` is stored: ``report.pdf`` → ``<store>/report.pdf.sync``.

    Args:
        store: The store directory.
        name: The client's name for the file.

    Returns:
        The archive path (a name already ending in ``.sync`` is kept).

    Raises:
        ArchiveError: The name is invalid.
    """
    rel = check_store_name(name)
    if not rel.name.endswith(SYNC_SUFFIX):
        rel = rel.with_name(rel.name + SYNC_SUFFIX)
    return Path(store, rel)


def is_archive_name(name: str) -> bool:
    """Tell whether a directory entry name is an archive a listing should show.

    Args:
        name: A bare file name.

    Returns:
        True for visible ``*.sync`` names that are not our temp files.
    """
    return name.endswith(SYNC_SUFFIX) and not name.startswith(".") and not is_temp_name(name)


def iter_archives(store: str | os.PathLike[str]) -> Iterator[Path]:
    """Every archive below ``store``, depth first, sorted by name; symlinks and hidden names are skipped.

    Args:
        store: The store directory, or a single archive file.

    Yields:
        Archive paths.

    Raises:
        ArchiveError: ``store`` does not exist.
    """
    root = Path(store)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise ArchiveError("store directory does not exist", path=root)
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and is_archive_name(entry.name):
                yield Path(entry.path)
        stack.extend(reversed(subdirs))
