"""The writable store: PUT, DELETE, MKCOL, COPY, MOVE and dead properties over a directory of archives.

wsgidav drives every write through the resource objects (its contract, STYLE rule 6); these classes are the
writable twins of ``mountd.resources``. A client sees files; the store holds archives:

* ``PUT /a/report.csv`` of a new name wraps the body into ``a/report.csv.sync`` with the upload template
  (spec §8.3, ``sync_format.template``; ``ownership.write_allowed = true``); a PUT over an existing archive
  replaces its payload through ``commit_payload`` (atomic, generation + 1, manifest and update logic kept).
  Either way the body first lands in an ``UploadSink`` and only a complete body is committed: an interrupted,
  short or oversized upload leaves the old payload (or no file) behind, never a truncated one.
* MKCOL makes a real directory; DELETE removes an archive or a directory tree; COPY copies an archive's
  bytes; MOVE renames. The target of COPY/MOVE is ``store_path_for(name)`` (``report.csv`` →
  ``report.csv.sync``), and names follow the writable store's display rule (spec §8.1), so a renamed file is
  found under its new name without touching its manifest (a publisher's signature stays valid).
* macOS and Windows metadata files (``._*``, ``.DS_Store``) are accepted and discarded (``JunkResource``),
  as the reference does; any other hidden name is refused, because hidden names are never served.

Invariants:
    * Every change is checked by ``WritePolicy.require_writer`` first (the caller's role), and a payload
      overwrite also needs the archive's ``ownership.write_allowed`` (spec §6.2; the reference ignores it).
    * Files appear atomically: new archives and copies are written to a temp file in the target directory,
      fsynced and renamed into place; readers see the old archive or the new one, never a partial one.
    * After a change the provider forgets the request's resolved resources (``SyncProvider.forget``), so
      wsgidav's follow-up lookups in the same request (properties, ETag) see the new state.
    * Dead properties and locks follow the resource: copied or moved with it, removed with it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_FORBIDDEN,
    HTTP_METHOD_NOT_ALLOWED,
    DAVError,
    PRECONDITION_CODE_ProtectedProperty,
)
from wsgidav.dav_provider import DAVNonCollection  # type: ignore[import-untyped]

# The base of both resource kinds; its default write methods are what the read-only mixin overrides.
from wsgidav.dav_provider import _DAVResource as DAVResource

from mountd import auth
from mountd.errors import IncompleteUpload, WriteRefused, dav_error
from mountd.facts import ArchiveFacts
from mountd.index import ListedArchive
from mountd.resources import (
    SYNC_PROPERTIES,
    ArchiveResource,
    IndexedArchiveResource,
    StoreCollection,
)
from mountd.uploads import UploadSink, declared_length
from sync_format import ArchiveError, SwapConflict, SyncBuilder, SyncError, open_archive
from sync_format.atomic import atomic_write
from sync_format.store import check_store_name, store_path_for
from sync_format.swap import commit_payload
from sync_format.template import DEFAULT_CREATED_BY, extension_of, template_manifest

if TYPE_CHECKING:
    from mountd.provider import SyncProvider

log = logging.getLogger(__name__)

#: Largest upload accepted by default (bytes): 16 GiB; ``--max-upload`` changes it.
DEFAULT_MAX_UPLOAD = 16 * 1024**3
#: Times a PUT retries its commit when a refresh committed in between (the upload replaces whatever is there).
COMMIT_ATTEMPTS = 3
#: Bytes per read when copying an archive.
COPY_BLOCK = 1024 * 1024
#: Exact metadata names macOS leaves on every share.
JUNK_NAMES = frozenset({".DS_Store"})
#: Prefix of macOS AppleDouble companions (``._report.csv``).
JUNK_PREFIX = "._"
#: Request headers that make a PUT conditional on the version it saw: then a concurrent commit is a 412.
CONDITIONAL_HEADERS = ("HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF")


def is_junk_name(name: str) -> bool:
    """Tell whether a file name is OS metadata that a writable store accepts and discards.

    Args:
        name: The last segment of a request path.

    Returns:
        True for ``.DS_Store`` and ``._*``.
    """
    return name in JUNK_NAMES or name.startswith(JUNK_PREFIX)


@dataclass(frozen=True)
class WritePolicy:
    """What a writable server allows.

    Attributes:
        root: The store directory.
        max_upload: Largest PUT body in bytes.
        may_write: Whether the request's caller may change the store: by default their role
            (``mountd.auth.may_write``: owners may, consumers may not).
        created_by: ``meta.created_by`` of archives made from uploads.
    """

    root: Path
    max_upload: int = DEFAULT_MAX_UPLOAD
    may_write: Callable[[dict[str, Any]], bool] = auth.may_write
    created_by: str = DEFAULT_CREATED_BY

    def require_writer(self, environ: dict[str, Any], what: str) -> None:
        """Refuse the request unless its caller may write.

        Args:
            environ: The WSGI environ.
            what: The operation, for the message.

        Raises:
            DAVError: 403.
        """
        if not self.may_write(environ):
            raise dav_error(WriteRefused(what, "your role may read this store but not change it"), what)

    def archive_for(self, path: str) -> Path:
        """The archive file a request path names when it is created (``/a/x.csv`` → ``<root>/a/x.csv.sync``).

        Args:
            path: A request path of a file.

        Returns:
            The archive path.

        Raises:
            DAVError: 403 for names the store cannot hold (hidden, invalid).
        """
        relative = self._relative(path)
        return store_path_for(self.root, relative.as_posix())

    def folder_for(self, path: str) -> Path:
        """The directory a collection's request path names.

        Args:
            path: A request path of a collection.

        Returns:
            The directory.

        Raises:
            DAVError: 403 for names the store cannot hold.
        """
        relative = self._relative(path)
        return self.root.joinpath(*relative.parts)

    def _relative(self, path: str) -> PurePosixPath:
        text = path.strip("/")
        try:
            relative = check_store_name(text)
        except ArchiveError as exc:
            raise dav_error(WriteRefused(path, exc.reason), path) from exc
        if any(part.startswith(".") for part in relative.parts):
            raise dav_error(WriteRefused(path, "hidden names are not stored"), path)
        return relative


def carry_properties(
    provider: SyncProvider, source: Any, dest_path: str, *, is_move: bool, with_children: bool
) -> None:
    """Copy or move a resource's dead properties to where it now lives (after the copy or move).

    Args:
        provider: The provider (its property manager; it resolves the destination).
        source: The resource copied or moved.
        dest_path: The destination's request path.
        is_move: Move (the source's properties go) rather than copy.
        with_children: Also the properties of everything below (a folder moved as a whole).
    """
    manager = provider.prop_manager
    if manager is None:
        return
    destination = provider.get_resource_inst(dest_path, source.environ)
    if destination is None:
        return
    if is_move:
        manager.move_properties(
            source.get_ref_url(),
            destination.get_ref_url(),
            with_children=with_children,
            environ=source.environ,
        )
    else:
        manager.copy_properties(source.get_ref_url(), destination.get_ref_url(), source.environ)


class _DavSink:
    """The file object wsgidav writes a PUT body into: an ``UploadSink`` speaking DAVError."""

    def __init__(self, sink: UploadSink, key: str) -> None:
        self.sink = sink
        self.key = key

    def write(self, data: bytes) -> int:
        try:
            return self.sink.write(data)
        except SyncError as exc:
            raise dav_error(exc, self.key) from exc

    def writelines(self, blocks: Iterable[bytes]) -> None:
        stream = iter(blocks)
        while True:
            try:
                block = next(stream, None)
            except (ValueError, OSError) as exc:
                # cheroot raises ValueError on a malformed or cut-off chunked body, OSError on a socket
                # timeout or reset: the body is incomplete.
                raise dav_error(
                    IncompleteUpload(f"the request body could not be read: {exc}"), self.key
                ) from exc
            if block is None:
                return
            self.write(block)

    def close(self) -> None:
        try:
            self.sink.close()
        except SyncError as exc:
            raise dav_error(exc, self.key) from exc


def _open_sink(policy: WritePolicy, environ: dict[str, Any], target: Path, key: str) -> _DavSink:
    try:
        return _DavSink(UploadSink(target, policy.max_upload, declared_length(environ)), key)
    except SyncError as exc:
        raise dav_error(exc, key) from exc


def _finish(sink: _DavSink | None, key: str) -> Path:
    assert sink is not None, "end_write without begin_write"
    try:
        return sink.sink.finish()
    except SyncError as exc:
        raise dav_error(exc, key) from exc


def _copy_file(source: Path, target: Path, key: str) -> None:
    """Copy an archive's bytes to ``target`` atomically (temp, fsync, rename)."""
    try:
        with open(source, "rb") as src, atomic_write(target) as dst:
            shutil.copyfileobj(src, dst, COPY_BLOCK)
    except OSError as exc:
        raise dav_error(ArchiveError(f"cannot copy: {exc.strerror}", path=source), key) from exc
    except SyncError as exc:
        raise dav_error(exc, key) from exc


class _WritableArchive:
    """Write methods shared by an opened archive and one a listing shows (wsgidav deletes and copies those).

    Needs ``archive`` (its file), ``key``, ``facts``, ``policy`` and ``provider`` from the class it is mixed
    into; placed first in the MRO so that it overrides the read-only refusals.
    """

    archive: Path
    key: str
    facts: ArchiveFacts
    policy: WritePolicy
    provider: SyncProvider
    environ: dict[str, Any]
    path: str

    def handle_delete(self) -> bool:
        return False  # wsgidav checks locks, then calls delete()

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        return False

    def handle_move(self, dest_path: str) -> bool:
        return False

    def delete(self) -> None:
        self.policy.require_writer(self.environ, "DELETE")
        try:
            self.archive.unlink()
        except FileNotFoundError:
            pass  # already gone: the outcome the client asked for
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot delete: {exc.strerror}", path=self.archive), self.key
            ) from exc
        DAVResource.remove_all_properties(self, recursive=True)
        DAVResource.remove_all_locks(self, recursive=True)
        self.provider.forget(self.environ)
        log.info("archive deleted archive=%s", self.key)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        self.policy.require_writer(self.environ, "MOVE" if is_move else "COPY")
        target = self.policy.archive_for(dest_path)
        if is_move:
            self._rename(target)
        else:
            _copy_file(self.archive, target, self.key)
            self.provider.forget(self.environ)
        self._carry_properties(dest_path, is_move=is_move)
        log.info("archive %s archive=%s to=%s", "moved" if is_move else "copied", self.key, target.name)

    def support_recursive_move(self, dest_path: str) -> bool:
        return True

    def move_recursive(self, dest_path: str) -> None:
        self.copy_move_single(dest_path, is_move=True)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        if name in SYNC_PROPERTIES:
            raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)
        self.policy.require_writer(self.environ, "PROPPATCH")
        DAVResource.set_property_value(self, name, value, dry_run=dry_run)

    def remove_all_properties(self, *, recursive: bool) -> None:
        DAVResource.remove_all_properties(self, recursive=recursive)

    def set_last_modified(self, dest_path: str, time_stamp: float, *, dry_run: bool) -> bool:
        return False  # the payload's time is its commit time, not something a client sets

    def _rename(self, target: Path) -> None:
        try:
            os.rename(self.archive, target)
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot move: {exc.strerror}", path=self.archive), self.key
            ) from exc
        self.provider.forget(self.environ)

    def _carry_properties(self, dest_path: str, *, is_move: bool) -> None:
        carry_properties(self.provider, self, dest_path, is_move=is_move, with_children=False)


