"""The writable store's archives: PUT, DELETE, COPY, MOVE and dead properties of files that are archives.

wsgidav drives every write through the resource objects (its contract, CONTRIBUTING.md); these classes are the
writable twins of ``mountd.dav.resources`` (folders: ``mountd.writable.folders``; what is allowed:
``mountd.writable.policy``; upload bodies: ``mountd.writable.uploads``). A client sees files; the store holds
archives:

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
from io import BytesIO
from pathlib import Path
from typing import Any

from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_FORBIDDEN,
    DAVError,
    PRECONDITION_CODE_ProtectedProperty,
)
from wsgidav.dav_provider import DAVNonCollection  # type: ignore[import-untyped]

from mountd.dav.factory import StoreView
from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import ListedArchive
from mountd.dav.resources import SYNC_PROPERTIES, ListedArchiveFile, OpenedArchive
from mountd.errors import WriteRefused, dav_error
from mountd.writable.policy import (
    WritePolicy,
    carry_properties,
    refuse_onto_a_holder,
    require_property_room,
)
from mountd.writable.uploads import Body, DavSink, end_upload, open_sink
from sync_format import (
    ArchiveError,
    FileIdentity,
    SwapConflict,
    SyncBuilder,
    SyncError,
    open_archive,
)
from sync_format.atomic import atomic_write
from sync_format.beneath import pinned
from sync_format.reader import open_regular
from sync_format.swap import commit_payload
from sync_format.template import extension_of, template_manifest

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 3
#: Bytes per read when copying an archive.
COPY_BLOCK = 1024 * 1024
#: Exact metadata names macOS leaves on every share.
CONDITIONAL_HEADERS = ("HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF")


def _copy_file(policy: WritePolicy, source: Path, target: Path, key: str, identity: FileIdentity) -> None:
    """Copy the bytes of the archive version ``identity`` (the one the request resolved) to ``target``
    atomically (temp, fsync, rename), if ``target`` may be replaced; both are below the store's root and
    reached through their folders opened from there (``sync_format.beneath``), where the check is made too.

    The source is opened again by name, so it is checked to be that very file: not followed through a
    symlink, not waited on (a FIFO), and the same version (device, inode, size, times), or nothing is
    copied. Anyone who may write to the folder could rename a symlink to a file only the server can read
    over the name meanwhile.
    """
    try:
        with pinned(policy.root, source) as reached, pinned(policy.root, target) as written:
            policy.require_replaceable(target, "COPY", reached=written)
            fd, st = open_regular(reached, follow_symlinks=False)
            with os.fdopen(fd, "rb") as src:
                if FileIdentity.from_stat(st) != identity:
                    raise dav_error(SwapConflict(source, -1, -1), key)  # replaced since resolved: retry
                with atomic_write(written) as dst:
                    shutil.copyfileobj(src, dst, COPY_BLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink since it was resolved: that is not the archive, retry
            raise dav_error(SwapConflict(source, -1, -1), key) from exc
        raise dav_error(ArchiveError(f"cannot copy: {exc.strerror}", path=source), key) from exc
    except SyncError as exc:
        raise dav_error(exc, key) from exc


class ArchiveWrites(DAVNonCollection):  # type: ignore[misc]  # wsgidav is untyped
    """Write methods shared by an opened archive and one a listing shows (wsgidav deletes and copies those).

    Combined with a read base of ``mountd.dav.resources`` (``OpenedArchive``, ``ListedArchiveFile``), which
    says nothing about writes; needs ``archive`` (its file), ``key``, ``facts``, ``policy`` and ``provider``
    (the store, as a ``StoreView``) from the class it is combined into. Where it keeps wsgidav's default
    (removing properties and locks, storing dead properties) it calls it through ``super()``.
    """

    archive: Path
    key: str
    facts: ArchiveFacts
    policy: WritePolicy
    provider: StoreView
    environ: dict[str, Any]
    path: str

    def handle_delete(self) -> bool:
        return False  # wsgidav checks locks, then calls delete()

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        refuse_onto_a_holder(self.path, dest_path)
        return False

    def handle_move(self, dest_path: str) -> bool:
        refuse_onto_a_holder(self.path, dest_path)
        return False

    def delete(self) -> None:
        self.policy.require_writer(self.environ, "DELETE")
        try:
            with pinned(self.policy.root, self.archive) as reached:
                self.policy.require_replaceable(self.archive, "DELETE", reached=reached)
                reached.unlink()
        except FileNotFoundError:
            pass  # already gone: the outcome the client asked for
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot delete: {exc.strerror}", path=self.archive), self.key
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, self.key) from exc
        self.remove_all_properties(recursive=True)
        self.remove_all_locks(recursive=True)
        self.provider.forget(self.environ)
        log.info("archive deleted archive=%s", self.key)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        self.policy.require_writer(self.environ, "MOVE" if is_move else "COPY")
        # A destination that lists an archive now is that archive's file (a COPY of a folder onto a folder
        # keeps the members both have, and copies onto them); any other is a new resource (wsgidav deleted
        # an overwritten destination first), held to ``archive_for``'s rules.
        existing = self.provider.get_resource_inst(dest_path, self.environ)
        if isinstance(existing, ArchiveWrites):
            target = existing.archive
        else:
            target = self.policy.archive_for(dest_path, self.facts.display_ext)
        if is_move:
            self._rename(target)
            # A lock does not move with its resource (RFC 4918 §7.7): left on the old name it would keep
            # that name locked, and UNLOCK there finds nothing to unlock.
            self.remove_all_locks(recursive=False)
        else:
            _copy_file(self.policy, self.archive, target, self.key, self.facts.identity)
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
        if value is not None:  # (None removes the property)
            require_property_room(self, name)
        super().set_property_value(name, value, dry_run=dry_run)

    def set_last_modified(self, dest_path: str, time_stamp: float, *, dry_run: bool) -> bool:
        return False  # the payload's time is its commit time, not something a client sets

    def _rename(self, target: Path) -> None:
        root = self.policy.root
        try:
            with pinned(root, self.archive) as source, pinned(root, target) as destination:
                self.policy.require_replaceable(self.archive, "MOVE", reached=source)
                self.policy.require_replaceable(target, "MOVE", reached=destination)
                os.rename(source, destination)
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot move: {exc.strerror}", path=self.archive), self.key
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, self.key) from exc
        self.provider.forget(self.environ)

    def _carry_properties(self, dest_path: str, *, is_move: bool) -> None:
        carry_properties(self.provider, self, dest_path, is_move=is_move, with_children=False)


class WritableArchiveResource(ArchiveWrites, OpenedArchive):
    """An opened archive that also takes PUT (payload overwrite), DELETE, COPY, MOVE and PROPPATCH.

    Args:
        path: The request path.
        environ: The WSGI environ.
        archive: The archive file.
        key: Its key in the store.
        provider: The store (for forgetting resolved resources and the property manager).
        policy: What writes are allowed.
    """

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        archive: Path,
        key: str,
        provider: StoreView,
        policy: WritePolicy,
        *,
        follow_symlinks: bool = False,
    ) -> None:
        super().__init__(path, environ, archive, key, follow_symlinks=follow_symlinks)
        self.provider = provider
        self.policy = policy
        self._sink: DavSink | None = None

    def begin_write(self, *, content_type: str | None = None) -> DavSink:
        self.policy.require_writer(self.environ, "PUT")
        if not self.snapshot.manifest.ownership.write_allowed:
            refusal = WriteRefused(self.path, "this archive does not allow writes (ownership.write_allowed)")
            raise dav_error(refusal, self.key)
        self._sink = open_sink(self.policy.max_upload, self.environ, self.archive, self.key, self.policy.root)
        return self._sink

    def end_write(self, *, with_errors: bool) -> None:
        sink, self._sink = self._sink, None
        end_upload(sink, self.key, with_errors=with_errors, commit=self._commit)

    def _commit(self, body: Body) -> None:
        expected = self.facts.generation
        conditional = any(self.environ.get(header) for header in CONDITIONAL_HEADERS)
        stream, size = body
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                stream.seek(0)
                limit = self.policy.max_upload
                with pinned(self.policy.root, self.archive) as reached:
                    self.policy.require_replaceable(self.archive, "PUT", reached=reached)
                    commit_payload(reached, expected, (stream, size), max_payload_size=limit)
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
            snapshot = open_archive(self.archive, follow_symlinks=False)
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


class ListedWritableArchive(ArchiveWrites, ListedArchiveFile):
    """An archive as a writable listing shows it (wsgidav deletes, copies and moves members through these).

    Args:
        path: The member's request path.
        environ: The WSGI environ.
        listed: The index's record.
        key: Its key in the store.
        provider: The store.
        policy: What writes are allowed.
    """

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        listed: ListedArchive,
        key: str,
        provider: StoreView,
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
        provider: The store.
        policy: What writes are allowed.
    """

    def __init__(
        self, path: str, environ: dict[str, Any], target: Path, provider: StoreView, policy: WritePolicy
    ) -> None:
        super().__init__(path, environ)
        self.target = target
        self.key = target.relative_to(policy.root).as_posix()
        self.provider = provider
        self.policy = policy
        self.facts: ArchiveFacts | None = None
        self._sink: DavSink | None = None

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

    def begin_write(self, *, content_type: str | None = None) -> DavSink:
        self.policy.require_writer(self.environ, "PUT")
        self._sink = open_sink(self.policy.max_upload, self.environ, self.target, self.key, self.policy.root)
        return self._sink

    def end_write(self, *, with_errors: bool) -> None:
        sink, self._sink = self._sink, None
        end_upload(sink, self.key, with_errors=with_errors, commit=self._create)

    def _create(self, body: Body) -> None:
        self.facts = create_archive(self.policy, self.target, self.key, body)
        self.provider.index.learn(self.facts)
        self.provider.forget(self.environ)
        log.info("archive created archive=%s size=%d", self.key, self.facts.payload_size)


def create_archive(policy: WritePolicy, target: Path, key: str, body: Body | None) -> ArchiveFacts:
    """Wrap a file (or nothing) into a new archive with the upload template, atomically.

    Args:
        policy: The store's policy (template values).
        target: The archive to write.
        key: Its key, for messages.
        body: The payload (an open file and its size); None for an empty payload (a LOCK on an unmapped
            name).

    Returns:
        The new archive's facts.

    Raises:
        DAVError: It could not be written (507 when the disk is full).
    """
    manifest = template_manifest(
        display_ext=extension_of(target.name), created_by=policy.created_by, write_allowed=True
    )
    builder = SyncBuilder().with_manifest(manifest)
    builder = builder.with_payload_bytes(b"") if body is None else builder.with_payload_stream(*body)
    try:
        with pinned(policy.root, target) as reached:
            builder.write_to(reached, max_payload_size=policy.max_upload)
            with open_archive(reached, follow_symlinks=False) as snapshot:
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
