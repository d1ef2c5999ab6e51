"""The one rooted exception tree of sync.

Every error the product raises on purpose is a ``SyncError``. Foreign errors (zipfile, tomllib, OSError,
wasmtime traps, Redis) are translated once, at the edge where they happen, and chained with
``raise ... from exc``. Each class carries data (path, entry, generation, errno, code), not just a message,
so that the CLI, mountd and the workers can map it to an exit code, an HTTP status or a retry decision.

The guest, sandbox and broker branches live here too so that the tree has one root that ``mountd`` and
``syncctl`` can catch without importing ``workers`` or ``broker``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where a process's open descriptors are named (``sync_format.beneath`` names pinned files through them).
PROC_FD = "/proc/self/fd"


def display_path(path: str | os.PathLike[str]) -> str:
    """A path for messages and logs: one named through an open folder's descriptor (``sync_format.beneath``)
    as the folder's real path (where it is now), any other unchanged."""
    text = os.fspath(path)
    if not text.startswith(f"{PROC_FD}/"):
        return text
    folder, _, name = text.rpartition("/")
    try:
        return os.path.join(os.readlink(folder), name)
    except OSError:
        return text


class SyncError(Exception):
    """Root of every error sync raises on purpose.

    Attributes:
        code: A stable, machine-readable name for the error (used by ``--json`` output and job status).
    """

    code = "sync_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArchiveError(SyncError):
    """An archive cannot be read, written or trusted.

    Attributes:
        path: The archive's path, when known.
    """

    code = "archive_error"

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{display_path(self.path)}: {message}" if self.path is not None else message)
        self.reason = message

    def at(self, path: str | os.PathLike[str]) -> ArchiveError:
        """Attach the archive path to an error raised where it was not known.

        Args:
            path: The archive the error concerns.

        Returns:
            This error (for ``raise exc.at(path) from ...``); a path already set is kept.
        """
        if self.path is None:
            self.path = Path(path)
            self.message = f"{display_path(self.path)}: {self.reason}"
            self.args = (self.message,)
        return self


class MalformedArchive(ArchiveError):
    """Raised when the bytes are not a valid ``.sync`` ZIP (bad records, overlaps, compression, limits).

    Attributes:
        offset: File offset of the offending record, when known.
    """

    code = "malformed_archive"

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.offset = offset


class CommitLockBusy(ArchiveError):
    """Raised by ``commit_payload`` when its folder's commit lock stayed taken for ``COMMIT_LOCK_WAIT``
    seconds (a commit holds it for milliseconds: anything longer is another process keeping it). Nothing was
    changed; the commit may be tried again later."""

    code = "commit_lock_busy"


class FolderChanged(ArchiveError):
    """A folder on the way to an archive is a symbolic link or no folder now: it was replaced since the
    request or job found it (``sync_format.beneath``); nothing was changed."""

    code = "folder_changed"


class MissingEntry(ArchiveError):
    """Raised when a required entry (``manifest.toml``, ``payload``) is absent.

    Attributes:
        entry: The name of the missing entry.
    """

    code = "missing_entry"

    def __init__(self, entry: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"missing entry {entry!r}", path=path)
        self.entry = entry


class ManifestError(ArchiveError):
    """Raised when ``manifest.toml`` is not valid UTF-8 TOML or breaks the schema of spec §2.

    Attributes:
        field: Dotted name of the offending field (``policy.ttl``), or None for document-level errors.
    """

    code = "manifest_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message, path=path)
        self.field = field


class SignatureError(ArchiveError):
    """Raised when a signature cannot be checked at all (hard errors of spec §3.2/§3.3).

    A signature that is well-formed but does not match is not an exception: verification returns a
    result with ``valid=False``. This class is for unsupported algorithms, undecodable keys and values.

    Attributes:
        kind: ``unsupported_algorithm``, ``invalid_public_key``, ``invalid_signature`` or
            ``invalid_key_file``.
    """

    code = "signature_error"

    def __init__(self, kind: str, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message, path=path)
        self.kind = kind


class SwapConflict(SyncError):
    """Raised by ``commit_payload`` when the archive's generation is no longer the one expected.

    Attributes:
        path: The archive.
        expected_generation: The generation the committer based its payload on.
        actual_generation: The generation found under the lock.
    """

    code = "swap_conflict"

    def __init__(
        self, path: str | os.PathLike[str], expected_generation: int, actual_generation: int
    ) -> None:
        self.path = Path(path)
        self.expected_generation = expected_generation
        self.actual_generation = actual_generation
        moved = f"generation moved from {expected_generation} to {actual_generation}"
        super().__init__(f"{display_path(self.path)}: {moved}")


class GuestError(SyncError):
    """A guest module failed or was stopped. Subclasses name the budget or rule that ended it.

    Attributes:
        archive: The archive whose guest ran, when known.
    """

    code = "guest_error"

    def __init__(self, message: str, *, archive: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.archive = None if archive is None else Path(archive)


class GuestTrap(GuestError):
    """Raised when the guest trapped (unreachable, out-of-bounds access, stack overflow, bad module).

    Attributes:
        trap_code: wasmtime's trap code name, or None when the module failed before running.
    """

    code = "guest_trap"

    def __init__(
        self,
        message: str,
        *,
        trap_code: str | None = None,
        archive: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(message, archive=archive)
        self.trap_code = trap_code


class GuestOutOfFuel(GuestError):
    """Raised when the guest used up its fuel budget."""

    code = "guest_out_of_fuel"


class GuestTimeout(GuestError):
    """Raised when the guest ran past its wall-clock deadline (the parent killed its sandboxed child).

    Attributes:
        seconds: The deadline that was exceeded.
    """

    code = "guest_timeout"

    def __init__(
        self, message: str, *, seconds: float, archive: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(message, archive=archive)
        self.seconds = seconds


class ModuleTooLarge(GuestError):
    """Raised when ``sync.wasm`` is larger than the worker compiles (it is refused before compiling)."""

    code = "module_too_large"


class CompileTimeout(GuestError):
    """Raised when compiling ``sync.wasm`` took longer than the worker's compile budget (it was stopped)."""

    code = "compile_timeout"


class PolicyDenied(GuestError):
    """Raised when a guest or a caller asked for something its manifest or role does not allow.

    Attributes:
        rule: The rule that refused (``allow_hosts``, ``role``, ``write_allowed``...).
    """

    code = "policy_denied"

    def __init__(self, message: str, *, rule: str, archive: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message, archive=archive)
        self.rule = rule


class SandboxUnavailable(SyncError):
    """Raised in strict mode when a required confinement layer cannot be applied.

    Attributes:
        layer: The missing layer (``landlock``, ``seccomp``, ``netns``...).
        errno: The OS error number that made it unavailable, when there is one.
    """

    code = "sandbox_unavailable"

    def __init__(self, layer: str, message: str, *, errno: int | None = None) -> None:
        super().__init__(f"{layer}: {message}")
        self.layer = layer
        self.errno = errno


class BrokerUnavailable(SyncError):
    """Raised when the broker (Redis or the embedded transport) cannot be reached.

    Attributes:
        url: The broker URL with any password removed.
    """

    code = "broker_unavailable"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