class WritableArchiveResource(_WritableArchive, ArchiveResource):
    """An opened archive that also takes PUT (payload overwrite), DELETE, COPY, MOVE and PROPPATCH.

    Args:
        path: The request path.
        environ: The WSGI environ.
        archive: The archive file.
        key: Its key in the store.
        provider: The provider (for forgetting resolved resources and the property manager).
        policy: What writes are allowed.
    """

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        archive: Path,
        key: str,
        provider: SyncProvider,
        policy: WritePolicy,
    ) -> None:
        super().__init__(path, environ, archive, key)
        self.provider = provider
        self.policy = policy
        self._sink: _DavSink | None = None

    def begin_write(self, *, content_type: str | None = None) -> _DavSink:
        self.policy.require_writer(self.environ, "PUT")
        if not self.snapshot.manifest.ownership.write_allowed:
            refusal = WriteRefused(self.path, "this archive does not allow writes (ownership.write_allowed)")
            raise dav_error(refusal, self.key)
        self._sink = _open_sink(self.policy, self.environ, self.archive, self.key)
        return self._sink

    def end_write(self, *, with_errors: bool) -> None:
        sink, self._sink = self._sink, None
        if with_errors:
            if sink is not None:
                sink.sink.discard()
            log.info("upload discarded archive=%s", self.key)
            return
        try:
            body = _finish(sink, self.key)
            self._commit(body)
        finally:
            if sink is not None:
                sink.sink.discard()

    def _commit(self, body: Path) -> None:
        expected = self.facts.generation
        conditional = any(self.environ.get(header) for header in CONDITIONAL_HEADERS)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                commit_payload(self.archive, expected, body, max_payload_size=self.policy.max_upload)
                break
            except SwapConflict as exc:
                # A refresh (or another upload) committed since this request opened the archive. A plain PUT
                # replaces whatever is there; one that was conditional on the version it saw must fail.
                if conditional or attempt == COMMIT_ATTEMPTS or exc.actual_generation is None:
                    raise dav_error(exc, self.key) from exc
                expected = exc.actual_generation
            except SyncError as exc:
                raise dav_error(exc, self.key) from exc
        self._reload()

    def _reload(self) -> None:
        try:
            snapshot = open_archive(self.archive)
        except ArchiveError as exc:
            raise dav_error(exc, self.key) from exc
        self.snapshot.close()
        self.snapshot = snapshot
        self.facts = ArchiveFacts.from_snapshot(snapshot)
        self.provider.index.learn(self.facts)
        self.provider.forget(self.environ)
        log.info(
            "payload uploaded archive=%s generation=%d size=%d",
            self.key,
            self.facts.generation,
            self.facts.payload_size,
        )


