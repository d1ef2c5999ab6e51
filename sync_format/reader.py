"""Open a ``.sync`` archive as one immutable snapshot: one fd, the manifest, the payload span and the state.

``open_archive`` does all validation up front (``zip_reader`` for the container, then the ``.sync`` rules:
``manifest.toml`` and ``payload`` present, payload STORED, manifest parsed, ``state.json`` decoded and checked
against the payload's size and CRC). After that every answer comes from the snapshot without re-reading
the directory: a consumer that holds a snapshot keeps seeing the inode it opened, even after a swap
replaced the file. ``sync.wasm`` may be missing (no update logic), unlike in the reference (spec §1.1).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from sync_format.errors import ArchiveError, MalformedArchive, MissingEntry
from sync_format.freshness import Expiry, expiry
from sync_format.manifest import Manifest
from sync_format.media import check_served_fields
from sync_format.payload_io import PayloadDigest, PayloadReader, digest_stream
from sync_format.state import MAX_STATE_SIZE, STATE_ENTRY, ArchiveState
from sync_format.zip_reader import (
    FLAG_ENCRYPTED,
    METHOD_STORED,
    EntryInfo,
    ZipDirectory,
    read_directory_windows,
    read_entry_data,
)

MANIFEST_ENTRY = "manifest.toml"
PAYLOAD_ENTRY = "payload"
WASM_ENTRY = "sync.wasm"
CONTEXT_ENTRY = "context.json"
PROOF_ENTRY = "sync.proof"

#: Largest manifest accepted, in bytes (the reference's are under 2 KiB).
MAX_MANIFEST_SIZE = 1024 * 1024
#: Largest context.json accepted, in bytes.
MAX_CONTEXT_SIZE = 1024 * 1024
#: Largest sync.wasm accepted, in bytes.
MAX_WASM_SIZE = 64 * 1024 * 1024
#: Largest sync.proof accepted, in bytes.
MAX_PROOF_SIZE = 16 * 1024 * 1024

_ENTRY_LIMITS = {
    MANIFEST_ENTRY: MAX_MANIFEST_SIZE,
    CONTEXT_ENTRY: MAX_CONTEXT_SIZE,
    WASM_ENTRY: MAX_WASM_SIZE,
    PROOF_ENTRY: MAX_PROOF_SIZE,
    STATE_ENTRY: MAX_STATE_SIZE,
}
#: Limit for entries we do not know (kept and copied, never interpreted).
MAX_OTHER_ENTRY_SIZE = 16 * 1024 * 1024
#: Flags of every open of a file that is meant to be regular (an archive, a payload source, a signature):
#: ``O_NONBLOCK`` makes a FIFO put there open at once, to be refused as not a regular file, instead of
#: blocking until something writes to it; for a regular file it changes nothing.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> tuple[int, os.stat_result]:
    """Open a file that must be a regular file, without ever waiting on it (``OPEN_FLAGS``).

    Args:
        path: The file.
        follow_symlinks: False: a symlink as the last component is refused (``O_NOFOLLOW``).

    Returns:
        A read-only descriptor (the caller closes it) and its ``fstat``.

    Raises:
        OSError: It cannot be opened, or is not a regular file (``EINVAL``; nothing is left open).
    """
    fd = os.open(path, OPEN_FLAGS if follow_symlinks else OPEN_FLAGS | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd, st


class FileIdentity(NamedTuple):
    """What identifies one version of a file: caches key on it (docs/architecture.md).

    A named tuple: every open and every cache look-up makes or hashes one, and a frozen dataclass cost
    about 0.5 µs to make and hashed its fields in Python.

    Attributes:
        device: ``st_dev``.
        inode: ``st_ino``.
        mtime_ns: ``st_mtime_ns``.
        size: ``st_size``.
        ctime_ns: ``st_ctime_ns``: an in-place rewrite that keeps the size and puts the mtime back
            (``os.utime``) still moves it, so a cache keyed on the identity never describes such a rewrite
            with the old version's facts. A rename moves it too (on most file systems): one re-open.
    """

    device: int
    inode: int
    mtime_ns: int
    size: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        """Take the identity fields of a stat result.

        Args:
            st: ``os.stat``/``os.fstat`` result.

        Returns:
            The identity.
        """
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


class _Descriptor:
    """The snapshot's one file descriptor; closing is idempotent."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def get(self) -> int:
        if self.fd < 0:
            raise ValueError("archive snapshot is closed")
        return self.fd


