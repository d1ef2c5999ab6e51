"""The listing cache: what each archive version looks like to a client, keyed by file identity.

A directory listing (PROPFIND Depth 1, the HTML browser, name resolution) stats every entry of one
directory — cheap — and opens an archive only when its identity ``(device, inode, mtime_ns, size,
ctime_ns)`` was not seen before. A swap makes a new inode, an edit changes mtime or size, so a changed
archive is always opened again and an unchanged one never is: no invalidation message is needed
(docs/architecture.md, "The life of a stale read"). The identity includes ``ctime_ns`` too: an in-place
rewrite of the same size with its mtime put back (``os.utime``) moves only the ctime, and is opened again
like any edit. A rename moves the ctime on most file systems, so a renamed archive costs one more open.

Invariants:
    * A listing never raises because of one archive: unreadable archives are left out and logged once per
      identity (a content error is remembered for that identity; an I/O error is retried next time).
    * Display names follow spec §8.1: the read-only rule (``sync_format.display_name``) by default, the
      writable store's rule (``sync_format.writable_display_name``) for a writable server. When several
      archives of one directory show under the same name, the one whose file name is that name plus
      ``.sync`` wins, else the first by file name; a subdirectory beats any archive of its name. The
      losers are left out and logged once.
      ``SyncProvider`` resolves names by the same rule, so a listed name always opens the listed archive.
    * Listings skip hidden names, our temp files and symlinks, exactly like ``sync_format.iter_archives``.
    * The cache is bounded (least recently used entries go) and safe to use from many threads; archives are
      opened outside the lock.
    * A directory's last complete listing is kept with the names and stat keys (identity and ctime) it was
      built from, and returned again only when a fresh scan finds exactly those (so a swap, edit, rename,
      new or removed entry always rebuilds it); a listing that met an I/O error is not kept. Remembered
      listings hold at most ``max_entries`` archives together.
    * A remembered listing answers without a scan only while its directory's watch (``mountd.dav.dir_watch``)
      has reported nothing since before the scan it was built or last confirmed by, the files the watch does
      not vouch for (``dir_watch.trusted``) still have their stat keys, none of its versions waits to be
      recorded in the facts store, and its scan is younger than ``REVERIFY_NS``; otherwise it scans.
    * With a ``FactsStore`` (``mountd.dav.facts_store``), versions missing from memory are looked up on disk
      before any archive is opened, and facts a listing opened are recorded there (under the exact
      ``lstat`` key, ctime included, and only once the version is old enough not to be mid-write); so a
      first listing after a restart opens nothing that did not change.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from mountd.dav.dir_watch import REVERIFY_NS, DirectoryWatcher, Watch, trusted
from mountd.dav.facts import ArchiveFacts
from mountd.dav.facts_store import FactsStore, StatKey, decode_facts, encode_facts, stat_key
from mountd.dav.parallel_opens import share_with_helper
from sync_format import (
    ArchiveError,
    Expiry,
    FileIdentity,
    MalformedArchive,
    display_name,
    open_archive,
    open_archive_at,
)
from sync_format.beneath import open_folder
from sync_format.store import SYNC_SUFFIX, is_archive_name

log = logging.getLogger(__name__)

#: How an archive's display name follows from its path and ``display_ext`` (spec §8.1 has two rules).
NameRule = Callable[[Path, str], str]

#: Most archive versions remembered (facts or failures); about 1 KiB each.
DEFAULT_MAX_ENTRIES = 100_000
#: Most distinct name collisions remembered so that each is logged once.
MAX_LOGGED_COLLISIONS = 10_000
#: Directories whose last listing is remembered whole, reused while none of its entries changed.
MAX_REMEMBERED_LISTINGS = 256
#: Versions remembered for recording in the facts store once they are old enough (``RACY_NS``).
MAX_DEFERRED = 10_000
#: Never-seen archives of one listing from which their opens are shared with a helper process
#: (``mountd.dav.parallel_opens``): forking costs a few milliseconds, about a hundred opens.
PARALLEL_MIN = 500


@dataclass(frozen=True, slots=True)
class ListedArchive:
    """One archive as a listing shows it.

    Attributes:
        path: The archive file.
        name: Its display name.
        facts: What it answers (from the cache or a fresh open).
    """

    path: Path
    name: str
    facts: ArchiveFacts


@dataclass(frozen=True)
class DirectoryListing:
    """One directory of the store as clients see it.

    Attributes:
        directory: The directory.
        folders: Visible subdirectory names, sorted.
        archives: Display name → archive, in file-name order; collisions already resolved.
    """

    directory: Path
    folders: tuple[str, ...]
    archives: Mapping[str, ListedArchive]


@dataclass(frozen=True)
class Unreadable:
    """Why an archive version cannot be listed.

    Attributes:
        code: The error's ``code``.
        reason: The error's message without the path.
    """

    code: str
    reason: str


@dataclass(frozen=True)
class IndexStats:
    """Counters of one index since it was made.

    Attributes:
        opens: Archives opened by the index (cache misses).
        hits: Archive versions answered from the cache.
        learned: Facts recorded from snapshots opened by someone else.
        unreadable: Archive versions found unreadable.
        restored: Archive versions answered from the facts store on disk.
        helper_opens: Of ``opens``, those a first listing's helper process did.
    """

    opens: int
    hits: int
    learned: int
    unreadable: int
    restored: int = 0
    helper_opens: int = 0


_Cached = ArchiveFacts | Unreadable
#: A remembered listing: the names and stat keys it was built from (``_listing_key``), the listing, the
#: directory's watch and change count taken before its scan (None: not watched), the files the watch does
#: not vouch for (path and stat key), when its scan started, and whether versions of it await recording.
_Remembered = tuple[
    tuple[object, ...], DirectoryListing, tuple[Watch, int] | None, tuple[tuple[str, StatKey], ...], int, bool
]


class ArchiveIndex:
    """Facts of archive versions, by identity, and the directory listings built from them.

    Args:
        max_entries: Most archive versions kept.
        name_rule: The display-name rule of listings (the read-only one by default).
        store: Facts kept on disk across restarts; memory only when None. The index closes it.
        clock: Wall-clock nanoseconds, the clock file ctimes are set by (tests move it).
        watcher: Directory watches that let a listing skip the scan of an unchanged folder
            (``mountd.dav.dir_watch``): True for the index's own, False for none (every listing scans).
        parallel_min: Never-seen archives in one listing from which a helper process shares their opens.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        name_rule: NameRule = display_name,
        store: FactsStore | None = None,
        clock: Callable[[], int] = time.time_ns,
        watcher: DirectoryWatcher | bool = True,
        parallel_min: int = PARALLEL_MIN,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        self.name_rule = name_rule
        self._max = max_entries
        self._entries: OrderedDict[FileIdentity, _Cached] = OrderedDict()
        self._logged_io: OrderedDict[FileIdentity, None] = OrderedDict()
        self._collisions: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._listings: OrderedDict[str, _Remembered] = OrderedDict()
        self._listed = 0  # archives in the remembered listings
        self._lock = threading.Lock()
        self._opens = self._hits = self._learned = self._unreadable = self._restored = 0
        self._helper_opens = 0
        self._parallel_min = parallel_min
        self.store = store
        self._clock = clock
        # Versions opened while too young to record: identity → (the key they were read under, directory).
        self._deferred: OrderedDict[FileIdentity, tuple[StatKey, str]] = OrderedDict()
        if watcher is True:
            watcher = DirectoryWatcher(MAX_REMEMBERED_LISTINGS)
        self._watcher = watcher or None

    @property
    def stats(self) -> IndexStats:
        """The counters so far."""
        with self._lock:
            return IndexStats(
                self._opens, self._hits, self._learned, self._unreadable, self._restored, self._helper_opens
            )

    def close(self) -> None:
        """Write what the facts store has queued and close it, drop the directory watches (idempotent;
        memory stays usable, and listings scan)."""
        if self.store is not None:
            self.store.close()
        if self._watcher is not None:
            self._watcher.close()

    def cached(self, identity: FileIdentity) -> ArchiveFacts | Unreadable | None:
        """What is known about an archive version, without opening anything.

        Args:
            identity: The version.

        Returns:
            Its facts, why it is unreadable, or None when it was never seen.
        """
        with self._lock:
            found = self._entries.get(identity)
            if found is not None:
                self._entries.move_to_end(identity)
                self._hits += 1
            return found

    def learn(self, facts: ArchiveFacts) -> None:
        """Record the facts of an archive opened elsewhere (a GET), so a listing need not open it again.

        Args:
            facts: Facts of an open snapshot (they carry its identity).
        """
        with self._lock:
            self._learned += 1
            self._store(facts.identity, facts)

    def forget(self, path: Path) -> None:
        """Drop what is remembered of the archive at ``path``: its directory's listing and the facts of the
        version that listing showed (called when a commit of it is announced, so nothing answers from the
        old generation after the notice; reads look versions up by file identity, which a swap changes).

        Args:
            path: The archive file.
        """
        with self._lock:
            remembered = self._listings.pop(str(path.parent), None)
            if remembered is None:
                return
            self._listed -= len(remembered[1].archives)
            for listed in remembered[1].archives.values():
                if listed.path == path:
                    self._entries.pop(listed.facts.identity, None)

    def note_unreadable(self, path: Path, identity: FileIdentity | None, exc: ArchiveError) -> None:
        """Record and log (once per identity) that an archive could not be opened.

        Args:
            path: The archive.
            identity: Its version as stat saw it, when known.
            exc: What ``open_archive`` raised.
        """
        # A plain ArchiveError comes from open/stat (the file vanished, EMFILE, EACCES): it says nothing
        # about this version's bytes, so it is not remembered and the next listing tries again.
        transient = type(exc) is ArchiveError
        with self._lock:
            if identity is None:
                first = True
            elif transient:
                first = identity not in self._logged_io
                self._logged_io[identity] = None
                while len(self._logged_io) > self._max:
                    self._logged_io.popitem(last=False)
            else:
                first = not isinstance(self._entries.get(identity), Unreadable)
                self._store(identity, Unreadable(exc.code, exc.reason))
            if first:
                self._unreadable += 1
        if first:
            log.warning("archive unreadable archive=%s code=%s reason=%s", path, exc.code, exc.reason)

    def facts_of(
        self, path: Path, identity: FileIdentity, *, follow_symlinks: bool = False
    ) -> ArchiveFacts | None:
        """The facts of one archive version, opening it only when its identity is new.

        Args:
            path: The archive.
            identity: Its version as ``lstat`` saw it a moment ago.
            follow_symlinks: Whether a symlink as its name is followed (only the operator's single archive;
                names in the store are never served through one).

        Returns:
            The facts, or None when the archive is unreadable (logged once).
        """
        found = self.cached(identity)
        if isinstance(found, ArchiveFacts):
            return found
        if isinstance(found, Unreadable):
            return None
        return self._open(path, identity, follow_symlinks=follow_symlinks)

    def _open(
        self,
        path: Path | None,
        identity: FileIdentity,
        source: str | None = None,
        *,
        follow_symlinks: bool = False,
        folder: int | None = None,
        name: str = "",
    ) -> ArchiveFacts | None:
        # Open an archive whose version is not in memory; None when unreadable (noted). ``source`` is
        # ``path`` as text when the caller has it (a listing: the Path need not be formatted, nor made: None
        # when ``source`` is given, made from it only to report a failure). Not through a symlink unless
        # asked: a scan found a regular file there, which may have been swapped since. A listing passes the
        # folder it scanned (``folder``, ``name``): the file is opened in that folder.
        text = path if source is None else source
        if text is None:
            raise ValueError("an archive to open needs a path or a source")
        try:
            if folder is None:
                snapshot = open_archive(text, follow_symlinks=follow_symlinks)
            else:
                snapshot = open_archive_at(folder, name, text)
            try:
                facts = ArchiveFacts.from_snapshot(snapshot)
            finally:
                snapshot.close()
        except ArchiveError as exc:
            self.note_unreadable(Path(text), identity, exc)
            return None
        except Exception:  # a backstop: logged with its traceback below
            # A reader bug met by one hostile file must not fail its whole folder's listing (a manifest
            # nested 5,000 deep once raised RecursionError here, and the folder answered 500): that archive
            # is left out, remembered as unreadable for this version, and the traceback is logged.
            log.exception("archive open failed unexpectedly archive=%s", text)
            self.note_unreadable(Path(text), identity, MalformedArchive("unexpected error while reading it"))
            return None
        with self._lock:
            self._opens += 1
            # Stored under the identity of what was opened: if the file was swapped since the stat, the
            # newer version is what this listing shows and what the next stat will find.
            self._store(facts.identity, facts)
        return facts

    def describe(self, path: Path) -> ListedArchive | None:
        """One archive file as a listing shows it (single-archive mode).

        Args:
            path: The archive.

        Returns:
            The listed archive, or None when it is missing or unreadable.
        """
        try:
            st = os.stat(path)
        except OSError as exc:
            log.warning("archive missing archive=%s reason=%s", path, exc.strerror)
            return None
        facts = self.facts_of(path, FileIdentity.from_stat(st), follow_symlinks=True)  # the operator's file
        if facts is None:
            return None
        return ListedArchive(path, self.name_rule(path, facts.display_ext), facts)

    def list_directory(self, directory: Path, root: Path | None = None) -> DirectoryListing:
        """List one store directory: its visible subdirectories and its readable archives by display name.

        The directory is scanned (``lstat`` of every entry) unless its watch vouches that nothing changed
        since the last listing of it; when no entry was added, removed or changed identity since then, that
        listing is returned as it was, without looking up, naming or sorting its archives again. The scan
        and every archive it opens go through one descriptor of the directory, opened from ``root`` without
        following a symlink (``_open_listed``): a folder swapped for a symlink after the caller's lookup
        lists nothing from where the symlink leads.

        Args:
            directory: The directory (already known to be inside the store and not a symlink).
            root: The store's root (the operator's; followed if it is a symlink); None: ``directory`` is
                the root.

        Returns:
            The listing; an unreadable directory, or one that is no folder now, lists as empty (logged).
        """
        started = self._clock()  # before any lstat: see FactsStore.record
        memo_key = str(directory)
        watched = None if self._watcher is None else self._watcher.begin(directory)  # before the scan
        with self._lock:
            remembered = self._listings.get(memo_key)
        if remembered is not None and watched is not None and _unchanged(remembered, watched, started):
            with self._lock:
                if self._listings.get(memo_key) is remembered:
                    self._listings.move_to_end(memo_key)
                    self._hits += len(remembered[1].archives)
                    return remembered[1]
        folder = _open_listed(directory, root)
        if folder is None:
            return DirectoryListing(directory, (), MappingProxyType({}))  # not remembered: may come back
        try:
            return self._list_scanned(directory, folder, memo_key, remembered, watched, started)
        finally:
            os.close(folder)

    def _list_scanned(
        self,
        directory: Path,
        folder: int,
        memo_key: str,
        remembered: _Remembered | None,
        watched: tuple[Watch, int] | None,
        started: int,
    ) -> DirectoryListing:
        # ``list_directory`` once it has the folder open and no remembered listing stood without a scan.
        folders, files = _scan(folder, directory)
        # Compared in place: building the key of 10,000 files for nothing cost half a MB per request.
        if remembered is not None and not _same_entries(remembered[0], folders, files):
            remembered = None
        with self._lock:
            if remembered is not None and self._listings.get(memo_key) is remembered:
                self._listings.move_to_end(memo_key)
                self._hits += len(remembered[1].archives)
                deferred = bool(self._deferred)
            else:
                remembered = None
        if remembered is not None:
            if deferred:
                self._record_deferred(memo_key, files, started)
            if watched is not None:  # the scan found it unchanged: it stands for this scan's count now
                self._remember(memo_key, remembered, watched, _untrusted(directory, files), started)
            return remembered[1]
        facts_found, complete = self._facts_of_files(directory, folder, memo_key, files, started)
        found: list[ListedArchive] = []
        child = _child_paths(directory)
        for (name, _), facts in zip(files, facts_found, strict=True):
            if facts is not None:
                path = child(name)
                found.append(ListedArchive(path, self.name_rule(path, facts.display_ext), facts))
        archives = self._resolve_collisions(directory, found, set(folders))
        listing = DirectoryListing(directory, folders, MappingProxyType(archives))
        if complete and len(files) <= self._max:
            key = _listing_key(folders, files)
            untrusted = () if watched is None else _untrusted(directory, files)
            with self._lock:
                old = self._listings.pop(memo_key, None)
                if old is not None:
                    self._listed -= len(old[1].archives)
                young = watched is not None and any(where == memo_key for _, where in self._deferred.values())
                self._listings[memo_key] = (key, listing, watched, untrusted, started, young)
                self._listed += len(archives)
                # Bounded like the facts: no more listed archives than ``max_entries``, in few directories.
                while len(self._listings) > MAX_REMEMBERED_LISTINGS or self._listed > self._max:
                    self._listed -= len(self._listings.popitem(last=False)[1][1].archives)
        return listing

    def archive_facts(
        self, directory: Path, stop: threading.Event | None = None, root: Path | None = None
    ) -> tuple[tuple[str, ...], list[tuple[Path, ArchiveFacts]]]:
        """Every readable archive of one store directory with its facts, as a listing learns them (memory,
        then the facts store, then opening, shared with a helper when many are new), but without display
        names: an archive another one hides from listings by its name is here too (what the refresh
        scheduler walks).

        Args:
            directory: The directory (already known to be inside the store and not a symlink).
            stop: When it is set, no further archive is opened (checked between two) and nothing is returned.
            root: The store's root, as for ``list_directory``.

        Returns:
            Its visible subdirectory names, and its readable archives with their facts in file-name order;
            nothing at all when ``stop`` was set meanwhile.
        """
        started = self._clock()
        folder = _open_listed(directory, root)
        if folder is None:
            return (), []
        try:
            folders, files = _scan(folder, directory)
            facts_found, _ = self._facts_of_files(directory, folder, str(directory), files, started, stop)
        except _Stopped:
            return (), []
        finally:
            os.close(folder)
        child = _child_paths(directory)
        return folders, [
            (child(name), facts)
            for (name, _), facts in zip(files, facts_found, strict=True)
            if facts is not None
        ]

    def _facts_of_files(
        self,
        directory: Path,
        folder: int,
        memo_key: str,
        files: tuple[tuple[str, os.stat_result], ...],
        started: int,
        stop: threading.Event | None = None,
    ) -> tuple[list[ArchiveFacts | None], bool]:
        # The facts of each scanned file (None: unreadable, noted), from memory, the facts store or opening;
        # and whether the answer is complete (False when an I/O error may go away: not to be remembered).
        identities = [
            FileIdentity(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns) for _, st in files
        ]
        known: list[_Cached | None] = []
        with self._lock:
            entries = self._entries
            for identity in identities:
                cached = entries.get(identity)
                if cached is not None:
                    entries.move_to_end(identity)
                known.append(cached)
            self._hits += len(known) - known.count(None)
        misses = [i for i, cached in enumerate(known) if cached is None]
        if misses and self.store is not None:
            restored = self.store.lookup([files[i][1] for i in misses], [identities[i] for i in misses])
            if restored:
                with self._lock:
                    for j, facts in restored.items():
                        known[misses[j]] = facts
                        self._store(facts.identity, facts)
                    self._restored += len(restored)
        if self._deferred:
            self._record_deferred(memo_key, files, started)
        pending = [position for position, cached in enumerate(known) if cached is None]
        fresh: dict[int, ArchiveFacts | None] = {}
        if pending:
            prefix = os.path.join(memo_key, "")
            fresh = self._open_all(pending, files, identities, folder, prefix, stop)
        found: list[ArchiveFacts | None] = []
        complete = True
        for position, ((_, st), identity, cached) in enumerate(zip(files, identities, known, strict=True)):
            if cached is None:
                opened = fresh[position]
                if opened is None:
                    if not isinstance(self.cached(identity), Unreadable):
                        complete = False  # an I/O error, not remembered: the next listing tries again
                elif self.store is not None and not self.store.record(stat_key(st), opened, started):
                    self._defer(identity, stat_key(st), memo_key)
                found.append(opened)
            elif isinstance(cached, Unreadable):
                found.append(None)
            else:
                found.append(cached)
        return found, complete

    def _open_all(
        self,
        pending: list[int],
        files: tuple[tuple[str, os.stat_result], ...],
        identities: list[FileIdentity],
        folder: int,
        prefix: str,
        stop: threading.Event | None,
    ) -> dict[int, ArchiveFacts | None]:
        # Open the archives at these positions of a scan (versions never seen): position → facts, or None
        # when unreadable (noted). Many at once are shared with a forked helper (``parallel_opens``). Raises
        # _Stopped when ``stop`` is set before an open, or before the helper's facts are kept.
        opened: dict[int, ArchiveFacts | None] = {}

        def own(n: int) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped
            position = pending[n]
            name = files[position][0]
            opened[position] = self._open(None, identities[position], prefix + name, folder=folder, name=name)

        if len(pending) < self._parallel_min:
            for n in range(len(pending)):
                own(n)
            return opened
        expiries: dict[tuple[object, ...], Expiry] = {}
        learned: list[ArchiveFacts] = []
        redo: list[int] = []

        def receive(n: int, sent: tuple[object, ...]) -> None:
            facts = _received_facts(sent, expiries)
            if facts is None:
                redo.append(n)
            else:
                opened[pending[n]] = facts
                learned.append(facts)

        def theirs(n: int) -> tuple[object, ...]:
            name = files[pending[n]][0]
            return _sent_facts(folder, name, prefix + name)

        share = share_with_helper(len(pending), own, theirs, receive, keep=(folder,))
        if stop is not None and stop.is_set():
            raise _Stopped
        redo += share.missing(len(pending))
        with self._lock:
            self._opens += len(learned)
            self._helper_opens += len(learned)
            for facts in learned:
                self._store(facts.identity, facts)
        for n in redo:  # what the helper did not send: opened (and any failure noted) here
            own(n)
        return opened

    def _remember(
        self,
        memo_key: str,
        remembered: _Remembered,
        watched: tuple[Watch, int],
        untrusted: tuple[tuple[str, StatKey], ...],
        started: int,
    ) -> None:
        # A scan that began after ``watched`` was taken found ``remembered`` unchanged: let it answer later
        # listings without a scan while the watch reports nothing more.
        with self._lock:
            if self._listings.get(memo_key) is remembered:
                young = any(where == memo_key for _, where in self._deferred.values())
                self._listings[memo_key] = (remembered[0], remembered[1], watched, untrusted, started, young)

    def _defer(self, identity: FileIdentity, key: StatKey, directory: str) -> None:
        with self._lock:
            self._deferred[identity] = (key, directory)
            while len(self._deferred) > MAX_DEFERRED:
                self._deferred.popitem(last=False)

    def _record_deferred(
        self, directory: str, files: Iterable[tuple[str, os.stat_result]], started: int
    ) -> None:
        # Versions of this directory that were too young when opened: record them now if lstat still sees
        # exactly the version that was opened (same ctime: not written since) and it has grown old enough;
        # forget those that changed or went.
        store = self.store
        if store is None:
            return
        with self._lock:
            mine = [(ident, key) for ident, (key, where) in self._deferred.items() if where == directory]
        if not mine:
            return
        present = {stat_key(st) for _, st in files}
        for identity, key in mine:
            with self._lock:
                facts = self._entries.get(identity)
            done = (  # the file changed or went since it was opened, or it is recorded now
                key not in present or not isinstance(facts, ArchiveFacts) or store.record(key, facts, started)
            )
            if done:
                with self._lock:
                    self._deferred.pop(identity, None)

    def _resolve_collisions(
        self, directory: Path, found: Iterable[ListedArchive], folders: set[str]
    ) -> dict[str, ListedArchive]:
        found = found if isinstance(found, list) else list(found)
        archives = {listed.name: listed for listed in found}
        if len(archives) == len(found) and folders.isdisjoint(archives):
            return archives  # no collision (the usual case): each archive shows under its own name
        groups: dict[str, list[ListedArchive]] = {}
        for listed in found:  # in file-name order
            groups.setdefault(listed.name, []).append(listed)
        archives = {}
        for name, group in groups.items():
            if name in folders:
                self._log_collision(directory, name, (), group)
                continue
            winner = next((a for a in group if a.path.name == name + SYNC_SUFFIX), group[0])
            if len(group) > 1:
                self._log_collision(directory, name, (winner,), [a for a in group if a is not winner])
            archives[name] = winner
        return archives

    def _log_collision(
        self,
        directory: Path,
        name: str,
        winners: tuple[ListedArchive, ...],
        losers: list[ListedArchive],
    ) -> None:
        key = (str(directory), name, *(a.path.name for a in winners), *(a.path.name for a in losers))
        with self._lock:
            if key in self._collisions:
                return
            self._collisions[key] = None
            while len(self._collisions) > MAX_LOGGED_COLLISIONS:
                self._collisions.popitem(last=False)
        shown = winners[0].path.name if winners else "the folder"
        log.warning(
            "display name collision directory=%s name=%s shown=%s hidden=%s",
            directory,
            name,
            shown,
            ",".join(a.path.name for a in losers),
        )

    def _store(self, identity: FileIdentity, value: _Cached) -> None:
        # Caller holds the lock.
        self._entries[identity] = value
        self._entries.move_to_end(identity)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class _Stopped(Exception):
    """``archive_facts`` was asked to stop."""


