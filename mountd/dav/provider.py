"""``SyncProvider``: wsgidav's provider over a store directory or one archive file.

wsgidav's contract, as given: ``get_resource_inst`` maps a request path to a resource or None. Paths map to
the store like this:

* ``/`` is the store directory (or, in single-archive mode, a collection holding just that archive);
* ``/a/b/`` is a real, visible subdirectory (hidden names and symlinks are never served);
* ``/a/b/report.csv`` is the archive whose display name (spec §8.1) is ``report.csv`` in ``a/b``: first
  the direct candidate ``report.csv.sync``, else the directory's listing (``ArchiveIndex``), with the same
  collision rule as listings.

Invariants:
    * Names are checked by ``sync_format.store.check_store_name``: ``..``, ``.``, empty segments,
      backslashes, NUL and drive prefixes map to None (404); wsgidav already refuses paths climbing out of
      ``/`` (400) and ``RequestGuard`` undecodable ones (400).
    * A request opens the archive it asks for once: resources are cached in the request's environ (wsgidav
      resolves the same path more than once per request), and closed when the request ends.
    * Symlinks are never followed inside the store: a candidate must be a regular file by ``lstat`` both
      before and after it is opened, with the inode that was opened.
    * A GET or HEAD of an expired archive calls the ``FreshnessHook`` once per request, after the archive
      is open and before any byte is sent; the hook can neither delay nor fail the read.
    * ``open_known`` (the fast GET path, ``mountd.http.fast_get``) resolves a name exactly as ``_resolve``
      does
      for the common case (the direct candidate of a read-only store directory) and returns None for
      everything else, so that wsgidav's path answers it. It opens the file once and reads the cached
      facts of the identity it ``fstat``s on that same descriptor: a swap makes a new inode and an edit a
      new mtime or size, so a cached identity means the cached payload offset and size describe the bytes
      behind that descriptor. An unknown identity is parsed from the same descriptor and learnt.
    * A GET or HEAD whose ``Cache-Control`` asks for fresher data than an expired or nearly expired archive
      holds (``mountd.http.freshness_headers.needs_fresh``) asks for a refresh and waits at most
      ``fresh_wait``
      seconds, once per request on either path, then serves the version on disk; the version served is
      recorded in the environ (``SERVED_FACTS_KEY``) for ``FreshnessHeaders``.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wsgidav.dav_error import (  # type: ignore[import-untyped]
    HTTP_FORBIDDEN,
    HTTP_SERVICE_UNAVAILABLE,
    DAVError,
    PRECONDITION_CODE_PropfindFiniteDepth,
)
from wsgidav.dav_provider import DAVProvider  # type: ignore[import-untyped]

from broker.contract import archive_key
from mountd.dav.factory import ReadOnlyResources, ResourceFactory
from mountd.dav.facts import ArchiveFacts
from mountd.dav.index import ArchiveIndex
from mountd.dav.render_slots import MIN_MEMBERS as RENDER_MIN_MEMBERS
from mountd.dav.render_slots import RenderSlots
from mountd.dav.resources import Folder, OpenedArchive, SingleArchiveCollection
from mountd.errors import dav_error
from mountd.http.freshness_headers import (
    DEFAULT_FRESH_WAIT,
    MISSED_KEY,
    SERVED_FACTS_KEY,
    WAITED_KEY,
    SwapWaiters,
    needs_fresh,
    request_directives,
)
from mountd.http.middleware import on_request_end
from mountd.http.sendfile import mark_complete_body
from sync_format import (
    ArchiveError,
    FileIdentity,
    PayloadReader,
    SyncError,
    open_archive_fd,
)
from sync_format.errors import PROC_FD
from sync_format.freshness import now_ns
from sync_format.store import SYNC_SUFFIX, check_store_name, is_archive_name

log = logging.getLogger(__name__)

#: Environ key of the request's resource cache (path → resource or None).
RESOURCES_KEY = "sync.resources"
#: Request methods that read a payload and so trigger the freshness check.
READ_METHODS = frozenset({"GET", "HEAD"})
#: Times an archive is reopened when its name changed to another file while it was being opened.
OPEN_ATTEMPTS = 3
#: Display names remembered by the fast path (path and extension → name); beyond it all are dropped.
MAX_REMEMBERED_NAMES = 100_000
#: Request paths whose fast-path parse is remembered, and the longest one remembered (characters): the keys
#: come from clients, so both bound the memory (a few MB at most).
MAX_PARSED_PATHS = 4096
MAX_PARSED_PATH_LENGTH = 512
#: Flags of the fast path's open: a symlink in the last segment fails instead of being followed, and a FIFO
#: put where an archive was opens at once (and is then refused as not a regular file) instead of holding the
#: request's thread until something writes to it (``O_NONBLOCK`` changes nothing for a regular file).
KNOWN_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass(frozen=True)
class KnownPayload:
    """An archive a GET or HEAD can be answered for without wsgidav (``SyncProvider.open_known``).

    Attributes:
        archive: The archive file's path.
        facts: The facts of the version ``reader`` reads.
        reader: The payload of that version; the caller owns it (close it when the response ends).
    """

    archive: str
    facts: ArchiveFacts
    reader: PayloadReader


class FreshnessHook(Protocol):
    """Told about every expired archive a client reads; must return at once and never raise."""

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """An expired archive is being read.

        Args:
            archive: Its key (path inside the store).
            generation: The generation being served (the refresh's base).
            timeout: Its manifest's ``policy.timeout`` in seconds.
        """


class SyncProvider(DAVProvider):  # type: ignore[misc]  # wsgidav is untyped
    """Serve a store directory, or one archive, with the resources a ``ResourceFactory`` makes.

    Args:
        store: A store directory or a single archive file.
        freshness: Told about expired archives being read.
        resources: Makes the resources paths resolve to (``mountd.dav.factory``); read-only ones when None.
        index: The listing cache; a new one with the factory's naming rule when None.
        fresh_wait: Seconds a read asking for fresh data (``Cache-Control: no-cache`` …) waits at most for
            a refresh (``mountd.http.freshness_headers``); 0 never waits.
        swaps: Where such reads wait; fed with "swapped" notifications by whoever listens (a new one, fed by
            nobody, when None: reads then see the new file on disk within ``WAIT_POLL``).

    Raises:
        ArchiveError: ``store`` is neither a directory nor a file, or is a file and the factory needs a
            directory.
    """

    def __init__(
        self,
        store: Path,
        freshness: FreshnessHook,
        *,
        resources: ResourceFactory | None = None,
        index: ArchiveIndex | None = None,
        fresh_wait: float = DEFAULT_FRESH_WAIT,
        swaps: SwapWaiters | None = None,
    ) -> None:
        super().__init__()
        self.fresh_wait = fresh_wait
        self.swaps = swaps if swaps is not None else SwapWaiters()
        store = Path(store).absolute()
        self.resources: ResourceFactory = resources if resources is not None else ReadOnlyResources()
        if self.resources.needs_directory and not store.is_dir():
            raise ArchiveError("a writable store must be a directory", path=store)
        if store.is_dir():
            self.single: Path | None = None
            self.root = store
        elif store.is_file():
            self.single = store
            self.root = store.parent
        else:
            raise ArchiveError("store is neither a directory nor an archive file", path=store)
        self.freshness = freshness
        self._root_text = str(self.root).rstrip("/")  # "" for "/", so that f"{root}/{name}" is right
        #: The store's real path, which every archive opened below it must show (``_reached_as_named``);
        #: None where ``/proc`` is not mounted (the check is then skipped).
        self._real_root_text: str | None = (
            os.path.realpath(self.root).rstrip("/") if os.path.isdir(PROC_FD) else None
        )
        self._names: dict[tuple[str, str], str] = {}
        self._known_paths: dict[str, tuple[tuple[str, ...], str] | None] = {}
        if index is None:
            index = ArchiveIndex(name_rule=self.resources.name_rule)
        self.index = index
        #: Folder listings wsgidav renders itself, a few at once (``mountd.dav.render_slots``).
        self.render_slots = RenderSlots()

    def __repr__(self) -> str:
        return f"SyncProvider({self.single or self.root})"

    @property
    def writable(self) -> bool:
        """Whether this store takes writes (its resource factory's ``takes_writes``)."""
        return self.resources.takes_writes

    def is_readonly(self) -> bool:
        # Writes are refused by the resources (403) rather than by wsgidav (405): that way LOCK and UNLOCK
        # still work, as macOS and Windows clients expect, and the writable mode only swaps resources.
        return False

    def custom_request_handler(
        self, environ: dict[str, Any], start_response: Any, default_handler: Any
    ) -> Any:
        """wsgidav's handling of the request, but for a PROPFIND of infinite depth.

        A PROPFIND with ``Depth: infinity``, or without a ``Depth`` (which means the same, RFC 4918 §9.1),
        is refused with 403 and the ``propfind-finite-depth`` precondition, as Apache's mod_dav does by
        default: wsgidav would describe the whole store in one document, rendered in memory, which any
        reader could ask for again and again. A listing of a big folder that reaches wsgidav (the fast path
        did not answer it) is rendered in one of a few slots (``render_slots``: 503 when none comes free
        soon).
        An answer wsgidav made whole in memory (its multistatus documents) may be sent to a slow reader by
        the connection loop, not by a worker thread (``mark_complete_body``).
        """
        if environ.get("REQUEST_METHOD") == "PROPFIND":
            depth = environ.get("HTTP_DEPTH", "infinity")
            if depth == "infinity":
                raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_PropfindFiniteDepth)
            if depth == "1" and self._is_folder(environ):
                with self.render_slots.held(f"PROPFIND {environ.get('PATH_INFO')!r}"):
                    response = default_handler(environ, start_response)
                mark_complete_body(environ, response)
                return response
        response = default_handler(environ, start_response)
        mark_complete_body(environ, response)
        return response

    def _is_folder(self, environ: dict[str, Any]) -> bool:
        # Whether the request names a folder of ``MIN_MEMBERS`` or more members (resolved once per request:
        # wsgidav finds it in the cache; the listing comes from the index's cache).
        try:
            resource = self.get_resource_inst(environ.get("PATH_INFO", "/"), environ)
        except DAVError:
            return False  # wsgidav answers it as it would have
        if resource is None or not resource.is_collection:
            return False
        listing = getattr(resource, "listing", None)
        if listing is None:
            return True  # no cheap count: a slot, to be safe
        members = listing()
        return len(members.archives) + len(members.folders) >= RENDER_MIN_MEMBERS

    def get_resource_inst(self, path: str | None, environ: dict[str, Any]) -> Any:
        """Map a request path to a resource, or None when nothing is there.

        Args:
            path: The unquoted, normalized request path; None is the parent of the root, which wsgidav asks
                for when a write names the root itself (PUT, DELETE, MOVE or COPY of ``/``, or ``/`` as a
                Destination): nothing is there, so wsgidav answers 405 or 409, not 500.
            environ: The WSGI environ.

        Returns:
            A ``Folder``, an ``OpenedArchive``, another resource of the factory, or None.

        Raises:
            DAVError: The archive exists but cannot be served (500 with the reason, or 404/403).
        """
        if path is None:
            return None
        cache = environ.get(RESOURCES_KEY)
        if cache is None:
            cache = environ[RESOURCES_KEY] = {}
            on_request_end(environ, cache.clear)
        if path in cache:
            return cache[path]
        resource = self._resolve(path, environ)
        reading = environ.get("REQUEST_METHOD") in READ_METHODS
        if reading and isinstance(resource, OpenedArchive) and self._wait_wanted(environ, resource.facts):
            # The reader asked for fresher data than this: ask for it, wait (bounded), serve what is there.
            resource.close()
            self._wait_for_refresh(environ, resource.archive, resource.facts, asked=False)
            resource = self._resolve(path, environ)
        cache[path] = resource
        if isinstance(resource, OpenedArchive):
            if not on_request_end(environ, resource.close):
                log.debug("no request scope: snapshot closes when collected archive=%s", resource.key)
            if reading:
                environ[SERVED_FACTS_KEY] = resource.facts
                self._check_freshness(resource.archive, resource.facts)
        return resource

    def _wait_wanted(self, environ: dict[str, Any], facts: ArchiveFacts) -> bool:
        # Once per request: the fast path may have waited already before handing the request on.
        if self.fresh_wait <= 0 or environ.get(WAITED_KEY):
            return False
        directives = request_directives(environ)
        if not directives.any or not needs_fresh(directives, facts, now_ns()):
            return False
        environ[WAITED_KEY] = True
        return True

    def _wait_for_refresh(
        self, environ: dict[str, Any], archive: Path, facts: ArchiveFacts, *, asked: bool
    ) -> None:
        # Asks for a refresh (unless the read already did: it was expired) and waits for a newer generation
        # at most fresh_wait seconds; records a missed wait for the Sync-Stale header.
        if not asked:
            self._request_refresh(archive, facts)
        key = archive.relative_to(self.root).as_posix()
        if not self.swaps.wait(key, archive, facts.identity, facts.generation, self.fresh_wait):
            environ[MISSED_KEY] = True

    def open_known(self, path: str, environ: dict[str, Any] | None = None) -> KnownPayload | None:
        """Open the archive a plain GET or HEAD of ``path`` reads, when it is the simple case.

        The simple case: a read-only store directory, ``path`` names an archive by its direct candidate
        (display name + ``.sync``) whose display name is that name, and no folder has that name. The
        freshness check is done here, as for a resolved resource.

        Args:
            path: The normalized request path.
            environ: The request's environ: its freshness directives are honoured (a bounded wait for a
                refresh) and the version served is recorded for the freshness headers.

        Returns:
            The archive's facts and payload reader, or None when wsgidav's path must answer (anything
            else, including missing and unreadable archives, so that their errors come from one place).
        """
        known = self._open_known(path)
        if known is None or environ is None:
            return known
        if self._wait_wanted(environ, known.facts):
            known.reader.close()
            # An expired archive was asked for by _open_known already.
            self._wait_for_refresh(environ, Path(known.archive), known.facts, asked=known.facts.is_expired())
            known = self._open_known(path)
            if known is None:
                return None
        environ[SERVED_FACTS_KEY] = known.facts
        return known

    def _open_known(self, path: str) -> KnownPayload | None:
        if self.single is not None or not self.resources.fast_reads or path.endswith("/"):
            return None
        parsed = self._parse_known(path)
        if parsed is None:
            return None
        folders, name = parsed
        # Plain strings rather than Path objects: this runs on every small GET. What is on disk is looked at
        # on every request; only the checks of the path's text are remembered.
        directory = self._root_text
        for part in folders:
            directory = f"{directory}/{part}"
            if not _is_folder_text(directory, part):
                return None
        if _is_folder_text(f"{directory}/{name}", name):
            return None
        candidate = f"{directory}/{name}{SYNC_SUFFIX}"
        try:
            fd = os.open(candidate, KNOWN_OPEN_FLAGS)
        except OSError:
            return None
        if not self._reached_as_named(fd, candidate[len(self._root_text) :]):
            os.close(fd)
            return None
        known = self._known(candidate, name, fd)
        if known is not None and known.facts.is_expired():
            self._check_freshness(Path(known.archive), known.facts)
        return known

    def _parse_known(self, path: str) -> tuple[tuple[str, ...], str] | None:
        """``(folders, name)`` of a fast-path request path, or None when its text rules it out.

        Pure functions of the text (``check_store_name``, ``is_archive_name``), so their answers are
        remembered: at most ``MAX_PARSED_PATHS`` paths of at most ``MAX_PARSED_PATH_LENGTH`` characters.
        """
        try:
            return self._known_paths[path]
        except KeyError:
            pass
        parsed: tuple[tuple[str, ...], str] | None = None
        relative = path.strip("/")
        if relative:
            try:
                parts = check_store_name(relative).parts
            except ArchiveError:
                parts = ()
            if parts and is_archive_name(parts[-1] + SYNC_SUFFIX):
                parsed = (tuple(parts[:-1]), parts[-1])
        if len(path) <= MAX_PARSED_PATH_LENGTH:
            if len(self._known_paths) >= MAX_PARSED_PATHS:
                self._known_paths.clear()
            self._known_paths[path] = parsed
        return parsed

    def _known(self, candidate: str, name: str, fd: int) -> KnownPayload | None:
        # Owns fd: it ends up in the returned reader or closed.
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        cached = self.index.cached(FileIdentity.from_stat(st)) if stat.S_ISREG(st.st_mode) else False
        if isinstance(cached, ArchiveFacts):
            facts = cached
            reader = PayloadReader(fd, facts.payload_offset, facts.payload_size)
        elif cached is None:
            try:
                snapshot = open_archive_fd(fd, candidate)  # takes fd over, closes it on error
            except ArchiveError:
                return None  # wsgidav's path opens it again and answers the error
            with snapshot:
                facts = ArchiveFacts.from_snapshot(snapshot)
                reader = snapshot.open_payload()
            self.index.learn(facts)
        else:  # not a regular file, or a version known to be unreadable
            os.close(fd)
            return None
        identity = facts.identity
        now = _regular_identity(candidate)
        if (
            self._display_name(candidate, facts.display_ext) != name
            or now is None
            or (now.device, now.inode) != (identity.device, identity.inode)
        ):
            # Another display name, or the name points elsewhere since the open (a swap): wsgidav's
            # path resolves it as usual.
            reader.close()
            return None
        return KnownPayload(candidate, facts, reader)

    def _reached_as_named(self, fd: int, relative: str) -> bool:
        """Whether the file open on ``fd`` is the one at ``relative`` ("/a/x.sync") below the store, as the
        kernel names it: a folder on the way replaced by a symlink after the lookups that found it a real
        folder (``_is_folder``) would have led the open elsewhere, to a file the server may read and the
        client may not; a file replaced since (a commit) is named "... (deleted)": open it again."""
        if self._real_root_text is None:
            return True
        try:
            return os.readlink(f"{PROC_FD}/{fd}") == f"{self._real_root_text}{relative}"
        except OSError:
            return False

    def _display_name(self, archive: str, display_ext: str) -> str:
        # The name rule of a path and extension never changes, so its answers are remembered (bounded).
        key = (archive, display_ext)
        found = self._names.get(key)
        if found is None:
            if len(self._names) >= MAX_REMEMBERED_NAMES:
                self._names.clear()
            found = self._names[key] = self.index.name_rule(Path(archive), display_ext)
        return found

    def forget(self, environ: dict[str, Any]) -> None:
        """Drop the request's resolved resources after a write changed what paths map to.

        Args:
            environ: The WSGI environ.
        """
        cache = environ.get(RESOURCES_KEY)
        if cache is not None:
            cache.clear()

    def _resolve(self, path: str, environ: dict[str, Any]) -> Any:
        relative = path.strip("/")
        if not relative:
            if self.single is not None:
                return SingleArchiveCollection("/", environ, self.index, self.single)
            return self._folder("/", environ, self.root)
        try:
            parts = check_store_name(relative).parts
        except ArchiveError as exc:
            log.info("path refused path=%r reason=%s", path, exc.reason)
            return None
        if self.single is not None:
            return self._single_archive(path, environ, parts) if len(parts) == 1 else None
        directory = self.root
        for part in parts[:-1]:
            directory = directory / part
            if not _is_folder(directory):
                return None
        name = parts[-1]
        if _is_folder(directory / name):
            return self._folder(path, environ, directory / name)
        special = self.resources.special(path, environ, name)
        if special is not None:
            return special
        return self._archive(path, environ, directory, name)

    def _folder(self, path: str, environ: dict[str, Any], directory: Path) -> Folder:
        return self.resources.folder(self, path, environ, directory, self.root)

    def _archive(self, path: str, environ: dict[str, Any], directory: Path, name: str) -> Any:
        candidate = directory / (name + SYNC_SUFFIX)
        if is_archive_name(candidate.name):
            identity = _regular_identity(candidate)
            if identity is not None:
                known = self.index.cached(identity)
                # An archive whose display name is something else cannot be this name; do not open it.
                if (
                    not isinstance(known, ArchiveFacts)
                    or self.index.name_rule(candidate, known.display_ext) == name
                ):
                    resource = self._open(path, environ, candidate)
                    if self.index.name_rule(candidate, resource.facts.display_ext) == name:
                        return resource
                    resource.close()
        listed = self.index.list_directory(directory, self.root).archives.get(name)
        if listed is None:
            return None
        return self._open(path, environ, listed.path)

    def _single_archive(self, path: str, environ: dict[str, Any], parts: tuple[str, ...]) -> Any:
        assert self.single is not None
        try:
            identity: FileIdentity | None = FileIdentity.from_stat(os.stat(self.single))
        except OSError:
            identity = None
        known = None if identity is None else self.index.cached(identity)
        if (
            isinstance(known, ArchiveFacts)
            and self.index.name_rule(self.single, known.display_ext) != parts[0]
        ):
            return None
        # The operator named this file, so it may be a symlink: open it as given.
        resource = self._open(path, environ, self.single, verify=False)
        if self.index.name_rule(self.single, resource.facts.display_ext) != parts[0]:
            resource.close()
            return None
        return resource

    def _open(
        self, path: str, environ: dict[str, Any], archive: Path, *, verify: bool = True
    ) -> OpenedArchive:
        key = archive.relative_to(self.root).as_posix()
        for _ in range(OPEN_ATTEMPTS):
            try:
                resource = self.resources.archive(
                    self, path, environ, archive, key, follow_symlinks=not verify
                )
            except ArchiveError as exc:
                self.index.note_unreadable(archive, _regular_identity(archive), exc)
                raise dav_error(exc, key) from exc
            opened = resource.facts.identity
            now = _regular_identity(archive)
            if not verify or (
                now is not None
                and (now.device, now.inode) == (opened.device, opened.inode)
                and self._reached_as_named(resource.snapshot.fileno(), f"/{key}")
            ):
                self.index.learn(resource.facts)
                return resource
            # The name now points elsewhere (a swap, or something that is not a regular file): what was
            # opened may not be what the store holds under this name, so open again.
            resource.close()
        raise DAVError(HTTP_SERVICE_UNAVAILABLE, f"archive {key} keeps changing while it is opened; retry")

    def _check_freshness(self, archive: Path, facts: ArchiveFacts) -> None:
        if facts.is_expired():
            self._request_refresh(archive, facts)

    def _request_refresh(self, archive: Path, facts: ArchiveFacts) -> None:
        try:
            key = archive_key(self.root, archive)
        except SyncError as exc:
            log.warning("stale archive has no refresh key archive=%s reason=%s", archive, exc.message)
            return
        try:
            self.freshness.on_stale(key, facts.generation, facts.timeout)
        except Exception:
            # The read goes on whatever the hook does; this is where its failure is handled, so it is logged
            # here, with the traceback.
            log.exception("freshness hook failed archive=%s generation=%d", key, facts.generation)


def _is_folder(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_folder_text(path: str, name: str) -> bool:
    if name.startswith("."):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _regular_identity(path: Path | str) -> FileIdentity | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return FileIdentity.from_stat(st) if stat.S_ISREG(st.st_mode) else None
