"""``WritableResources``: the resource factory of a writable store (``mountd.dav.factory``).

A writable store's folders take new files and folders (``mountd.writable.folders``), its archives take
payload overwrites, deletes, copies, moves and dead properties (``mountd.writable.archives``), and macOS and
Windows metadata names are accepted and discarded (``JunkResource``). Names follow the writable store's
display rule (spec §8.1). The fast GET path stays off: it answers read-only stores only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mountd.dav.factory import NameRule, StoreView
from mountd.writable.archives import JunkResource, WritableArchiveResource
from mountd.writable.folders import WritableCollection
from mountd.writable.policy import WritePolicy, is_junk_name
from sync_format import writable_display_name


class WritableResources:
    """Makes a writable store's resources, every write checked by ``policy``.

    Args:
        policy: What writes are allowed (its root is the store directory).
    """

    def __init__(self, policy: WritePolicy) -> None:
        self.policy = policy
        self.name_rule: NameRule = writable_display_name
        self.fast_reads = False
        self.needs_directory = True
        self.takes_writes = True

    def folder(
        self, store: StoreView, path: str, environ: dict[str, Any], directory: Path, root: Path
    ) -> WritableCollection:
        return WritableCollection(path, environ, store, directory, self.policy)

    def archive(
        self,
        store: StoreView,
        path: str,
        environ: dict[str, Any],
        archive: Path,
        key: str,
        *,
        follow_symlinks: bool = False,
    ) -> WritableArchiveResource:
        return WritableArchiveResource(
            path, environ, archive, key, store, self.policy, follow_symlinks=follow_symlinks
        )

    def special(self, path: str, environ: dict[str, Any], name: str) -> Any | None:
        return JunkResource(path, environ) if is_junk_name(name) else None
