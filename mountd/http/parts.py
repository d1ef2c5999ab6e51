"""``PartsBody``: a generated response body kept as references to parts rendered elsewhere, sent in chunks.

A folder page (``mountd.http.browser``) or a listing for a ``<prop>`` list (``mountd.http.fast_propfind``)
of 10,000 archives is several MB. Its rows are rendered once per archive version and remembered by the
middleware that answers, so a body is the list of references to them: never joined whole (a copy per
request, freed in whichever thread's malloc arena built it, kept the server's RSS higher), shared between
concurrent requests, and cheap to hold while a slow reader is parked (``mountd.http.handoff.ParkedBody``
makes its chunks on the connection loop's thread: joining bytes, no I/O, no wait).
"""

from __future__ import annotations

from collections.abc import Iterator

#: Bytes per write of a body (parts are joined up to about this size).
CHUNK_BYTES = 64 * 1024


class PartsBody:
    """A body as its head, references to its parts, and its tail.

    Args:
        head: The bytes before the parts.
        parts: The parts, in order (shared: never modified).
        tail: The bytes after them.
    """

    __slots__ = ("head", "length", "parts", "tail")

    def __init__(self, head: bytes, parts: list[bytes], tail: bytes) -> None:
        self.head = head
        self.parts = parts
        self.tail = tail
        self.length = len(head) + sum(map(len, parts)) + len(tail)

    def chunks(self) -> Iterator[bytes]:
        """The body in writes of about ``CHUNK_BYTES``."""
        batch = [self.head]
        size = len(self.head)
        for part in self.parts:
            batch.append(part)
            size += len(part)
            if size >= CHUNK_BYTES:
                yield b"".join(batch)
                batch, size = [], 0
        batch.append(self.tail)
        yield b"".join(batch)