class ListedWritableArchive(_WritableArchive, IndexedArchiveResource):
    """An archive as a writable listing shows it (wsgidav deletes, copies and moves members through these).

    Args:
        path: The member's request path.
        environ: The WSGI environ.
        listed: The index's record.
        key: Its key in the store.
        provider: The provider.
        policy: What writes are allowed.
    """

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        listed: ListedArchive,
        key: str,
        provider: SyncProvider,
        policy: WritePolicy,
    ) -> None:
        super().__init__(path, environ, listed, key)
        self.provider = provider
        self.policy = policy


class PendingArchive(DAVNonCollection):  # type: ignore[misc]  # wsgidav is untyped
    """A file being created by a PUT: nothing is on disk until its body is complete.

    Args:
        path: The request path.
        environ: The WSGI environ.
        target: The archive file it will become.
        provider: The provider.
        policy: What writes are allowed.
    """

    def __init__(
        self, path: str, environ: dict[str, Any], target: Path, provider: SyncProvider, policy: WritePolicy
    ) -> None:
        super().__init__(path, environ)
        self.target = target
        self.key = target.relative_to(policy.root).as_posix()
        self.provider = provider
        self.policy = policy
        self.facts: ArchiveFacts | None = None
        self._sink: _DavSink | None = None

    def get_content_length(self) -> int:
        return 0 if self.facts is None else self.facts.payload_size

    def get_content_type(self) -> str:
        return "application/octet-stream" if self.facts is None else self.facts.content_type

    def get_etag(self) -> str | None:
        return None if self.facts is None else self.facts.etag

    def support_etag(self) -> bool:
        return self.facts is not None

    def get_last_modified(self) -> float | None:
        return None if self.facts is None else self.facts.last_modified

    def get_content(self) -> BytesIO:
        return BytesIO(b"")

    def begin_write(self, *, content_type: str | None = None) -> _DavSink:
        self.policy.require_writer(self.environ, "PUT")
        self._sink = _open_sink(self.policy, self.environ, self.target, self.key)
        return self._sink

    def end_write(self, *, with_errors: bool) -> None:
        sink, self._sink = self._sink, None
        if with_errors:
            if sink is not None:
                sink.sink.discard()
            log.info("upload discarded archive=%s", self.key)
            return
        try:
            body = _finish(sink, self.key)
            self.facts = create_archive(self.policy, self.target, self.key, body)
        finally:
            if sink is not None:
                sink.sink.discard()
        self.provider.index.learn(self.facts)
        self.provider.forget(self.environ)
        log.info("archive created archive=%s size=%d", self.key, self.facts.payload_size)


