"""wsgidav resources over a store: archives as files (their payloads), store directories as collections.

``ArchiveResource`` is what a request for one archive gets: it opens the archive once, in ``__init__``, and
answers length, type, ETag, dates, our live properties and the content from that one snapshot
(CONTRIBUTING.md). Its content is the snapshot's ``PayloadReader``: seekable (Range), bounded to the payload,
and reading the inode that was opened, so a swap during a download never mixes old and new bytes.

``StoreCollection`` lists a directory through the ``ArchiveIndex``; its archive members are
``IndexedArchiveResource`` objects answering from cached facts, so a PROPFIND never opens every archive
(rule 11). Nested folders are collections of the same kind; ``SingleArchiveCollection`` is the root of
single-archive mode, listing just that archive.

The read answers live in bases that say nothing about writes (``OpenedArchive``, ``ListedArchiveFile``,
``Folder``); the read-only resources add ``RefuseWrites`` to them, and the writable store
(``mountd.writable``) adds its own write methods to the same bases, so neither undoes the other.

Invariants:
    * Read-only: every write method (PUT, DELETE, MKCOL, MOVE, COPY, PROPPATCH, lock-null creation) answers
      403. LOCK/UNLOCK work on existing resources (wsgidav's lock manager), as the reference's fake locks do,
      because macOS and Windows clients lock before they read.
    * The ETag is always strong (see ``mountd.dav.facts.derive_etag``) and Range is supported.
    * A snapshot is closed by ``close`` (the provider registers it with the request scope); the reader
      ``get_content`` returns owns its own fd and is closed by wsgidav when the response ends.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.dav_error import HTTP_INTERNAL_ERROR, HTTP_NOT_FOUND, DAVError  # type: ignore[import-untyped]
from wsgidav.dav_provider import DAVCollection, DAVNonCollection  # type: ignore[import-untyped]

from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import ArchiveIndex, DirectoryListing, ListedArchive
from mountd.dav.integrity import VERDICTS
from mountd.errors import dav_error, read_only
from mountd.http.sendfile import offer_payload
from sync_format import ArchiveError, ArchiveSnapshot, PayloadReader, open_archive

log = logging.getLogger(__name__)

#: XML namespace of our live properties.
SYNC_NAMESPACE = "urn:sync"
#: ``policy.ttl`` in seconds.
PROP_TTL = "{urn:sync}ttl"
#: When the payload stops being fresh (RFC 3339), or ``never``.
PROP_EXPIRES_AT = "{urn:sync}expires-at"
#: ``true`` when the payload is stale now.
PROP_EXPIRED = "{urn:sync}expired"
#: Number of committed swaps.
PROP_GENERATION = "{urn:sync}generation"
#: When the payload was last committed (RFC 3339); absent before the first refresh.
PROP_LAST_REFRESH = "{urn:sync}last-refresh"
#: ``verified``, ``corrupt`` or ``unverified``: the payload against its CRC-32 (``mountd.dav.integrity``).
PROP_INTEGRITY = "{urn:sync}integrity"

SYNC_PROPERTIES = (
    PROP_TTL,
    PROP_EXPIRES_AT,
    PROP_EXPIRED,
    PROP_GENERATION,
    PROP_LAST_REFRESH,
    PROP_INTEGRITY,
)


def sync_properties(facts: ArchiveFacts) -> dict[str, str]:
    """Our live properties of one archive version, by Clark name; absent ones are left out.

    Args:
        facts: The archive's facts.

    Returns:
        Property name → text value.
    """
    props = {
        PROP_TTL: str(facts.ttl),
        PROP_EXPIRED: "true" if facts.is_expired() else "false",
        PROP_GENERATION: str(facts.generation),
    }
    if facts.expiry.never:
        props[PROP_EXPIRES_AT] = "never"
    else:
        at = facts.expiry.at_text()
        if at is not None:
            props[PROP_EXPIRES_AT] = at
    if facts.updated_at is not None:
        props[PROP_LAST_REFRESH] = facts.updated_at
    props[PROP_INTEGRITY] = VERDICTS.state(facts)
    return props


class RefuseWrites:
    """Every write method of a wsgidav resource refuses with 403 (read-only serving).

    The provider does not declare itself read-only (wsgidav would then answer 405 and refuse LOCK too,
    which macOS and Windows clients need), so writes reach the resources and are refused here, with the 403
    the reference's read-only mount answers for write opens (spec §8.2).
    """

    environ: dict[str, Any]  # (the wsgidav resource's it is combined with)

    def handle_delete(self) -> bool:
        raise read_only("DELETE")

    def delete(self) -> None:
        raise read_only("DELETE")

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        raise read_only("COPY")

    def handle_move(self, dest_path: str) -> bool:
        raise read_only("MOVE")

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        raise read_only("MOVE" if is_move else "COPY")

    def move_recursive(self, dest_path: str) -> None:
        raise read_only("MOVE")

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        raise read_only("PROPPATCH")

    def remove_all_properties(self, *, recursive: bool) -> None:
        raise read_only("PROPPATCH")

    def begin_write(self, *, content_type: str | None = None) -> Any:
        raise read_only("PUT")

    def set_last_modified(self, dest_path: str, time_stamp: float, *, dry_run: bool) -> bool:
        raise read_only("PROPPATCH")

    def create_empty_resource(self, name: str) -> Any:
        # A PUT, or a LOCK of a name nothing is listed under (which would create an empty file).
        raise read_only(str(self.environ.get("REQUEST_METHOD") or "PUT"))

    def create_collection(self, name: str) -> None:
        raise read_only("MKCOL")


class ArchiveFile(DAVNonCollection):  # type: ignore[misc]  # wsgidav is untyped
    """An archive shown as its payload: every answer comes from ``self.facts`` (writes: see subclasses)."""

    facts: ArchiveFacts

    def get_content_length(self) -> int:
        return self.facts.payload_size

    def get_content_type(self) -> str:
        return self.facts.content_type

    def get_etag(self) -> str:
        return self.facts.etag

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_last_modified(self) -> float:
        return self.facts.last_modified

    def get_creation_date(self) -> None:
        return None

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = super().get_property_names(is_allprop=is_allprop)
        names.extend(sync_properties(self.facts))
        return names

    def get_property_value(self, name: str) -> Any:
        if name in SYNC_PROPERTIES:
            value = sync_properties(self.facts).get(name)
            if value is None:
                raise DAVError(HTTP_NOT_FOUND)
            return value
        if name == "{DAV:}getetag":
            # RFC 4918 §15.6: the property holds the entity-tag as the ETag header sends it, quotes
            # included; wsgidav's default leaves them out.
            return f'"{self.facts.etag}"'
        return super().get_property_value(name)


class OpenedArchive(ArchiveFile):
    """One archive, opened once for one request.

    Args:
        path: The request path (its last segment is the display name).
        environ: The WSGI environ.
        archive: The archive file.
        key: The archive's key (its path inside the store), for messages and refresh requests.
        follow_symlinks: Whether a symlink as the archive's name is followed (only the operator's single
            archive: names in the store are never served through a symlink).

    Raises:
        ArchiveError: The archive cannot be opened or is not valid (the provider translates it).
    """

    def __init__(
        self, path: str, environ: dict[str, Any], archive: Path, key: str, *, follow_symlinks: bool = False
    ) -> None:
        super().__init__(path, environ)
        self.archive = archive
        self.key = key
        self.snapshot: ArchiveSnapshot = open_archive(archive, follow_symlinks=follow_symlinks)
        self.facts = ArchiveFacts.from_snapshot(self.snapshot)

    def get_content(self) -> PayloadReader:
        reader = self.snapshot.open_payload()
        if VERDICTS.is_corrupt(self.key, self.facts, reader):  # mountd.dav.integrity: never served as good
            reader.close()
            raise DAVError(HTTP_INTERNAL_ERROR, f"the payload of {self.key} is corrupt (CRC-32 mismatch)")
        return offer_payload(self.environ, reader)

    def close(self) -> None:
        """Release the snapshot's fd (readers already handed out stay valid)."""
        self.snapshot.close()


