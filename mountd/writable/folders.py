"""``WritableCollection``: a store directory that takes PUT of new files, MKCOL, DELETE, COPY and MOVE.

The folder half of the writable store (``mountd.writable.archives`` holds the archive half and explains the
mapping between files and archives). A PUT of a new name becomes a ``PendingArchive`` (nothing on disk
until the body is complete); a LOCK of a new name creates an empty archive at once (RFC 4918 §9.10.4);
macOS metadata names become ``JunkResource``s.

Invariants:
    * The store's root is never deleted or moved (403).
    * Deleting a folder removes what wsgidav did not list in it too (hidden OS files, temp files of uploads
      that then fail): the client asked for the whole folder to go.
    * After each change the provider forgets the request's resolved resources; dead properties follow.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from wsgidav import util as dav_util  # type: ignore[import-untyped]
from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_CONFLICT,
    HTTP_FAILED_DEPENDENCY,
    HTTP_FORBIDDEN,
    HTTP_LOCKED,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)

from mountd.dav.factory import StoreView
from mountd.dav.index import ListedArchive
from mountd.dav.resources import Folder
from mountd.errors import dav_error
from mountd.writable.archives import (
    ArchiveWrites,
    JunkResource,
    ListedWritableArchive,
    PendingArchive,
    create_archive,
)
from mountd.writable.conditions import require_lock_grantable, require_preconditions_where_nothing_is
from mountd.writable.policy import (
    WritePolicy,
    carry_properties,
    is_junk_name,
    refuse_onto_a_holder,
    require_property_room,
)
from sync_format import ArchiveError, SyncError
from sync_format.beneath import pinned

log = logging.getLogger(__name__)


class WritableCollection(Folder):
    """A store directory that also takes PUT of new files, MKCOL, DELETE, COPY, MOVE and PROPPATCH.

    Args:
        path: The request path.
        environ: The WSGI environ.
        provider: The store.
        directory: The directory.
        policy: What writes are allowed.
    """

    def __init__(
        self, path: str, environ: dict[str, Any], provider: StoreView, directory: Path, policy: WritePolicy
    ) -> None:
        super().__init__(path, environ, provider.index, directory, policy.root)
        self.provider = provider
        self.policy = policy

    def member_folder(self, name: str) -> WritableCollection:
        return WritableCollection(
            dav_util.join_uri(self.path, name),
            self.environ,
            self.provider,
            self.directory / name,
            self.policy,
        )

    def member_archive(self, name: str, listed: ListedArchive) -> ListedWritableArchive:
        path = dav_util.join_uri(self.path, name)
        return ListedWritableArchive(
            path, self.environ, listed, self._key(listed.path), self.provider, self.policy
        )

    def handle_delete(self) -> bool:
        # Before wsgidav deletes the members one by one: refused only in ``delete`` (last), a DELETE of
        # ``/`` answered 403 with the whole store deleted.
        self.policy.require_writer(self.environ, "DELETE")
        if self.directory == self.policy.root:
            raise DAVError(HTTP_FORBIDDEN, "the store's root cannot be deleted")
        self._require_membership_unlocked()
        return False

    def _require_membership_unlocked(self) -> None:
        """423 when this folder, or a folder below it, has a Depth 0 lock the request does not hold.

        Such a lock protects the folder's membership (RFC 4918 §7.5): wsgidav checks each member against its
        own locks and its parents' Depth infinity locks only, so it deleted every member of a folder locked
        Depth 0 by someone else, then answered 423 for the folder alone.
        """
        manager = getattr(self.provider, "lock_manager", None)
        if manager is None:
            return
        tokens = self.environ.get("wsgidav.ifLockTokenList", [])
        principal = self.environ.get("wsgidav.user_name")
        found = manager.storage.get_lock_list(
            self.get_ref_url(), include_root=True, include_children=True, token_only=False
        )
        for lock in found:
            held = lock.get("principal") == principal and lock.get("token") in tokens
            if lock.get("depth") != "0" or held:
                continue
            below = unquote(str(lock.get("root", ""))).strip("/")  # (lock roots are quoted URLs)
            if (self.policy.root / below).is_dir():
                raise DAVError(HTTP_LOCKED, f"the folder /{below}/ is locked; nothing was deleted")

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        refuse_onto_a_holder(self.path, dest_path)
        return False

    def get_descendants(
        self,
        *,
        collections: bool = True,
        resources: bool = True,
        depth_first: bool = False,
        depth: str = "infinity",
        add_self: bool = False,
    ) -> list[Any]:
        """wsgidav's walk below this folder; for the source of a ``COPY`` with ``Depth: 0``, no member.

        Such a COPY makes the folder and its properties, not its members (RFC 4918 §9.8.3); wsgidav copies
        what this returns whatever the depth (it copied the whole tree). Over an existing folder the
        destination's own members, not in this (empty) list, are then removed as for any COPY of a folder
        onto a folder: the two are not merged (§9.8.4).
        """
        if self._copied_alone():
            return [self] if add_self and collections else []
        found: list[Any] = super().get_descendants(
            collections=collections,
            resources=resources,
            depth_first=depth_first,
            depth=depth,
            add_self=add_self,
        )
        return found

    def _copied_alone(self) -> bool:
        # This folder is the source of the request, a COPY with ``Depth: 0``.
        environ = self.environ
        return bool(
            environ.get("REQUEST_METHOD") == "COPY"
            and environ.get("HTTP_DEPTH") == "0"
            and self.path.rstrip("/") == str(environ.get("PATH_INFO", "")).rstrip("/")
        )

    def handle_move(self, dest_path: str) -> bool:
        refuse_onto_a_holder(self.path, dest_path)
        return False

    def create_empty_resource(self, name: str) -> Any:
        path = dav_util.join_uri(self.path, name)
        if is_junk_name(name):
            return JunkResource(path, self.environ)
        self.policy.require_writer(self.environ, "PUT")
        try:
            target = self.policy.archive_for(path)
        except DAVError as exc:
            if exc.value != HTTP_CONFLICT:
                raise
            # Its file exists: made meanwhile under this very name (a request racing this one, on this
            # replica or another), so that archive is the resource now (a LOCK then meets its lock, a PUT
            # overwrites it); or it is listed under another name, and the refusal stands.
            self.provider.forget(self.environ)
            existing = self.provider.get_resource_inst(path, self.environ)
            if isinstance(existing, ArchiveWrites):
                if str(self.environ.get("HTTP_IF_NONE_MATCH", "")).strip() == "*":
                    # A create-only request was checked against "nothing there": it must not overwrite.
                    raise DAVError(HTTP_PRECONDITION_FAILED, "the resource exists now") from exc
                return existing
            raise
        self._require_preconditions(path)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            # Nothing is created until the body is complete; see PendingArchive.
            return PendingArchive(path, self.environ, target, self.provider, self.policy)
        # LOCK on an unmapped name (RFC 4918 §9.10.4): an empty file must exist from now on, if the lock is
        # granted (checked first: wsgidav checks after the resource exists).
        require_lock_grantable(
            self.environ, path, self.get_ref_url(), getattr(self.provider, "lock_manager", None)
        )
        facts = create_archive(self.policy, target, target.relative_to(self.policy.root).as_posix(), None)
        self.provider.index.learn(facts)
        self.provider.forget(self.environ)
        return self.provider.get_resource_inst(path, self.environ)

    def _require_preconditions(self, path: str) -> None:
        """412 when the request's ``If-Match`` or ``If`` is false for the new name ``path``."""
        manager = getattr(self.provider, "lock_manager", None)
        require_preconditions_where_nothing_is(self.environ, path, manager)

    def create_collection(self, name: str) -> None:
        self.policy.require_writer(self.environ, "MKCOL")
        path = dav_util.join_uri(self.path, name)
        directory = self.policy.folder_for(path)
        self._require_preconditions(path)
        try:
            with pinned(self.policy.root, directory) as reached:
                reached.mkdir()
        except FileExistsError as exc:
            raise DAVError(HTTP_METHOD_NOT_ALLOWED, "a resource of that name exists") from exc
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot create folder: {exc.strerror}", path=directory), name
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, name) from exc
        self.provider.forget(self.environ)
        log.info("folder created folder=%s", directory.relative_to(self.policy.root).as_posix())

    def delete(self) -> None:
        self.policy.require_writer(self.environ, "DELETE")
        if self.directory == self.policy.root:
            raise DAVError(HTTP_FORBIDDEN, "the store's root cannot be deleted")
        # wsgidav has deleted the members it lists; what is left are hidden files (OS metadata, in-flight
        # temp files of uploads that will now fail): the client asked for the whole folder to go. A member
        # still listed is one wsgidav could not delete (locked, write-protected; its error is in the
        # response), or one added meanwhile: the folder stays, with it (wsgidav's own check of that misses
        # a folder named without its trailing slash, and a member folder's own failed member). A COPY or
        # MOVE that overwrites this folder calls this directly, having checked the locks of its whole tree.
        if self.environ.get("REQUEST_METHOD") == "DELETE":
            listed = self.index.list_directory(self.directory, self.policy.root)
            if listed.folders or listed.archives:
                raise DAVError(HTTP_FAILED_DEPENDENCY, "the folder still holds members that were not deleted")
        try:
            with pinned(self.policy.root, self.directory) as reached:
                _remove_folder(
                    reached,
                    lambda held: self.policy.require_folder_replaceable(
                        self.directory, "DELETE", reached=held
                    ),
                )
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:  # something was put there meanwhile (or took the folder's name)
                raise DAVError(HTTP_CONFLICT, "the folder changed while it was deleted; retry") from exc
            raise dav_error(
                ArchiveError(f"cannot delete folder: {exc.strerror}", path=self.directory), self.path
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, self.path) from exc
        self.remove_all_properties(recursive=True)
        self.remove_all_locks(recursive=True)
        self.provider.forget(self.environ)
        log.info("folder deleted folder=%s", self.path)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        self.policy.require_writer(self.environ, "MOVE" if is_move else "COPY")
        directory = self.policy.folder_for(dest_path)
        try:
            with pinned(self.policy.root, directory) as reached:
                reached.mkdir(exist_ok=True)
        except OSError as exc:
            raise dav_error(
                ArchiveError(f"cannot create folder: {exc.strerror}", path=directory), dest_path
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, dest_path) from exc
        self.provider.forget(self.environ)
        carry_properties(self.provider, self, dest_path, is_move=False, with_children=False)

    def support_recursive_move(self, dest_path: str) -> bool:
        return True

    def move_recursive(self, dest_path: str) -> None:
        self.policy.require_writer(self.environ, "MOVE")
        if self.directory == self.policy.root:
            raise DAVError(HTTP_FORBIDDEN, "the store's root cannot be moved")
        target = self.policy.folder_for(dest_path)
        root = self.policy.root
        try:
            with pinned(root, self.directory) as source, pinned(root, target) as destination:
                self.policy.require_folder_replaceable(self.directory, "MOVE", reached=source)
                os.rename(source, destination)
        except OSError as exc:
            status = errno.errorcode.get(exc.errno or 0, "error")
            raise dav_error(
                ArchiveError(f"cannot move folder: {exc.strerror} ({status})", path=self.directory), self.path
            ) from exc
        except SyncError as exc:
            raise dav_error(exc, self.path) from exc
        self.provider.forget(self.environ)
        carry_properties(self.provider, self, dest_path, is_move=True, with_children=True)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> None:
        self.policy.require_writer(self.environ, "PROPPATCH")
        if value is not None:  # (None removes the property)
            require_property_room(self, name)
        super().set_property_value(name, value, dry_run=dry_run)


def _remove_folder(reached: Path, check: Callable[[Path], None]) -> None:
    """Remove the folder ``reached`` (a pinned path) and everything in it, if ``check`` passes on it.

    The folder itself is opened (never through a symlink), checked and emptied through that descriptor, so
    a folder that takes its name meanwhile is neither checked instead nor emptied; the name is then removed
    only if it is an empty folder (``rmdir``), so such a folder is left as it is (the request fails).
    """
    fd = os.open(reached, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        check(Path(f"/proc/self/fd/{fd}"))
        with os.scandir(fd) as entries:
            names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for name, is_folder in names:
            if is_folder:
                shutil.rmtree(name, dir_fd=fd)  # (follows no symlink below the folder it opened)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(reached)
