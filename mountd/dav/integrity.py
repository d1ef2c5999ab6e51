"""Payload integrity: each archive version's payload is checked against its CRC-32 once, and a payload known
to be corrupt is never served as good.

Why: the ZIP entry of ``payload`` carries the CRC-32 of its bytes (spec §3), but serving reads the bytes
straight from the file (``os.sendfile``), so bit rot or a damaged copy would be served with 200. mountd
checks each version of each archive (its stat identity, ``FileIdentity``: device, inode, mtime, size,
ctime) once:

* on the first GET of the version (both GET paths: ``FastGet`` and ``ArchiveResource.get_content``, so
  ranges and several ranges too), before any byte is sent, when the payload is at most ``INLINE_MAX``
  bytes (the check reads it at disk/page-cache speed; ``bench/bench_mountd.py`` shows the cost of a first
  GET); a larger payload is served while a background thread checks it (at most one check at a time);
* the verdict is cached by identity (at most ``MAX_VERDICTS`` entries, oldest forgotten), so later reads of
  the version cost one dictionary lookup; a new version (a refresh, an upload) is checked again. The cache
  is per process: with several server processes (``mountd.processes``) each checks a version once.

A corrupt payload is answered ``500`` with a message naming the archive, logged once per version
(``payload corrupt archive=... expected=... actual=...``), counted (``mountd_corrupt_payloads`` in the
metrics), shown as ``corrupt`` in the ``{urn:sync}integrity`` PROPFIND property (``verified``,
``unverified`` otherwise) and marked in the browser view.

Invariants:
    * Bytes are read from the same file descriptor (the same inode) the response would be sent from.
    * A version whose verdict is corrupt is never answered with 200/206, on any GET path.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mountd.dav.facts import ArchiveFacts
    from sync_format import PayloadReader

log = logging.getLogger(__name__)

#: Largest payload checked before its first GET is answered (bytes); larger ones are checked meanwhile.
INLINE_MAX = 256 * 1024 * 1024
#: Verdicts remembered.
MAX_VERDICTS = 100_000
#: Bytes per read while checking.
CHECK_BLOCK = 1024 * 1024
#: ``{urn:sync}integrity`` values.
VERIFIED, CORRUPT, UNVERIFIED = "verified", "corrupt", "unverified"


def payload_crc32(fd: int, offset: int, size: int) -> int:
    """The CRC-32 of ``size`` bytes of ``fd`` from ``offset`` (read with ``pread``, no shared position)."""
    crc = 0
    done = 0
    while done < size:
        data = os.pread(fd, min(CHECK_BLOCK, size - done), offset + done)
        if not data:
            break
        crc = zlib.crc32(data, crc)
        done += len(data)
    return crc


class PayloadVerdicts:
    """The cache of verdicts by archive version, and the background checker (see the module docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Start empty: also in a forked server process (``mountd.processes``), whose copy of the parent's
        background thread does not run and whose parent's lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._verdicts: OrderedDict[object, bool] = OrderedDict()
        self._pending: set[object] = set()
        self._queue: queue.Queue[tuple[object, str, int, int, int, int]] = queue.Queue()
        self._worker: threading.Thread | None = None
        #: Corrupt versions found since the process started (the metric).
        self.corrupt_found = 0
        #: Moves whenever a version's ``state`` may have changed (a verdict recorded or forgotten), so that
        #: what was rendered from a state (``mountd.http.fast_propfind``) can tell it may be stale.
        self.changes = 0

    def state(self, facts: ArchiveFacts) -> str:
        """``verified``, ``corrupt`` or ``unverified`` for this version, without checking."""
        with self._lock:
            verdict = self._verdicts.get(facts.identity)
        return UNVERIFIED if verdict is None else (VERIFIED if verdict else CORRUPT)

    def is_corrupt(self, archive: str, facts: ArchiveFacts, reader: PayloadReader) -> bool:
        """Whether this version is known corrupt, checking it first (inline or in the background).

        Args:
            archive: The archive's path or key, for the log line.
            facts: The version's facts (identity, expected CRC-32).
            reader: A reader of this version's payload (its fd is read, its position untouched).

        Returns:
            True when the payload does not match its CRC-32 (refuse to serve it).
        """
        key = facts.identity
        with self._lock:
            verdict = self._verdicts.get(key)
        if verdict is not None:
            return not verdict
        if facts.payload_crc32 < 0:
            return False  # facts made without the CRC (never for an archive read from disk)
        fd, offset, size = reader.span
        if size > INLINE_MAX:
            self._check_later(key, archive, os.dup(fd), offset, size, facts.payload_crc32)
            return False
        return not self._record(key, archive, payload_crc32(fd, offset, size), facts.payload_crc32)

    def _record(self, key: object, archive: str, actual: int, expected: int) -> bool:
        good = actual == expected
        with self._lock:
            known = key in self._verdicts
            self._verdicts[key] = good
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > MAX_VERDICTS:
                self._verdicts.popitem(last=False)
            self.changes += 1
            if not good and not known:
                self.corrupt_found += 1
        if not good and not known:
            log.error("payload corrupt archive=%s expected=%08x actual=%08x", archive, expected, actual)
        return good

    def _check_later(self, key: object, archive: str, fd: int, offset: int, size: int, expected: int) -> None:
        with self._lock:
            if key in self._pending:
                os.close(fd)
                return
            self._pending.add(key)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="mountd-integrity", daemon=True)
                self._worker.start()
        self._queue.put((key, archive, fd, offset, size, expected))

    def _run(self) -> None:
        while True:
            key, archive, fd, offset, size, expected = self._queue.get()
            try:
                self._record(key, archive, payload_crc32(fd, offset, size), expected)
            except OSError as exc:
                log.warning("payload check failed archive=%s error=%s", archive, exc)
            finally:
                os.close(fd)
                with self._lock:
                    self._pending.discard(key)


def corrupt_response(start_response: Any, path: str) -> list[bytes]:
    """The 500 answer for a payload known to be corrupt (``start_response`` is the WSGI callable)."""
    body = f"500 Internal Server Error: the payload of {path} is corrupt (CRC-32 mismatch); not served\n"
    data = body.encode()
    start_response(
        "500 Internal Server Error",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


#: The process's verdicts (archive versions are the same files for every server in the process). Each
#: server process of one mountd keeps its own: a version is checked once per process.
VERDICTS = PayloadVerdicts()
os.register_at_fork(after_in_child=VERDICTS._reset)
