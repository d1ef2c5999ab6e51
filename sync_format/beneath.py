"""Files below a root named through a descriptor of their folder, so that no folder is followed through a
symbolic link put in its place.

A path such as ``store/a/b/x.sync`` is looked up again, name by name, by every operation that uses it. Between
the moment a write was checked and the moment it creates, renames or removes a file, anyone who may write to
``store/a`` can rename ``b`` away and put a symbolic link to any folder in its place; the operation then acts
in that folder, as the server's (or the worker's) user: an upload or a refresh written outside the store, a
delete or a move of someone else's file. ``pin`` opens each folder from the root one name at a time without
following a symbolic link (``O_NOFOLLOW``), keeps the last one open, and names the file through
``/proc/self/fd/N``: every later lookup through that name reaches the folder that was opened, wherever it is
renamed meanwhile and whatever is put in its place. The callers take the pinned path where they took the
plain one (``commit_payload``, ``SyncBuilder.write_to``, ``os.rename``, ``shutil.rmtree``...): nothing below
them changes.

Invariants:
    * The root is the operator's and may itself be reached through a symbolic link; below it nothing is
      followed. A symbolic link, or anything that is not a folder, where a folder is expected is refused
      (``FolderChanged``); a missing folder fails as the plain path would (``ArchiveError`` from
      ``FileNotFoundError``). The last name (the file or folder acted on) is not looked up here: the caller's
      own operation does that, relative to the pinned folder.
    * A pinned path is valid while its ``Pin`` is open (the ``with`` block of ``pinned``). Messages and logs
      show it as the folder's real path (``sync_format.errors.display_path``; ``ArchiveError`` does so).
    * Linux only: ``/proc`` must be mounted (it always is where the sandbox runs); without it nothing is
      written (``ArchiveError``), never silently by name.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath

from sync_format import errors
from sync_format.errors import ArchiveError, FolderChanged

#: Where a process's open descriptors are named.
PROC_FD = Path(errors.PROC_FD)
#: How each folder below the root is opened: only as a place to look names up, never through a symlink.
FOLDER_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: How the root is opened (the operator's: a symlink there is followed).
ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class Pin:
    """A file's folder, open; ``path`` names the file through it.

    Args:
        root: The folder ``path`` is below (followed if it is a symlink).
        path: A file or folder below ``root`` (``root`` joined with relative names, no ``..``).

    Raises:
        FolderChanged: A folder on the way is a symbolic link or not a folder.
        ArchiveError: A folder on the way is missing or cannot be opened, or ``/proc`` is not mounted.
        ValueError: ``path`` is ``root`` itself, not below it, or goes up with ``..``.
    """

    def __init__(self, root: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
        names = PurePath(path).relative_to(root).parts
        if not names or ".." in names:
            raise ValueError(f"{path} is not a file or folder below {root}")
        self.original = Path(path)
        if not PROC_FD.is_dir():
            raise ArchiveError(f"cannot write safely: {PROC_FD} is not mounted", path=self.original)
        self._fd = open_folder(Path(root), names[:-1], self.original)
        self.path = PROC_FD / str(self._fd) / names[-1]

    def close(self) -> None:
        """Close the folder (``path`` names nothing afterwards); safe to call more than once."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def pinned(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path`` named through a descriptor of its folder, opened from ``root`` without following a symlink
    (see ``Pin``), for the ``with`` block."""
    with Pin(root, path) as pin:
        yield pin.path


def open_folder(root: Path, names: tuple[str, ...], path: Path) -> int:
    """Open ``root`` (followed if it is a symlink), then each of ``names`` below it without following a
    symlink; the last one's descriptor (``O_PATH``: a place to look names up in, with ``dir_fd``). Needs no
    ``/proc``.

    Args:
        root: The folder to start from.
        names: Folder names below it, in order (none: the root's own descriptor).
        path: What is reached through them, for error messages.

    Raises:
        FolderChanged: A folder on the way is a symbolic link or not a folder.
        ArchiveError: The root or a folder on the way is missing or cannot be opened.
    """
    try:
        fd = os.open(root, ROOT_FLAGS)
    except OSError as exc:
        raise ArchiveError(f"cannot open the store: {exc.strerror}", path=root) from exc
    try:
        for name in names:
            parent = fd
            try:
                fd = os.open(name, FOLDER_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FolderChanged(
                f"its folder {name!r} is a symbolic link or no folder now; nothing was changed", path=path
            ) from exc
        raise ArchiveError(f"cannot open its folder {name!r}: {exc.strerror}", path=path) from exc
    return fd
