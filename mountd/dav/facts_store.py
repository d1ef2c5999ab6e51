"""The facts index on disk: what archive versions look like, kept across restarts of mountd.

Why: a first listing of a folder opens every archive (``ArchiveIndex``), ~100 µs each in Python, so a
folder of 10,000 archives took seconds after every restart although archives rarely change and a refresh
never changes a manifest. This store keeps each listed version's ``ArchiveFacts`` in SQLite (stdlib
``sqlite3``, WAL) under ``<cache_dir>/mountd-facts/``, so a first listing after a restart is ``lstat`` calls
and a few indexed queries.

Invariants:
    * Exact invalidation: a row is keyed by the file's ``(st_dev, st_ino)`` and answers only when
      ``st_size``, ``st_mtime_ns`` and ``st_ctime_ns`` are equal too. Users can set mtime (``os.utime``) but
      not ctime, which every write, rename, ``utime`` and inode reuse moves to "now": an in-place rewrite
      with the old size and mtime, or a new file on a reused inode with a forged mtime, never matches an
      old row. (A system clock set backwards by root could repeat a ctime; that is outside the threat model.)
    * No torn or racy facts: a version is recorded only when its ctime is older than ``RACY_NS`` before the
      listing started (``lstat`` came before the open, so any write during or after the open gives the file a
      later ctime than the recorded key). Younger versions are recorded by a later listing.
    * Never trusted blindly: the directory must be ours (owner = effective uid) and writable by nobody else,
      and so must the database file; otherwise the store is refused (logged) and mountd keeps facts in
      memory only. Rows are re-validated when read (types, ranges, header-safe values); a bad row is a miss.
      Each fact is a column of its own, checked for type and range by the query itself (in SQLite's C, not
      per row in Python: decoding a JSON text per row was most of a restart's first listing), and the
      values that become headers or names again in Python.
      A corrupt database (not SQLite, torn pages) is deleted and rebuilt once; any later database error
      disables the store for this process (logged once). Nothing here ever fails a request.
    * Several mountd processes may share the file: WAL mode, one transaction per batch, ``INSERT OR
      REPLACE`` (the last writer of a key wins; every writer writes correct facts for that exact key).
    * Writes never run on a request thread: recorded facts are queued, then encoded and written in one
      transaction by a background thread once the queue stops growing (after the listing, not during it).
      Bounded: at most ``max_rows`` rows (the least recently written or used go), and at most
      ``MAX_QUEUED`` queued rows (more are dropped: a later listing records them).
    * ``SCHEMA_VERSION`` names the row format and how facts are computed: bump it when ``ArchiveFacts`` or
      its derivation changes, and older files are emptied on open.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from mountd.dav.facts import ArchiveFacts, make_facts
from sync_format import Expiry, FileIdentity
from sync_format.media import display_ext_problem, safe_content_type

log = logging.getLogger(__name__)

#: Row format and facts derivation; a file of another version is emptied when opened.
SCHEMA_VERSION = 3
#: Subdirectory of the cache directory that holds the database (mode 0700).
DIR_NAME = "mountd-facts"
#: The database file in it (SQLite adds ``-wal`` and ``-shm`` beside it).
DB_NAME = "facts.sqlite3"
#: Most rows kept (about 250 bytes each on disk).
DEFAULT_MAX_ROWS = 200_000
#: Nanoseconds a file's ctime must lie before the listing's start for its facts to be recorded.
RACY_NS = 2_000_000_000
#: Rows queued for the writer at most; more are dropped until it catches up.
MAX_QUEUED = 100_000
#: Seconds without a new queued row the writer waits for before writing, so that a listing's rows go in
#: one transaction after it, not while it runs (measured: writing during a first listing of 10,000 archives
#: made it half again slower on two cores).
FLUSH_DELAY = 0.3
#: Seconds the writer waits at most after the first queued row.
MAX_FLUSH_DELAY = 5.0
#: Seconds a connection waits for another process's write lock.
BUSY_TIMEOUT = 2.0
#: Inodes asked for per query.
LOOKUP_CHUNK = 500
#: Nanoseconds after which a row that answered a lookup has its use time refreshed (so pruning keeps it).
TOUCH_AFTER_NS = 3600 * 1_000_000_000
#: SQLite's page cache per connection, in KiB (its default is 2 MiB; the OS caches the file anyway).
CACHE_KIB = 256
#: Largest value SQLite stores as an integer.
INT64_MAX = 2**63 - 1

#: The facts of a row, in the order ``encode_facts`` gives them.
FACT_COLUMNS = (
    "ext",
    "ctype",
    "payload_size",
    "payload_offset",
    "etag",
    "modified",
    "generation",
    "updated_at",
    "ttl",
    "timeout",
    "base",
    "at_ns",
    "error",
    "logic",
    "crc",
)
_SELECT = f"SELECT dev, ino, size, mtime_ns, ctime_ns, used_ns, {', '.join(FACT_COLUMNS)} FROM facts"  # noqa: S608  (constants)
#: What every row a lookup returns must satisfy (what ``encode_facts`` writes); the rest is checked in Python.
_VALID = " AND ".join(
    (
        "typeof(size) = 'integer'",
        "typeof(mtime_ns) = 'integer'",
        "typeof(ctime_ns) = 'integer'",
        "typeof(ext) = 'text'",
        "typeof(ctype) = 'text'",
        "typeof(payload_size) = 'integer' AND payload_size >= 0",
        "typeof(payload_offset) = 'integer' AND payload_offset >= 0",
        "payload_size <= size - payload_offset",
        "typeof(etag) = 'text'",
        "typeof(modified) IN ('integer', 'real') AND modified BETWEEN -1e300 AND 1e300",
        "typeof(generation) = 'integer' AND generation >= 0",
        "typeof(updated_at) IN ('null', 'text')",
        "typeof(ttl) = 'integer' AND ttl >= 0",
        "typeof(timeout) = 'integer' AND timeout >= 0",
        "typeof(base) = 'text'",
        "typeof(at_ns) IN ('null', 'integer')",
        "typeof(error) IN ('null', 'text')",
        "typeof(logic) = 'integer' AND logic IN (0, 1)",
        "typeof(crc) = 'integer' AND crc BETWEEN -1 AND 4294967295",
    )
)
_INSERT = f"INSERT OR REPLACE INTO facts VALUES ({', '.join('?' * (6 + len(FACT_COLUMNS)))})"  # noqa: S608  (constants)
_ETAG = re.compile(r"[0-9A-Za-z-]{1,128}")

#: What a row is keyed and checked by: (dev, ino, size, mtime_ns, ctime_ns).
StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    """The key of a file version as ``lstat``/``fstat`` sees it.

    Args:
        st: The stat result.

    Returns:
        ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FactsStore:
    """Facts of archive versions in a private SQLite file, shared by the mountd processes of one cache dir.

    Use ``FactsStore.open``; ``close`` writes what is queued and stops the writer thread.

    Args:
        path: The database file (its directory already checked).
        max_rows: Most rows kept.
    """

    def __init__(self, path: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.path = path
        self._max_rows = max_rows
        self._reader = _connect(path)
        self._read_lock = threading.Lock()
        self._queue: list[tuple[StatKey, ArchiveFacts]] = []
        self._touch: list[tuple[int, int]] = []
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._disabled = False
        self._writer_db: sqlite3.Connection | None = None
        self._writer = threading.Thread(target=self._write_loop, name="mountd-facts-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, cache_dir: Path, *, max_rows: int = DEFAULT_MAX_ROWS) -> FactsStore | None:
        """The store in ``cache_dir``, created when missing; None (logged) when it may not or cannot be used.

        Args:
            cache_dir: The settings' cache directory.
            max_rows: Most rows kept.

        Returns:
            The store, or None: mountd then keeps facts in memory only.
        """
        directory = cache_dir / DIR_NAME
        try:
            cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
            problem = _foreign(directory, is_dir=True) or _foreign_file(directory / DB_NAME)
        except OSError as exc:
            problem = f"cannot create it: {exc.strerror}"
        if problem is not None:
            log.warning("facts index refused directory=%s reason=%s; listings start cold", directory, problem)
            return None
        path = directory / DB_NAME
        for attempt in (1, 2):
            try:
                return cls(path, max_rows=max_rows)
            except sqlite3.DatabaseError as exc:
                if attempt == 2:
                    log.warning("facts index unusable path=%s reason=%s; listings start cold", path, exc)
                    return None
                log.warning("facts index corrupt path=%s reason=%s; rebuilt", path, exc)
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.unlink(f"{path}{suffix}")
                    except FileNotFoundError:
                        pass
                    except OSError:
                        return None
        return None  # pragma: no cover  (the loop returns)

    @property
    def usable(self) -> bool:
        """False once a database error disabled the store for this process."""
        return not self._disabled

    def lookup(
        self, stats: Sequence[os.stat_result], identities: Sequence[FileIdentity] | None = None
    ) -> dict[int, ArchiveFacts]:
        """Facts recorded for these exact file versions.

        Args:
            stats: ``lstat`` results of archive files.
            identities: ``FileIdentity.from_stat`` of each, when the caller has them (the facts share them).

        Returns:
            Position in ``stats`` → facts, for the versions found (with a matching size, mtime and ctime and
            a valid row); the others are misses.
        """
        if self._disabled or not stats:
            return {}
        # (dev, ino) → position; a second name of the same inode (a hard link in the same folder) is rare.
        wanted: dict[tuple[int, int], int] = {}
        again: dict[tuple[int, int], list[int]] = {}
        by_dev: dict[int, list[int]] = {}
        for position, st in enumerate(stats):
            dev, ino = key = (st.st_dev, st.st_ino)
            if wanted.setdefault(key, position) != position:
                again.setdefault(key, []).append(position)
            else:
                inodes = by_dev.get(dev)
                if inodes is None:
                    inodes = by_dev[dev] = []
                inodes.append(ino)
        rows: list[tuple[Any, ...]] = []
        try:
            with self._read_lock:
                for dev, candidates in by_dev.items():
                    if not 0 <= dev <= INT64_MAX:
                        continue
                    inodes = [ino for ino in candidates if 0 <= ino <= INT64_MAX]
                    for start in range(0, len(inodes), LOOKUP_CHUNK):
                        chunk = inodes[start : start + LOOKUP_CHUNK]
                        marks = ",".join("?" * len(chunk))  # placeholders only: values are bound
                        query = f"{_SELECT} WHERE dev = ? AND ino IN ({marks}) AND {_VALID}"
                        rows.extend(self._reader.execute(query, (dev, *chunk)))
        except sqlite3.Error as exc:
            self._disable(exc)
            return {}
        found: dict[int, ArchiveFacts] = {}
        stale_use = time.time_ns() - TOUCH_AFTER_NS
        touch: list[tuple[int, int]] = []
        expiries: dict[tuple[Any, ...], Expiry] = {}  # one object per distinct expiry of this lookup
        for row in rows:
            dev, ino, size, mtime_ns, ctime_ns, used_ns = row[:6]
            first = wanted.get((dev, ino))
            if first is None:
                continue
            for position in (first,) if not again else (first, *again.get((dev, ino), ())):
                st = stats[position]
                if st.st_size != size or st.st_mtime_ns != mtime_ns or st.st_ctime_ns != ctime_ns:
                    continue
                if identities is None:
                    identity = FileIdentity(dev, ino, mtime_ns, size, ctime_ns)
                else:
                    identity = identities[position]
                facts = _facts_of(row, identity, expiries)
                if facts is not None:
                    found[position] = facts
                    if type(used_ns) is int and used_ns < stale_use:
                        touch.append((dev, ino))
        if touch:
            with self._queue_lock:
                self._touch.extend(touch[:MAX_QUEUED])
            self._wake.set()
        return found

    def record(self, key: StatKey, facts: ArchiveFacts, listing_started_ns: int) -> bool:
        """Queue the facts of one file version for writing, when it is safe to remember them.

        Args:
            key: The version as ``lstat`` saw it before the archive was opened.
            facts: What opening it gave.
            listing_started_ns: ``time.time_ns()`` taken before that ``lstat``.

        Returns:
            False when the version is too young to be recorded now (``RACY_NS``): try again later.
        """
        dev, ino, size, _, ctime_ns = key
        identity = facts.identity
        opened = (identity.device, identity.inode, identity.size, identity.mtime_ns, identity.ctime_ns)
        if opened != key:
            return True  # the file changed between lstat and open: nothing to record under this key
        if ctime_ns >= listing_started_ns - RACY_NS:
            return False
        if self._disabled or not (0 <= dev <= INT64_MAX and 0 <= ino <= INT64_MAX and 0 <= size <= INT64_MAX):
            return True
        with self._queue_lock:
            if len(self._queue) >= MAX_QUEUED:
                return True
            first = not self._queue
            self._queue.append((key, facts))  # encoded by the writer, off the request thread
        if first:  # waking the writer for every row cost a thread switch per archive
            self._wake.set()
        return True

    def flush(self) -> None:
        """Write everything queued now (the writer thread does this by itself)."""
        self._write_batch()

    def close(self) -> None:
        """Write what is queued, stop the writer, close the connections (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._writer.join(BUSY_TIMEOUT * 5)
        with self._read_lock:
            self._reader.close()

    # --- the writer thread -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            deadline = time.monotonic() + MAX_FLUSH_DELAY
            queued = -1
            while not self._stopping and time.monotonic() < deadline and queued != len(self._queue):
                queued = len(self._queue)  # still being fed: wait for a quiet moment
                self._wake.wait(FLUSH_DELAY)  # (``close`` ends the wait)
            self._write_batch()
        self._write_batch()  # what was queued while the last batch was being written
        if self._writer_db is not None:
            self._writer_db.close()

    def _write_batch(self) -> None:
        with self._queue_lock:
            queued, self._queue = self._queue, []
            touch, self._touch = self._touch, []
        if (not queued and not touch) or self._disabled:
            return
        now = time.time_ns()
        rows = [(*key, now, *values) for key, facts in queued if (values := encode_facts(facts)) is not None]
        on_writer = threading.current_thread() is self._writer
        try:
            db = self._writer_db if on_writer else None
            if db is None:
                db = _connect(self.path)
                if on_writer:
                    self._writer_db = db
            try:
                # One transaction per batch (autocommit connections: ``with db`` alone would commit each
                # row by itself).
                db.execute("BEGIN IMMEDIATE")
                with db:
                    db.executemany(_INSERT, rows)
                    db.executemany(
                        "UPDATE facts SET used_ns = ? WHERE dev = ? AND ino = ?",
                        [(time.time_ns(), dev, ino) for dev, ino in touch],
                    )
                    (count,) = db.execute("SELECT count(*) FROM facts").fetchone()
                    if count > self._max_rows:
                        db.execute(
                            "DELETE FROM facts WHERE (dev, ino) IN"
                            " (SELECT dev, ino FROM facts ORDER BY used_ns LIMIT ?)",
                            (count - self._max_rows,),
                        )
            finally:
                if not on_writer:
                    db.close()
        except sqlite3.OperationalError as exc:
            # Busy past the timeout (another process writes a big batch), disk full: these facts are lost,
            # a later listing records them again.
            log.warning("facts index write skipped path=%s rows=%d reason=%s", self.path, len(rows), exc)
        except sqlite3.Error as exc:
            self._disable(exc)

    def _disable(self, exc: sqlite3.Error) -> None:
        if not self._disabled:
            self._disabled = True
            log.warning("facts index disabled path=%s reason=%s; listings open archives", self.path, exc)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            with db:
                db.execute("BEGIN IMMEDIATE")
                (version,) = db.execute("PRAGMA user_version").fetchone()
                if version != SCHEMA_VERSION:
                    db.execute("DROP TABLE IF EXISTS facts")
                    # The fact columns have no type: values are kept exactly as bound, and checked when read.
                    db.execute(
                        "CREATE TABLE facts (dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                        " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                        f" used_ns INTEGER NOT NULL, {', '.join(FACT_COLUMNS)}, PRIMARY KEY (dev, ino))"
                        " WITHOUT ROWID"
                    )
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        else:
            db.execute(f"{_SELECT} LIMIT 1").fetchall()
    except BaseException:
        db.close()
        raise
    return db


def _foreign(path: Path, *, is_dir: bool) -> str | None:
    # Why ``path`` may not hold our facts (another user could plant rows), or None.
    st = os.lstat(path)
    if is_dir and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _foreign_file(path: Path) -> str | None:
    # The database file, created private when missing (SQLite gives -wal and -shm the same mode).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    problem = _foreign(path, is_dir=False)
    for suffix in ("-wal", "-shm"):
        if problem is None and os.path.lexists(f"{path}{suffix}"):
            problem = _foreign(Path(f"{path}{suffix}"), is_dir=False)
    return problem


def encode_facts(facts: ArchiveFacts) -> tuple[object, ...] | None:
    """One row's fact columns for ``facts`` (its identity is the row's key), or None when they cannot be
    stored (an integer beyond SQLite's, a time that is not finite)."""
    expiry = facts.expiry
    values = (
        facts.display_ext,
        facts.content_type,
        facts.payload_size,
        facts.payload_offset,
        facts.etag,
        facts.last_modified,
        facts.generation,
        facts.updated_at,
        facts.ttl,
        facts.timeout,
        expiry.base,
        expiry.at_ns,
        expiry.error,
        int(facts.has_update_logic),
        facts.payload_crc32,
    )
    for value in values:
        if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
            return None
    if not math.isfinite(facts.last_modified):
        return None
    return values


def decode_facts(
    values: object, identity: FileIdentity, expiries: dict[tuple[Any, ...], Expiry]
) -> ArchiveFacts | None:
    """The facts ``encode_facts`` gave ``values`` for, checked like a row of the database (``_VALID``); None
    when they are not such values (how a first listing's helper process sends facts back,
    ``mountd.dav.parallel_opens``).

    Args:
        values: What ``encode_facts`` returned, as received.
        identity: The file version the facts are of.
        expiries: Expiry objects already made by this caller, by value (shared between facts).
    """
    # One look-up for every type (``_VALID``'s typeof checks), then the ranges.
    if type(values) is not tuple or tuple(map(type, values)) not in _SIGNATURES:
        return None
    (_, _, size, offset, _, modified, generation, _, ttl, timeout, _, at_ns, _, logic, crc) = values
    if not (
        0 <= offset <= INT64_MAX
        and 0 <= size <= identity.size - offset
        and -1e300 <= modified <= 1e300
        and 0 <= generation <= INT64_MAX
        and 0 <= ttl <= INT64_MAX
        and 0 <= timeout <= INT64_MAX
        and (at_ns is None or -INT64_MAX - 1 <= at_ns <= INT64_MAX)
        and logic in (0, 1)
        and -1 <= crc <= 4294967295
    ):
        return None
    return _facts_of((None,) * 6 + values, identity, expiries)


#: The types ``encode_facts`` gives, in its order (``_VALID``'s typeof checks): every combination.
_SIGNATURES = frozenset(
    (str, str, int, int, str, modified, int, updated, int, int, str, at_ns, error, int, int)
    for modified in (int, float)
    for updated in (str, type(None))
    for at_ns in (int, type(None))
    for error in (str, type(None))
)


def _facts_of(
    row: Sequence[Any], identity: FileIdentity, expiries: dict[tuple[Any, ...], Expiry]
) -> ArchiveFacts | None:
    # The facts of a row the query already checked (``_VALID``: types and ranges), or None when a value that
    # becomes a header or a name again is not what ``ArchiveFacts.from_snapshot`` gives.
    (ext, ctype, size, offset, etag, modified, generation, updated, ttl, timeout, base, at_ns, error, logic,
     crc) = row[6:]  # fmt: skip
    if not (_header_safe_cached(ext, ctype) and _ETAG.fullmatch(etag) is not None):
        return None
    expiry_key = (base, at_ns, error)
    expiry = expiries.get(expiry_key)
    if expiry is None:
        expiry = expiries[expiry_key] = Expiry(base=sys.intern(base), at_ns=at_ns, error=error)
    # ``ArchiveFacts``'s fields in order; the strings most archives of a store share are kept once.
    values = (sys.intern(ext), sys.intern(ctype), size, offset, etag, float(modified), generation, updated,
              ttl, timeout, expiry, identity, logic == 1, crc)  # fmt: skip
    return make_facts(values)


@lru_cache(maxsize=1024)
def _header_safe_cached(ext: str, ctype: str) -> bool:
    # Both become a header or a file name: the same rules as ``ArchiveFacts.from_snapshot`` applies.
    return (ext == "" or display_ext_problem(ext) is None) and safe_content_type(ctype) == ctype