def create_archive(policy: WritePolicy, target: Path, key: str, body: Path | None) -> ArchiveFacts:
    """Wrap a file (or nothing) into a new archive with the upload template, atomically.

    Args:
        policy: The store's policy (template values).
        target: The archive to write.
        key: Its key, for messages.
        body: The payload file; None for an empty payload (a LOCK on an unmapped name).

    Returns:
        The new archive's facts.

    Raises:
        DAVError: It could not be written (507 when the disk is full).
    """
    manifest = template_manifest(
        display_ext=extension_of(target.name), created_by=policy.created_by, write_allowed=True
    )
    builder = SyncBuilder().with_manifest(manifest)
    builder = builder.with_payload_bytes(b"") if body is None else builder.with_payload_file(body)
    try:
        builder.write_to(target, max_payload_size=policy.max_upload)
        with open_archive(target) as snapshot:
            return ArchiveFacts.from_snapshot(snapshot)
    except SyncError as exc:
        raise dav_error(exc, key) from exc


class JunkResource(DAVNonCollection):  # type: ignore[misc]  # wsgidav is untyped
    """``._*`` and ``.DS_Store``: writes are accepted and discarded, reads are empty (as the reference does).

    Args:
        path: The request path.
        environ: The WSGI environ.
    """

    def get_content_length(self) -> int:
        return 0

    def get_content_type(self) -> str:
        return "application/octet-stream"

    def get_etag(self) -> None:
        return None

    def support_etag(self) -> bool:
        return False

    def get_last_modified(self) -> None:
        return None

    def get_content(self) -> BytesIO:
        return BytesIO(b"")

    def begin_write(self, *, content_type: str | None = None) -> _Discard:
        return _Discard()

    def delete(self) -> None:
        return None

    def handle_delete(self) -> bool:
        return True

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        return True

    def handle_move(self, dest_path: str) -> bool:
        return True

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        return None