class ListedArchiveFile(ArchiveFile):
    """An archive as a listing shows it: answers from the index's facts without opening the file.

    Args:
        path: The member's request path.
        environ: The WSGI environ.
        listed: The index's record.
        key: The archive's key.
    """

    def __init__(self, path: str, environ: dict[str, Any], listed: ListedArchive, key: str) -> None:
        super().__init__(path, environ)
        self.archive = listed.path
        self.key = key
        self.facts = listed.facts

    def get_content(self) -> PayloadReader:
        # wsgidav asks listed members for properties only; a GET resolves its path to an ArchiveResource.
        # Should some client code still ask, serve the archive as it is now.
        try:
            with open_archive(self.archive, follow_symlinks=False) as snapshot:
                return snapshot.open_payload()
        except ArchiveError as exc:
            raise dav_error(exc, self.key) from exc


class Folder(DAVCollection):  # type: ignore[misc]  # wsgidav is untyped
    """A store directory: its visible subdirectories and its readable archives by display name.

    Subclasses say what its members are (``member_folder``, ``member_archive``) and what writes do.

    Args:
        path: The request path.
        environ: The WSGI environ.
        index: The listing cache.
        directory: The directory.
        store: The store root (archive keys are relative to it).
    """

    def __init__(
        self, path: str, environ: dict[str, Any], index: ArchiveIndex, directory: Path, store: Path
    ) -> None:
        super().__init__(path, environ)
        self.index = index
        self.directory = directory
        self.store = store
        self._listing: DirectoryListing | None = None

    def listing(self) -> DirectoryListing:
        """The directory as listed for this request (scanned once per resource)."""
        if self._listing is None:
            self._listing = self.index.list_directory(self.directory, self.store)
        return self._listing

    def get_member_names(self) -> list[str]:
        listing = self.listing()
        return [*listing.folders, *listing.archives]

    def get_member_list(self) -> list[Any]:
        listing = self.listing()
        members: list[Any] = [self.member_folder(name) for name in listing.folders]
        members.extend(self.member_archive(name, listed) for name, listed in listing.archives.items())
        return members

    def member_folder(self, name: str) -> Folder:
        """The resource of a subdirectory this collection lists (each folder kind gives its own)."""
        raise NotImplementedError

    def member_archive(self, name: str, listed: ListedArchive) -> ListedArchiveFile:
        """The resource of an archive this collection lists (each folder kind gives its own)."""
        raise NotImplementedError

    def get_last_modified(self) -> float | None:
        try:
            return os.stat(self.directory).st_mtime
        except OSError:
            return None

    def _key(self, archive: Path) -> str:
        return archive.relative_to(self.store).as_posix()