def _sent_facts(folder: int, name: str, source: str) -> tuple[object, ...]:
    # In the helper process: one archive's facts as plain values (raises when unreadable or unstorable; the
    # listing opens that one again itself and notes why). ``folder`` is the listing's, inherited by fork.
    snapshot = open_archive_at(folder, name, source)
    try:
        facts = ArchiveFacts.from_snapshot(snapshot)
    finally:
        snapshot.close()
    values = encode_facts(facts)
    if values is None:
        raise ValueError("facts beyond what can be sent")
    identity = facts.identity
    return (identity.device, identity.inode, identity.mtime_ns, identity.size, identity.ctime_ns, *values)


def _received_facts(
    sent: tuple[object, ...], expiries: dict[tuple[object, ...], Expiry]
) -> ArchiveFacts | None:
    # ``_sent_facts``'s values as received from the helper; None when they are not such values.
    if type(sent) is not tuple or len(sent) != 20:
        return None
    head = sent[:5]
    if tuple(map(type, head)) != _FIVE_INTS:
        return None
    return decode_facts(sent[5:], _new_tuple(FileIdentity, head), expiries)


_FIVE_INTS = (int,) * 5
_new_tuple = tuple.__new__  # a named tuple without its Python-level ``__new__`` (one per received archive)


def _child_paths(directory: Path) -> Callable[[str], Path]:
    """``directory / name`` for names a scan returned (never a separator, ``.`` or ``..``).

    ``/`` parses the joined part again (measured ~5 µs; 10,000 of them were a tenth of a first listing);
    pathlib's own helper for the names ``iterdir`` returns does not. It is private: where it is missing,
    ``/``. A test checks both give equal paths.
    """
    make: Callable[[str], Path] | None = getattr(directory, "_make_child_relpath", None)
    return directory.__truediv__ if make is None else make


