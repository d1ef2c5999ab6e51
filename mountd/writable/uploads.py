"""``UploadSink``: where a PUT body goes before it becomes a payload — a counted, capped temp file.

wsgidav streams a PUT body into the file object a resource's ``begin_write`` returns and then calls
``end_write``. The reference writes straight into its target and commits whatever arrived, so a client that
drops the connection halfway leaves a truncated payload behind (spec §9). Here the body goes to a temp file
in the target's own directory (same filesystem, hidden temp name that listings skip), and only a body that
is provably complete is handed to the commit:

* with ``Content-Length``, exactly that many bytes must have arrived (cheroot's input simply ends early when
  the peer goes away; it does not raise);
* with chunked transfer coding (macOS Finder), cheroot raises on a body that ends before its terminating
  zero-size chunk, and Finder's ``X-Expected-Entity-Length`` is checked when it is sent;
* at most ``limit`` bytes are accepted: a declared length above it is refused before any byte is read, a
  chunked body is cut off as soon as it passes it.

``DavSink`` is the same sink as wsgidav's PUT handler sees it: every error becomes the DAVError a client
gets (via ``mountd.errors.dav_error``), and a body stream that cheroot cannot read to its end counts as
incomplete.

Invariants:
    * ``finish`` returns the temp file only for a complete body; ``discard`` removes it (idempotent). A
      sink that is neither finished nor discarded still holds its temp file: the resource always calls one.
    * The body is read back through the descriptor it was written to, never by the temp file's name: a
      local user who may write to the folder can rename anything over that name meanwhile.
    * Nothing here touches the archive: the old payload is intact until the commit, whatever the client does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from mountd.errors import IncompleteUpload, UploadTooLarge, dav_error
from sync_format import ArchiveError, SyncError
from sync_format.atomic import create_temp, discard
from sync_format.beneath import Pin

log = logging.getLogger(__name__)

#: Header macOS Finder sends with chunked uploads, announcing the body's length.
EXPECTED_LENGTH_HEADER = "HTTP_X_EXPECTED_ENTITY_LENGTH"


def declared_length(environ: dict[str, Any]) -> int | None:
    """The body length the client announced (``Content-Length``, else Finder's expected length).

    Args:
        environ: The WSGI environ of a PUT.

    Returns:
        The length, or None when the client announced none (chunked without a hint).

    Raises:
        IncompleteUpload: The announced length is not a non-negative integer.
    """
    for key in ("CONTENT_LENGTH", EXPECTED_LENGTH_HEADER):
        text = environ.get(key)
        if text in (None, ""):
            continue
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise IncompleteUpload(f"invalid {key.removeprefix('HTTP_').replace('_', '-').title()}: {text!r}")
        return value
    return None


#: A complete PUT body: its temp file, open and at its start, and its size in bytes.
Body = tuple[BinaryIO, int]


class UploadSink:
    """A PUT body on its way to a commit.

    Args:
        target: The archive the body is for (the temp file goes next to it).
        limit: Most bytes accepted.
        expected: Bytes the client announced, or None.
        root: The store's root, which ``target`` is below.

    Raises:
        UploadTooLarge: ``expected`` is above ``limit``.
        ArchiveError: The temp file cannot be created (missing directory, no permission, no space).
    """

    def __init__(self, target: Path, limit: int, expected: int | None, root: Path) -> None:
        if expected is not None and expected > limit:
            raise UploadTooLarge(expected, limit)
        self.target = target
        self.limit = limit
        self.expected = expected
        self.received = 0
        self.path: Path | None
        # The temp file is made, and later removed, in the folder as it was opened from the store's root:
        # never in one a symlink put in its place leads to (``sync_format.beneath``).
        self._folder = Pin(root, target)
        try:
            self.path, self._file = create_temp(self._folder.path)
        except BaseException:
            self._folder.close()
            raise

    def write(self, data: bytes) -> int:
        """Append one block of the body.

        Raises:
            UploadTooLarge: The body passed the limit.
            ArchiveError: The temp file cannot be written (e.g. the disk is full).
        """
        self.received += len(data)
        if self.received > self.limit:
            raise UploadTooLarge(self.received, self.limit)
        try:
            self._file.write(data)
        except OSError as exc:
            raise ArchiveError(f"cannot store the upload: {exc.strerror}", path=self.target) from exc
        return len(data)

    def writelines(self, blocks: Iterable[bytes]) -> None:
        """Append every block (wsgidav hands the whole body stream here)."""
        for block in blocks:
            self.write(block)

    def close(self) -> None:
        """Flush the temp file (wsgidav calls this after the last block). It stays open until ``discard``:
        the commit reads the body through this descriptor, never again by the temp file's name, which anyone
        who may write to the folder could rename something else over (a symlink to a secret, a FIFO)."""
        try:
            self._file.flush()
        except OSError as exc:
            raise ArchiveError(f"cannot store the upload: {exc.strerror}", path=self.target) from exc

    def finish(self) -> Body:
        """The complete body.

        Returns:
            The temp file, open and at its start, and its size; the caller commits it and then calls
            ``discard`` (which closes it).

        Raises:
            IncompleteUpload: Fewer bytes arrived than were announced.
        """
        self.close()
        if self.expected is not None and self.received != self.expected:
            raise IncompleteUpload(
                f"the body ended after {self.received} of {self.expected} bytes; nothing was changed"
            )
        assert self.path is not None, "finish after discard"
        self._file.seek(0)
        return self._file, self.received

    def discard(self) -> None:
        """Remove the temp file (safe to call more than once). Every step is taken even when an earlier one
        fails (closing can fail to flush, e.g. EIO): the file is removed and the folder closed regardless."""
        try:
            if not self._file.closed:
                self._file.close()
        except OSError as exc:
            log.warning("upload temp file failed to close archive=%s reason=%s", self.target, exc.strerror)
        finally:
            try:
                if self.path is not None:
                    discard(self.path)
                    self.path = None
            finally:
                self._folder.close()


class DavSink:
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


def open_sink(limit: int, environ: dict[str, Any], target: Path, key: str, root: Path) -> DavSink:
    """A ``DavSink`` for the PUT in ``environ``, its temp file next to ``target`` (below the store ``root``).

    Raises:
        DAVError: 413 when the announced length is over ``limit``, 400 for a bad length, 507 without space,
            409 when the target's folder is a symlink now.
    """
    try:
        return DavSink(UploadSink(target, limit, declared_length(environ), root), key)
    except SyncError as exc:
        raise dav_error(exc, key) from exc


def end_upload(sink: DavSink | None, key: str, *, with_errors: bool, commit: Callable[[Body], None]) -> None:
    """What a resource's ``end_write`` does: hand a complete body to ``commit``; always drop the temp file.

    Args:
        sink: What ``begin_write`` returned (None when it failed before returning).
        key: The archive's key, for messages.
        with_errors: wsgidav's verdict: the body could not be copied; nothing is committed.
        commit: Makes the change from the complete body (its temp file, open, and its size).

    Raises:
        DAVError: The body is incomplete (400), or what ``commit`` raises.
    """
    try:
        if with_errors:
            log.info("upload discarded archive=%s", key)
            return
        assert sink is not None, "end_write without begin_write"
        try:
            body = sink.sink.finish()
        except SyncError as exc:
            raise dav_error(exc, key) from exc
        commit(body)
    finally:
        if sink is not None:
            sink.sink.discard()
