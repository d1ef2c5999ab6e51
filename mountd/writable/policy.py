"""What a writable store allows, and the rules every write follows wherever it happens.

``WritePolicy`` is the writable server's configuration as the resources see it: the store's root, the
upload limit, who may write (by default the caller's role, ``mountd.auth.access.may_write``) and the
template's
author. It maps request paths to the files a write creates (``report.csv`` → ``report.csv.sync``, spec
§8.3), refusing names the store cannot hold (hidden, invalid) with 403. ``is_junk_name`` tells macOS and
Windows metadata files apart, which are accepted and discarded; ``carry_properties`` moves a resource's
dead properties along with a copy or move.

``require_replaceable`` and ``require_folder_replaceable`` enforce an archive's ``ownership.write_allowed =
false`` (spec §6.2) against every way a WebDAV client could replace or remove it (docs/security.md, "Archives
that refuse writes"): PUT over it, DELETE of it, MOVE of it away, COPY or MOVE onto it (``Overwrite: T``),
and DELETE or MOVE of a folder holding it. COPY *from* it stays allowed (the source is unchanged).

Invariants:
    * A write is refused (403) before anything changes when ``require_writer`` says no.
    * A write-protected archive is never unlinked, renamed or overwritten by a request, whatever the role;
      only the operator (on the filesystem) or its refresh (``commit_payload`` by a worker) changes it.
    * Paths are checked by ``sync_format.store.check_store_name``; no hidden segment is ever created, nor a
      name with a control character, one that was not UTF-8, or one too long for its temp file
      (``MAX_NAME_BYTES``).
    * A write that creates a file does not take another's: a new resource's file does not exist when the
      request resolves it, and the archive is listed under the very name the request gave
      (``archive_for``). (A file another request creates under that same name while this one's body is
      still arriving is replaced when it commits: the last of two creates of one new name wins.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    DAVError,
)

from mountd.auth import access as auth
from mountd.errors import WriteRefused, dav_error
from sync_format import ArchiveError, SyncError, open_archive
from sync_format.atomic import TEMP_SUFFIX
from sync_format.store import check_store_name, store_path_for, writable_display_name
from sync_format.template import DEFAULT_CREATED_BY, extension_of

if TYPE_CHECKING:
    from mountd.dav.factory import StoreView

#: Largest upload accepted by default (bytes): 16 GiB; ``--max-upload`` changes it.
DEFAULT_MAX_UPLOAD = 16 * 1024**3
#: Exact metadata names macOS leaves on every share.
JUNK_NAMES = frozenset({".DS_Store"})
#: Prefix of macOS AppleDouble companions (``._report.csv``).
JUNK_PREFIX = "._"
#: Longest name a write creates, in UTF-8 bytes: the archive's temp file (``.NAME.sync.<12 hex>.sync-tmp``,
#: ``sync_format.atomic.create_temp``) must still fit in the 255 bytes a file name may have.
MAX_NAME_BYTES = 255 - len(f"..sync.{'0' * 12}{TEMP_SUFFIX}")
#: Dead properties (PROPPATCH) a resource may hold: clients set a handful (Windows: 4 timestamps and
#: attributes; macOS: a few in its own namespace).
MAX_DEAD_PROPERTIES = 64
#: Environ key: the new dead-property names of this request so far (``require_property_room``).
_NEW_PROPERTIES_KEY = "sync.proppatch.new_names"
#: Characters no created name may hold: control characters (C0 and DEL) would reach listings, logs and
#: terminals, and no request path may carry them (``mountd.http.middleware.path_problem``), so such a file
#: could never be read or deleted again; U+FFFD and lone surrogates stand for bytes that were not UTF-8.
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ufffd\ud800-\udfff]")


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
            (``mountd.auth.access.may_write``: owners may, consumers may not).
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

    def require_replaceable(self, archive: Path, what: str, *, reached: Path | None = None) -> None:
        """Refuse (403) when ``archive`` exists and its manifest says ``ownership.write_allowed = false``.

        Args:
            archive: An archive file (which may not exist).
            what: The operation, for the message.
            reached: ``archive`` named through its pinned folder (``sync_format.beneath``): checked there, in
                the folder the write then acts in, not again by name (which a folder swapped in between,
                even without a symlink, would answer for another file).

        Raises:
            DAVError: 403.
        """
        if is_protected(archive if reached is None else reached):
            name = (
                archive.relative_to(self.root).as_posix()
                if archive.is_relative_to(self.root)
                else archive.name
            )
            refusal = WriteRefused(
                name, f"{what}: this archive does not allow writes (ownership.write_allowed)"
            )
            raise dav_error(refusal, name)

    def require_folder_replaceable(self, directory: Path, what: str, *, reached: Path | None = None) -> None:
        """Refuse (403) when any archive under ``directory`` is write-protected (see ``is_protected``).

        Args:
            directory: A folder about to be deleted or moved as a whole.
            what: The operation, for the message.
            reached: ``directory`` named through its pinned parent, walked instead (see
                ``require_replaceable``).

        Raises:
            DAVError: 403.
        """
        walked = directory if reached is None else reached
        for archive in sorted(walked.rglob("*.sync")):
            self.require_replaceable(directory / archive.relative_to(walked), what, reached=archive)

    def archive_for(self, path: str, display_ext: str | None = None) -> Path:
        """The archive file a new resource's request path creates (``/a/x.csv`` → ``<root>/a/x.csv.sync``):
        a PUT or LOCK of a name no archive is listed under, or the destination of a COPY or MOVE.

        Only a name that no listing shows yet gets here (wsgidav resolves the others to their archive, and
        deletes a destination it overwrites first), so the file must not exist, and the new archive must be
        listed under exactly the name asked for. Both are checked: otherwise naming an archive by its file
        name (``/x.csv.sync`` for the archive listed as ``x.csv``), or a name whose file belongs to an archive
        listed under another name (``/report`` when ``report.sync`` is listed as ``report.csv``), would
        replace that archive's file: past ``ownership.write_allowed``, past ``Overwrite: F``, and without a
        trace of what it held; and a new ``r.csv.sync`` would hide an archive ``r.sync`` listed as ``r.csv``.

        Args:
            path: A request path of a file.
            display_ext: The ``display_ext`` the archive will have: a COPY or MOVE keeps its source's
                manifest (``/v/zz`` copied from ``x.txt`` would be listed as ``zz.txt``); None for a new
                archive from the upload template, which derives it from the name.

        Returns:
            The archive path.

        Raises:
            DAVError: 403 for names the store cannot hold (hidden, invalid, too long) or that would be listed
                under another name (a name ending in ``.sync``, or a copy's name without its extension); 409
                when a file of that name exists.
        """
        relative = self._relative(path)
        target = store_path_for(self.root, relative.as_posix())
        shown = writable_display_name(
            target, extension_of(target.name) if display_ext is None else display_ext
        )
        if shown != relative.name:
            reason = (
                f"a new file named {relative.name!r} would be listed as {shown!r}"
                " (names ending in .sync are the store's own file names; a copy keeps its type and so its"
                " extension): choose another name"
            )
            raise dav_error(WriteRefused(path, reason), path)
        if os.path.lexists(target):
            raise DAVError(
                HTTP_CONFLICT,
                f"{relative.as_posix()}: its file {target.name} exists, listed under another name;"
                " nothing was changed",
            )
        return target

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
        for part in relative.parts:
            if _UNSTORABLE.search(part):
                reason = "names with control characters or bytes that are not UTF-8 are not stored"
                raise dav_error(WriteRefused(path, reason), path)
            if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
                raise dav_error(
                    WriteRefused(path, f"names longer than {MAX_NAME_BYTES} bytes are not stored"), path
                )
        return relative


def refuse_onto_a_holder(source_path: str, dest_path: str) -> None:
    """Refuse (403) a COPY or MOVE whose destination is a folder that holds the source (``/d/x.csv`` onto
    ``/d/``, or onto ``/``).

    wsgidav refuses a destination equal to the source or below it, not one above it: with ``Overwrite: T``
    it deleted that folder as the destination to overwrite, source and all, then failed to copy or move
    the source it had just deleted. Called from ``handle_copy`` and ``handle_move``, before anything changes.

    Args:
        source_path: The request path of what is copied or moved.
        dest_path: The destination's request path.

    Raises:
        DAVError: 403 when ``dest_path`` is a folder above ``source_path``.
    """
    source = source_path.rstrip("/")
    holder = dest_path.rstrip("/")
    if source != holder and source.startswith(f"{holder}/"):
        raise DAVError(HTTP_FORBIDDEN, "cannot copy or move a resource onto a folder that holds it")


def require_property_room(resource: Any, name: str) -> None:
    """Refuse (507) a new dead property on a resource that holds ``MAX_DEAD_PROPERTIES`` already.

    Dead properties are kept for good (in memory, or in the broker's Redis) and rendered into every PROPFIND
    of the resource and its folder: their number is bounded, as their size is (``METHOD_MAX_BODY``).

    Args:
        resource: The wsgidav resource being PROPPATCHed (its provider's property manager, its URL).
        name: The property about to be written.

    Raises:
        DAVError: 507 when it is a new property and there is no room for it.
    """
    manager = resource.provider.prop_manager
    if manager is None:
        return
    names = manager.get_properties(resource.get_ref_url(), resource.environ)
    if name in names:
        return
    # wsgidav checks every property of a PROPPATCH (a dry run) before it writes any: the new names of this
    # request are counted together there, so that a request that would pass the cap fails whole (RFC 4918
    # §9.2: all or nothing), not after writing the first ones.
    new = resource.environ.setdefault(_NEW_PROPERTIES_KEY, set())
    new.add(name)
    if len(names) + len(new) > MAX_DEAD_PROPERTIES:
        raise DAVError(
            HTTP_INSUFFICIENT_STORAGE,
            f"at most {MAX_DEAD_PROPERTIES} dead properties per resource; remove one first",
        )


def is_protected(archive: Path) -> bool:
    """Whether ``archive`` is an archive whose manifest refuses writes (``ownership.write_allowed = false``).

    Args:
        archive: A file path.

    Returns:
        False when it does not exist or cannot be read as an archive (nothing to protect: a broken file may
        be removed by its owner).
    """
    if not archive.is_file():
        return False
    try:
        with open_archive(archive, follow_symlinks=False) as snapshot:
            return not snapshot.manifest.ownership.write_allowed
    except (SyncError, OSError):
        return False


def carry_properties(
    provider: StoreView, source: Any, dest_path: str, *, is_move: bool, with_children: bool
) -> None:
    """Copy or move a resource's dead properties to where it now lives (after the copy or move).

    Args:
        provider: The store (its property manager; it resolves the destination).
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
