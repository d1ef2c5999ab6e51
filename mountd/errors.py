"""The one place where sync's errors become wsgidav's ``DAVError`` (CONTRIBUTING.md).

Everything below the provider raises ``SyncError`` subclasses; the provider and the resources hand them to
``dav_error`` and raise what it returns, chained. The status says what the client can do about it:

* the archive vanished between listing and opening (``FileNotFoundError`` underneath) → 404;
* the server may not read it (``PermissionError`` underneath) → 403;
* anything else (malformed ZIP, missing entry, bad manifest, I/O error) → 500.

The message names the archive by its key (its path inside the store) and the error's code and reason,
never an absolute server path, so an error page is useful to a client without describing the host.
``read_only`` is the 403 every write method answers in read-only mode. The writable store's own refusals
are errors of this module (``UploadTooLarge``, ``IncompleteUpload``, ``WriteRefused``) and become 413, 400 and
403 here; a full disk under any write becomes 507 (Insufficient Storage, RFC 4918 §11.5).

``UsersFileError`` is mountd's own ``SyncError``: a users file (``mountd.auth.users``) that cannot be read or
breaks its format. It is raised before the server binds, so it never becomes a DAVError.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_INTERNAL_ERROR,
    HTTP_NOT_FOUND,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    DAVError,
)

from sync_format import ArchiveError, CommitLockBusy, FolderChanged, SwapConflict, SyncError


class WriteError(SyncError):
    """A write to the writable store was refused or could not be completed; nothing was changed."""

    code = "write_error"


class UploadTooLarge(WriteError):
    """Raised when a PUT body is (or is announced to be) larger than the server's upload limit.

    Attributes:
        size: Bytes announced or received so far.
        limit: The limit in bytes.
    """

    code = "upload_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the upload is larger than this server accepts ({size} > {limit} bytes)")
        self.size = size
        self.limit = limit


class IncompleteUpload(WriteError):
    """Raised when a PUT body ended before the length the client announced, or announced a bad length."""

    code = "incomplete_upload"


class WriteRefused(WriteError):
    """Raised when the client may not make this change (role, ``write_allowed``, a name the store refuses).

    Attributes:
        target: What the write was aimed at (a request path), for the message.
    """

    code = "write_refused"

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target


class UsersFileError(SyncError):
    """Raised when a users file cannot be read, parsed or written, or breaks the format of
    ``mountd.auth.users``.

    Attributes:
        path: The users file, when known.
        user: The user whose entry is wrong, when the problem is in one entry.
        line: The 1-based line of the problem, when known.
    """

    code = "users_file_error"

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        user: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.user = user
        self.line = line
        self.reason = message
        where = "" if self.path is None else str(self.path)
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        who = f"user {user!r}: " if user is not None else ""
        super().__init__(f"{where}: {who}{message}" if where else f"{who}{message}")


def dav_error(exc: SyncError, archive: str) -> DAVError:
    """Translate an error about one archive into the DAVError to raise.

    Args:
        exc: The error.
        archive: The archive's key (store-relative path) for the message.

    Returns:
        The DAVError; raise it ``from exc``.
    """
    cause = exc.__cause__
    if isinstance(exc, UploadTooLarge):
        return DAVError(HTTP_REQUEST_ENTITY_TOO_LARGE, exc.message)
    if isinstance(exc, IncompleteUpload):
        return DAVError(HTTP_BAD_REQUEST, exc.message)
    if isinstance(exc, WriteRefused):
        return DAVError(HTTP_FORBIDDEN, exc.message)
    if isinstance(exc, SwapConflict):
        return DAVError(HTTP_CONFLICT, f"archive {archive} changed while it was being written; retry")
    if isinstance(exc, FolderChanged):
        changed = f"archive {archive}: its folder was replaced (a symbolic link now); nothing was changed"
        return DAVError(HTTP_CONFLICT, changed)
    if isinstance(exc, CommitLockBusy):
        busy = f"archive {archive}: its folder is busy; nothing was changed, retry"
        return DAVError(HTTP_SERVICE_UNAVAILABLE, busy)
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return DAVError(HTTP_INSUFFICIENT_STORAGE, f"archive {archive}: no space left to store it")
    if isinstance(cause, FileNotFoundError):
        return DAVError(HTTP_NOT_FOUND, f"archive {archive} no longer exists")
    if isinstance(cause, OSError) and cause.errno == errno.ELOOP:  # a symlink now: never served
        return DAVError(HTTP_NOT_FOUND, f"archive {archive} no longer exists")
    if isinstance(cause, PermissionError):
        return DAVError(HTTP_FORBIDDEN, f"archive {archive} cannot be read by the server")
    reason = exc.reason if isinstance(exc, ArchiveError) else exc.message
    return DAVError(HTTP_INTERNAL_ERROR, f"archive {archive} cannot be served: {exc.code}: {reason}")


def read_only(what: str) -> DAVError:
    """The refusal of a write in read-only mode.

    Args:
        what: The operation, for the message (``PUT``, ``DELETE``...).

    Returns:
        A 403 DAVError.
    """
    return DAVError(HTTP_FORBIDDEN, f"{what}: this store is served read-only")