@dataclass(frozen=True, eq=False)
class ArchiveSnapshot:
    """One consistent view of an archive, answered from a single open file descriptor.

    Attributes:
        source: The path the archive was opened from, as the caller gave it (``path`` is it as a ``Path``).
        identity: Device, inode, mtime and size of the opened file.
        directory: The validated ZIP directory.
        manifest: The parsed manifest.
        manifest_bytes: The manifest exactly as stored (signatures and swaps copy these bytes).
        payload: The payload entry (offset and size of its bytes).
        state: The refresh state (generation, updated_at, payload hash).
    """

    source: str | os.PathLike[str]
    identity: FileIdentity
    directory: ZipDirectory
    manifest: Manifest
    manifest_bytes: bytes
    payload: EntryInfo
    state: ArchiveState
    _fd: _Descriptor

    @cached_property
    def path(self) -> Path:
        """The path the archive was opened from (built on first use: opening needs no ``Path``)."""
        return Path(self.source)

    @property
    def payload_offset(self) -> int:
        """Absolute file offset of the first payload byte."""
        return self.payload.data_offset

    @property
    def payload_size(self) -> int:
        """Payload length in bytes."""
        return self.payload.size

    @property
    def generation(self) -> int:
        """Number of swaps committed since the archive was built."""
        return self.state.generation

    @property
    def entry_names(self) -> tuple[str, ...]:
        """Entry names in central-directory order."""
        return tuple(e.name for e in self.directory.entries)

    @property
    def has_wasm(self) -> bool:
        """True when the archive carries ``sync.wasm``."""
        return self.directory.get(WASM_ENTRY) is not None

    @property
    def has_context(self) -> bool:
        """True when the archive carries ``context.json``."""
        return self.directory.get(CONTEXT_ENTRY) is not None

    @property
    def has_proof(self) -> bool:
        """True when the archive carries ``sync.proof``."""
        return self.directory.get(PROOF_ENTRY) is not None

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._fd.fd < 0

    def fileno(self) -> int:
        """The snapshot's descriptor, to look at (where the file is, ``fstat``); the snapshot closes it.

        Raises:
            ValueError: The snapshot is closed.
        """
        return self._fd.get()

    def expiry(self) -> Expiry:
        """When this payload stops being fresh (``freshness.expiry`` of manifest and state).

        Returns:
            The expiry.
        """
        return expiry(self.manifest, self.state)

    def open_payload(self) -> PayloadReader:
        """Open a seekable, bounded reader over the payload bytes of this snapshot.

        Returns:
            A reader with its own duplicate fd; close it when done.

        Raises:
            ValueError: The snapshot is closed.
        """
        return PayloadReader(os.dup(self._fd.get()), self.payload.data_offset, self.payload.size)

    def read_payload(self) -> bytes:
        """Read the whole payload into memory and verify its CRC-32.

        Returns:
            The payload bytes.

        Raises:
            MalformedArchive: The CRC does not match (the file is damaged).
        """
        return self._read(self.payload, limit=self.payload.size)

    def digest_payload(self) -> PayloadDigest:
        """Hash the payload in one streaming pass (CRC-32 and BLAKE3) without holding it in memory.

        Returns:
            Size, CRC-32 and BLAKE3 of the payload.
        """
        with self.open_payload() as reader:
            return digest_stream(reader)

    def read_entry(self, name: str) -> bytes | None:
        """Read a non-payload entry completely, with its size limit and CRC check.

        Args:
            name: Entry name, e.g. ``sync.wasm``.

        Returns:
            The bytes, or None when the entry is absent.

        Raises:
            MalformedArchive: The entry is over its limit, does not inflate, or fails its CRC.
        """
        entry = self.directory.get(name)
        if entry is None:
            return None
        return self._read(entry, limit=_ENTRY_LIMITS.get(name, MAX_OTHER_ENTRY_SIZE))

    def read_wasm(self) -> bytes | None:
        """The guest module, or None when the archive has no update logic.

        Returns:
            ``sync.wasm`` bytes or None.
        """
        return self.read_entry(WASM_ENTRY)

    def read_context(self) -> bytes | None:
        """The raw ``context.json`` bytes, or None.

        Returns:
            The bytes or None.
        """
        return self.read_entry(CONTEXT_ENTRY)

    def _read(self, entry: EntryInfo, *, limit: int) -> bytes:
        try:
            return read_entry_data(self._fd.get(), entry, limit=limit)
        except ArchiveError as exc:
            exc.at(self.path)
            raise

    def close(self) -> None:
        """Release the file descriptor (idempotent); readers from ``open_payload`` stay usable."""
        self._fd.close()

    def __enter__(self) -> ArchiveSnapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self._fd.close()