def _unchanged(remembered: _Remembered, watched: tuple[Watch, int], started: int) -> bool:
    # Whether a remembered listing still holds without a scan: its directory's watch reported nothing since
    # before its scan (the same watch, the same count), it is younger than ``REVERIFY_NS``, none of its
    # versions waits to be recorded on disk (that takes a scan), and the files the watch does not vouch
    # for have the stat keys they had.
    _, _, when_scanned, untrusted, scanned_ns, young = remembered
    if when_scanned is None or young or not 0 <= started - scanned_ns < REVERIFY_NS:  # (a clock set back too)
        return False
    if when_scanned[0] is not watched[0] or when_scanned[1] != watched[1]:
        return False
    for path, key in untrusted:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if stat_key(st) != key:
            return False
    return True


def _untrusted(
    directory: Path, files: tuple[tuple[str, os.stat_result], ...]
) -> tuple[tuple[str, StatKey], ...]:
    # The files whose changes a watch on their directory might not see (``dir_watch.trusted``).
    return tuple((f"{directory}/{name}", stat_key(st)) for name, st in files if not trusted(st))


def _listing_key(
    folders: tuple[str, ...], files: tuple[tuple[str, os.stat_result], ...]
) -> tuple[object, ...]:
    # What a remembered listing is valid for: folder names, and each file's name and ``stat_key``. Flat, of
    # strings and ints only: one container instead of one per file, so a warm listing of a big folder does
    # not feed the cyclic GC thousands of tuples (measured: that GC work was most of a warm listing).
    flat: list[object] = [folders]
    add = flat.append
    for name, st in files:
        add(name)
        add(st.st_dev)
        add(st.st_ino)
        add(st.st_size)
        add(st.st_mtime_ns)
        add(st.st_ctime_ns)
    return tuple(flat)