class _Discard:
    """A sink that drops what it is given."""

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        return None


class WritableCollection(StoreCollection):
    """A store directory that also takes PUT of new files, MKCOL, DELETE, COPY, MOVE and PROPPATCH.

    Args:
        path: The request path.
        environ: The WSGI environ.
        provider: The provider.
        directory: The directory.
        policy: What writes are allowed.
    """

    def __init__(
        self, path: str, environ: dict[str, Any], provider: SyncProvider, directory: Path, policy: WritePolicy
    ) -> None:
        super().__init__(path, environ, provider.index, directory, policy.root)
        self.provider = provider
        self.policy = policy

    def member_folder(self, name: str) -> StoreCollection:
        return WritableCollection(
            dav_util.join_uri(self.path, name),
            self.environ,
            self.provider,
            self.directory / name,
            self.policy,
        )

    def member_archive(self, name: str, listed: ListedArchive) -> IndexedArchiveResource:
        path = dav_util.join_uri(self.path, name)
        return ListedWritableArchive(
            path, self.environ, listed, self._key(listed.path), self.provider, self.policy
        )

    def handle_delete(self) -> bool:
        return False

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        return False

    def handle_move(self, dest_path: str) -> bool:
        return False

    def create_empty_resource(self, name: str) -> Any:
        path = dav_util.join_uri(self.path, name)
        if is_junk_name(name):
            return JunkResource(path, self.environ)
        self.policy.require_writer(self.environ, "PUT")
        target = self.policy.archive_for(path)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            # Nothing is created until the body is complete; see PendingArchive.
            return PendingArchive(path, self.environ, target, self.provider, self.policy)
        # LOCK on an unmapped name (RFC 4918 §9.10.4): an empty file must exist from now on.
        facts = create_archive(self.policy, target, self.policy.archive_for(path).name, None)
        self.provider.index.learn(facts)
        self.provider.forget(self.environ)
        return self.provider.get_resource_inst(path, self.environ)

    def create_collection(self, name: str) -> None:
        self.policy.require_writer(self.environ, "MKCOL")
        directory = self.policy.folder_for(dav_util.join_uri(self.path, name))
        try:
            directory.mkdir()
        except FileExistsError as exc:
            raise DAVError(HTTP_METHOD_NOT_ALLOWED, "a resource of that name exists") from exc
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot create folder: {exc.strerror}", path=directory), name
            ) from exc
        self.provider.forget(self.environ)
        log.info("folder created folder=%s", directory.relative_to(self.policy.root).as_posix())

    def delete(self) -> None:
        self.policy.require_writer(self.environ, "DELETE")
        if self.directory == self.policy.root:
            raise DAVError(HTTP_FORBIDDEN, "the store's root cannot be deleted")
        # wsgidav has deleted the members it lists; what is left are hidden files (OS metadata, in-flight
        # temp files of uploads that will now fail): the client asked for the whole folder to go.
        try:
            shutil.rmtree(self.directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot delete folder: {exc.strerror}", path=self.directory), self.path
            ) from exc
        DAVResource.remove_all_properties(self, recursive=True)
        DAVResource.remove_all_locks(self, recursive=True)
        self.provider.forget(self.environ)
        log.info("folder deleted folder=%s", self.path)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        self.policy.require_writer(self.environ, "MOVE" if is_move else "COPY")
        directory = self.policy.folder_for(dest_path)
        try:
            directory.mkdir(exist_ok=True)
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot create folder: {exc.strerror}", path=directory), dest_path
            ) from exc
        self.provider.forget(self.environ)
        carry_properties(self.provider, self, dest_path, is_move=False, with_children=False)

    def support_recursive_move(self, dest_path: str) -> bool:
        return True

    def move_recursive(self, dest_path: str) -> None:
        self.policy.require_writer(self.environ, "MOVE")
        if self.directory == self.policy.root:
            raise DAVError(HTTP_FORBIDDEN, "the store's root cannot be moved")
        target = self.policy.folder_for(dest_path)
        try:
            os.rename(self.directory, target)
        except OSError as exc:
            status = errno.errorcode.get(exc.errno or 0, "error")
            raise dav_error(
                ArchiveError(f"cannot move folder: {exc.strerror} ({status})", path=self.directory), self.path
            ) from exc
        self.provider.forget(self.environ)
        carry_properties(self.provider, self, dest_path, is_move=True, with_children=True)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        self.policy.require_writer(self.environ, "PROPPATCH")
        DAVResource.set_property_value(self, name, value, dry_run=dry_run)

    def remove_all_properties(self, *, recursive: bool) -> None:
        DAVResource.remove_all_properties(self, recursive=recursive)
