"""What the provider makes for a path: the seam between the read path and the writable store.

``SyncProvider`` (``mountd.dav.provider``) resolves a request path to a folder, an archive file or nothing;
which resource objects stand for them is the ``ResourceFactory``'s choice. ``ReadOnlyResources`` makes the
read-only ones of ``mountd.dav.resources``; the writable store (``mountd.writable.factory``) makes resources
that also take writes. The provider never imports the writable store: the server's assembly
(``mountd.app``) picks the factory.

Resources that write need a few things of the store they belong to (its listing cache, forgetting what a
request resolved after a change, resolving a destination, the property manager); they ask for them through
``StoreView``, which the provider satisfies, rather than through the provider's class.

Invariants:
    * ``archive`` opens the archive (``OpenedArchive``) or raises ``ArchiveError``, as ``OpenedArchive``
      does; the provider handles retries, the index and error translation.
    * ``fast_reads`` is True only where a plain GET of an archive is answered exactly as the factory's
      resource would answer it (read-only stores): the fast GET path (``mountd.http.fast_get``) bypasses the
      factory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mountd.dav.index import ArchiveIndex
from mountd.dav.resources import ArchiveResource, Folder, OpenedArchive, StoreCollection
from sync_format import display_name

#: The display-name rule of a store (spec §8.1): archive path and extension → the name a client sees.
NameRule = Callable[[Path, str], str]


class StoreView(Protocol):
    """What a resource that writes may ask of the store serving it (``SyncProvider`` provides it)."""

    index: ArchiveIndex
    #: wsgidav's property manager (set by wsgidav; None when there is none).
    prop_manager: Any

    def forget(self, environ: dict[str, Any]) -> None:
        """Drop the request's resolved resources after a change."""

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        """The resource at ``path`` now, or None."""


class ResourceFactory(Protocol):
    """Makes the resources a store's paths resolve to."""

    #: The store's display-name rule.
    name_rule: NameRule
    #: Whether the fast GET path may answer plain reads (see the module's invariants).
    fast_reads: bool
    #: Whether the store must be a directory (a single archive file cannot be served this way).
    needs_directory: bool
    #: Whether its resources take writes (policies such as ``mountd.auth.lock_policy`` ask).
    takes_writes: bool

    def folder(
        self, store: StoreView, path: str, environ: dict[str, Any], directory: Path, root: Path
    ) -> Folder:
        """The resource of a store directory."""

    def archive(
        self,
        store: StoreView,
        path: str,
        environ: dict[str, Any],
        archive: Path,
        key: str,
        *,
        follow_symlinks: bool = False,
    ) -> OpenedArchive:
        """The resource of one archive, opened (raises ``ArchiveError`` when it cannot be); a symlink as its
        name is followed only with ``follow_symlinks`` (the operator's single archive)."""

    def special(self, path: str, environ: dict[str, Any], name: str) -> Any | None:
        """The resource of a name that is not looked up in the store (e.g. OS metadata files), or None."""


class ReadOnlyResources:
    """The read-only store's resources: every write answers 403."""

    def __init__(self) -> None:
        self.name_rule: NameRule = display_name
        self.fast_reads = True
        self.needs_directory = False
        self.takes_writes = False

    def folder(
        self, store: StoreView, path: str, environ: dict[str, Any], directory: Path, root: Path
    ) -> Folder:
        return StoreCollection(path, environ, store.index, directory, root)

    def archive(
        self,
        store: StoreView,
        path: str,
        environ: dict[str, Any],
        archive: Path,
        key: str,
        *,
        follow_symlinks: bool = False,
    ) -> OpenedArchive:
        return ArchiveResource(path, environ, archive, key, follow_symlinks=follow_symlinks)

    def special(self, path: str, environ: dict[str, Any], name: str) -> Any | None:
        return None