def _same_entries(
    key: tuple[object, ...], folders: tuple[str, ...], files: tuple[tuple[str, os.stat_result], ...]
) -> bool:
    # ``key == _listing_key(folders, files)``, without building the right-hand side.
    if len(key) != 1 + 6 * len(files) or key[0] != folders:
        return False
    at = 1
    for name, st in files:
        if (
            key[at] != name
            or key[at + 1] != st.st_dev
            or key[at + 2] != st.st_ino
            or key[at + 3] != st.st_size
            or key[at + 4] != st.st_mtime_ns
            or key[at + 5] != st.st_ctime_ns
        ):
            return False
        at += 6
    return True


#: ``Path._make_child_relpath``: ``directory / name`` for one plain name without parsing it again (7 times
#: cheaper; a first listing makes a path per archive). A private method, so only used where it exists.
#: How a listed folder is opened: to read its entries, and to open the archives it holds through it.
LISTED_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_listed(directory: Path, root: Path | None) -> int | None:
    """A descriptor of ``directory``, opened from ``root`` one folder at a time without following a symlink
    (``sync_format.beneath.open_folder``; no ``/proc`` needed); the root itself is the operator's and
    followed. None when it cannot be opened or is no folder now (logged): the caller lists nothing."""
    try:
        if root is None or directory == root:
            return os.open(directory, LISTED_FOLDER_FLAGS & ~os.O_NOFOLLOW)
        names = directory.relative_to(root).parts
        if ".." in names:
            log.warning("directory unreadable directory=%s reason=not below the store", directory)
            return None
        parent = open_folder(root, names[:-1], directory)
        try:
            return os.open(names[-1], LISTED_FOLDER_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as exc:
        reason = exc.strerror if exc.errno not in (errno.ELOOP, errno.ENOTDIR) else "no folder now"
        log.warning("directory unreadable directory=%s reason=%s", directory, reason)
    except ArchiveError as exc:
        log.warning("directory unreadable directory=%s reason=%s", directory, exc.reason)
    except ValueError:  # not below the root: no caller asks for that
        log.warning("directory unreadable directory=%s reason=not below the store", directory)
    return None


def _scan(folder: int, directory: Path) -> tuple[tuple[str, ...], tuple[tuple[str, os.stat_result], ...]]:
    """Visible subdirectory names and archive files with their ``lstat``, sorted by name, of the folder open
    on ``folder`` (``directory`` names it in logs).

    An unreadable directory has none (logged).
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        log.warning("directory unreadable directory=%s reason=%s", directory, exc.strerror)
        return (), ()
    folders: list[str] = []
    files: list[tuple[str, os.stat_result]] = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        if not _is_utf8(name):
            _note_undecodable(directory, name)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished since scandir
        if stat.S_ISDIR(st.st_mode):
            folders.append(name)
        elif stat.S_ISREG(st.st_mode) and is_archive_name(name):
            files.append((name, st))
    return tuple(folders), tuple(files)


#: Names not valid UTF-8 noted in the log already (bounded: the oldest are forgotten).
_UNDECODABLE: OrderedDict[tuple[str, str], None] = OrderedDict()
_UNDECODABLE_LOCK = threading.Lock()
#: Most such names remembered.
MAX_UNDECODABLE_NOTED = 1024


def _is_utf8(name: str) -> bool:
    # A name whose bytes are not UTF-8 comes from ``os.scandir`` with surrogates (PEP 383): no URL names it,
    # and encoding it for a response would fail the whole listing.
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _note_undecodable(directory: Path, name: str) -> None:
    key = (str(directory), name)
    with _UNDECODABLE_LOCK:
        if key in _UNDECODABLE:
            return
        _UNDECODABLE[key] = None
        if len(_UNDECODABLE) > MAX_UNDECODABLE_NOTED:
            _UNDECODABLE.popitem(last=False)
    shown = os.fsencode(name).decode("utf-8", "backslashreplace")
    log.warning("entry skipped directory=%s name=%s reason=not UTF-8", directory, shown)