def open_archive(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> ArchiveSnapshot:
    """Open and validate an archive.

    Args:
        path: The ``.sync`` file (any extension is accepted).
        follow_symlinks: False: a symlink as the last component is refused (``O_NOFOLLOW``), for names a
            scan found to be regular files, which anyone who may write to their folder can swap meanwhile.

    Returns:
        A snapshot holding one open file descriptor; close it (or use ``with``).

    Raises:
        ArchiveError: The file cannot be opened, or is not a valid archive: ``MalformedArchive`` for
            container problems, ``MissingEntry`` for a missing manifest or payload, ``ManifestError`` for
            manifest problems. Every error carries the path.
    """
    try:
        # (``OPEN_FLAGS``: a FIFO is refused by ``_snapshot``'s check, not waited on.)
        fd = os.open(path, OPEN_FLAGS if follow_symlinks else OPEN_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        raise ArchiveError(f"cannot open: {exc.strerror}", path=Path(path)) from exc
    return open_archive_fd(fd, path)


def open_archive_at(dir_fd: int, name: str, path: str | os.PathLike[str]) -> ArchiveSnapshot:
    """Open and validate the archive ``name`` of the folder open on ``dir_fd``, never through a symlink.

    For callers that scanned that folder through the same descriptor (a listing): the archive opened is the
    one the scan found there, wherever the folder has been renamed since and whatever took its name.

    Args:
        dir_fd: The folder, open (``O_RDONLY`` or ``O_PATH``).
        name: A name in it (no separator).
        path: Where the folder's entry is, for the snapshot and for error messages.

    Returns:
        A snapshot holding one open file descriptor.

    Raises:
        ArchiveError: As for ``open_archive(path, follow_symlinks=False)``.
    """
    try:
        fd = os.open(name, OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise ArchiveError(f"cannot open: {exc.strerror}", path=Path(path)) from exc
    return open_archive_fd(fd, path)


def open_archive_fd(fd: int, path: str | os.PathLike[str]) -> ArchiveSnapshot:
    """Validate an archive from a file descriptor the caller already opened, as ``open_archive`` does.

    For callers that open and ``fstat`` the file themselves first (mountd looks the identity up in its
    cache and parses only when it is new), so that a request still opens the archive once.

    Args:
        fd: A readable descriptor of the archive; the snapshot takes ownership of it (it is closed with
            the snapshot, or before this raises).
        path: The path it was opened from (for the snapshot and for error messages).

    Returns:
        A snapshot holding ``fd``.

    Raises:
        ArchiveError: The file is not a valid archive (as for ``open_archive``), with the path.
    """
    try:
        return _snapshot(path, fd)
    except ArchiveError as exc:
        os.close(fd)
        exc.at(Path(path))
        raise
    except BaseException:
        os.close(fd)
        raise


_new_object = object.__new__
_new_tuple = tuple.__new__  # a named tuple without its Python-level ``__new__``


def _snapshot(path: str | os.PathLike[str], fd: int) -> ArchiveSnapshot:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ArchiveError(f"cannot stat: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise MalformedArchive("not a regular file")
    directory, windows = read_directory_windows(fd, st.st_size)
    manifest_entry = payload = state_entry = None
    for entry in directory.entries:  # one pass for the three look-ups (names are unique)
        name = entry.name
        if name == MANIFEST_ENTRY:
            manifest_entry = entry
        elif name == PAYLOAD_ENTRY:
            payload = entry
        elif name == STATE_ENTRY:
            state_entry = entry
    if manifest_entry is None:
        raise MissingEntry(MANIFEST_ENTRY)
    if payload is None:
        raise MissingEntry(PAYLOAD_ENTRY)
    if payload.method != METHOD_STORED or payload.flags & FLAG_ENCRYPTED:
        raise MalformedArchive("payload must be stored (no compression)", offset=payload.header_offset)
    manifest_bytes = read_entry_data(fd, manifest_entry, limit=MAX_MANIFEST_SIZE, windows=windows)
    manifest = Manifest.from_bytes(manifest_bytes)
    # These two become a header and a file name when served (sync_format.media).
    check_served_fields(manifest.sync.content_type, manifest.sync.display_ext)
    if state_entry is None:
        state = ArchiveState()
    else:
        state_bytes = read_entry_data(fd, state_entry, limit=MAX_STATE_SIZE, windows=windows)
        state = ArchiveState.from_json(state_bytes)
        state = state.checked_against(payload.size, payload.crc32)
    # ``ArchiveSnapshot(...)`` without its frozen ``__init__`` (one ``object.__setattr__`` per field: 0.8 µs
    # of every open); the same fields, all of them.
    snapshot: ArchiveSnapshot = _new_object(ArchiveSnapshot)
    snapshot.__dict__.update(
        source=path,
        identity=_new_tuple(FileIdentity, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)),
        directory=directory,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        payload=payload,
        state=state,
        _fd=_Descriptor(fd),
    )
    return snapshot
