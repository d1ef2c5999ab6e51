"""Crash-safe file replacement: a unique temp file beside the target, fsync, rename, fsync the directory.

A reader either sees the old file or the new one, never a mixture; after a crash at any point the target
is intact and at worst a temp file is left behind. Temp files are named ``.<target>.<random>.sync-tmp`` so
the store can recognise (and ignore, or sweep) them; the random part makes concurrent writers collide never.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sync_format.errors import ArchiveError

log = logging.getLogger(__name__)

#: Suffix of every temp file we create; the store hides and sweeps these.
TEMP_SUFFIX = ".sync-tmp"
#: Mode of archives we create (before umask), as the reference's zip external attributes say.
ARCHIVE_MODE = 0o644


def is_temp_name(name: str) -> bool:
    """Tell whether a file name is one of our in-flight temp files.

    Args:
        name: A bare file name.

    Returns:
        True for names made by ``create_temp``.
    """
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def create_temp(target: Path) -> tuple[Path, BinaryIO]:
    """Create a fresh temp file next to ``target``.

    Args:
        target: The file the temp file will replace.

    Returns:
        The temp path and the file opened for writing and reading.

    Raises:
        ArchiveError: The directory is missing or not writable.
    """
    directory = target.parent
    for _ in range(8):
        temp = directory / f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ArchiveError(f"cannot create a temp file: {exc.strerror}", path=target) from exc
        return temp, os.fdopen(fd, "w+b")
    raise ArchiveError("cannot find a free temp name", path=target)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable.

    Args:
        directory: The directory whose entries changed.

    Raises:
        ArchiveError: The directory cannot be opened or synced.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"cannot open directory: {exc.strerror}", path=directory) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise ArchiveError(f"cannot sync directory: {exc.strerror}", path=directory) from exc
    finally:
        os.close(fd)


def publish(temp: Path, target: Path) -> None:
    """Rename a synced temp file over ``target`` and make the rename durable.

    Args:
        temp: A temp file from ``create_temp`` that has been written, flushed and fsynced.
        target: The final path.

    Raises:
        ArchiveError: The rename failed; the temp file is removed.
    """
    try:
        os.replace(temp, target)
    except OSError as exc:
        discard(temp)
        raise ArchiveError(f"cannot rename into place: {exc.strerror}", path=target) from exc
    fsync_dir(target.parent)


def discard(temp: Path) -> None:
    """Remove a temp file if it is still there.

    Args:
        temp: The temp path.
    """
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def sync_file(handle: BinaryIO) -> None:
    """Flush Python's buffer and fsync the file's data.

    Args:
        handle: An open, writable file.

    Raises:
        ArchiveError: fsync failed (the data may not be on disk).
    """
    try:
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as exc:
        raise ArchiveError(f"cannot sync file: {exc.strerror}") from exc


@contextlib.contextmanager
def atomic_write(target: Path) -> Iterator[BinaryIO]:
    """Write ``target`` atomically: the body writes to a temp file that replaces ``target`` on success.

    Args:
        target: The final path. Its directory must exist.

    Yields:
        The temp file, open for writing.

    Raises:
        ArchiveError: The temp file could not be created, synced or renamed.
    """
    temp, handle = create_temp(target)
    try:
        with handle:
            yield handle
            sync_file(handle)
        publish(temp, target)
    except BaseException:
        discard(temp)
        raise


def sweep_temp_files(root: Path, *, older_than: float, now: float | None = None) -> list[Path]:
    """Remove the temp files a crash left below ``root`` (not following symlinks).

    A temp file that is being written has a recent mtime (every write moves it), so only files untouched
    for ``older_than`` seconds are removed: those of a writer that died.

    Args:
        root: The store directory.
        older_than: Seconds since a temp file's last modification after which it is abandoned.
        now: The current time (seconds since the epoch); the clock's when None.

    Returns:
        The files removed.
    """
    limit = (time.time() if now is None else now) - older_than
    removed: list[Path] = []
    # fwalk holds each folder open and acts relative to it: a folder swapped for a symlink meanwhile is
    # neither entered nor swept (``sync_format.beneath`` explains the swap). The root is the operator's and
    # may be a symlink itself: opened (following it) here, walked from that descriptor.
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("temp files not swept root=%s reason=%s", root, exc.strerror)
        return removed
    try:
        removed.extend(_temp_files_below(root, root_fd, limit))
    finally:
        os.close(root_fd)
    return removed


def _temp_files_below(root: Path, root_fd: int, limit: float) -> Iterator[Path]:
    """Remove (and yield) the temp files below the folder ``root_fd`` untouched since ``limit``."""
    for directory, _folders, files, folder_fd in os.fwalk(".", dir_fd=root_fd):
        for name in files:
            if not is_temp_name(name):
                continue
            path = Path(os.path.normpath(os.path.join(root, directory, name)))
            try:
                if os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mtime < limit:
                    os.unlink(name, dir_fd=folder_fd)
                    yield path
            except FileNotFoundError:
                continue  # its writer finished (or another sweep got it) meanwhile
            except OSError as exc:
                # Not ours to remove after all (permissions): listings ignore it anyway; say so once here.
                log.warning("abandoned temp file kept path=%s reason=%s", path, exc.strerror)