class ArchiveResource(RefuseWrites, OpenedArchive):
    """An opened archive of a read-only store (``OpenedArchive``; every write answers 403)."""


class IndexedArchiveResource(RefuseWrites, ListedArchiveFile):
    """A listed archive of a read-only store (``ListedArchiveFile``; every write answers 403)."""


class StoreCollection(RefuseWrites, Folder):
    """A folder of a read-only store (``Folder``; every write answers 403)."""

    def member_folder(self, name: str) -> StoreCollection:
        return StoreCollection(
            dav_util.join_uri(self.path, name), self.environ, self.index, self.directory / name, self.store
        )

    def member_archive(self, name: str, listed: ListedArchive) -> IndexedArchiveResource:
        return IndexedArchiveResource(
            dav_util.join_uri(self.path, name), self.environ, listed, self._key(listed.path)
        )


class SingleArchiveCollection(StoreCollection):
    """The root of single-archive mode: lists just that archive, under its display name.

    Args:
        path: The request path (``/``).
        environ: The WSGI environ.
        index: The listing cache.
        archive: The one archive served.
    """

    def __init__(self, path: str, environ: dict[str, Any], index: ArchiveIndex, archive: Path) -> None:
        super().__init__(path, environ, index, archive.parent, archive.parent)
        self.archive = archive

    def listing(self) -> DirectoryListing:
        if self._listing is None:
            listed = self.index.describe(self.archive)
            archives = {} if listed is None else {listed.name: listed}
            self._listing = DirectoryListing(self.directory, (), archives)
        return self._listing
