"""``PartsBody``: a generated response body kept as references to parts rendered elsewhere, sent in chunks;
``still_shown``: whether a remembered part still shows its archive as it is now.

A folder page (``mountd.http.browser``) or a listing for a ``<prop>`` list (``mountd.http.fast_propfind``)
of 10,000 archives is several MB. Its rows are rendered once per archive version and remembered by the
middleware that answers, so a body is the list of references to them: never joined whole (a copy per
request, freed in whichever thread's malloc arena built it, kept the server's RSS higher), shared between
concurrent requests, and cheap to hold while a slow reader is parked (``mountd.http.handoff.ParkedBody``
makes its chunks on the connection loop's thread: joining bytes, no I/O, no wait).
"""

from __future__ import annotations

from collections.abc import Iterator

from mountd.dav.facts import ArchiveFacts
from mountd.dav.integrity import VERDICTS

#: Bytes per write of a body (parts are joined up to about this size).
CHUNK_BYTES = 64 * 1024
#: One archive's remembered part: the facts, expired flag and payload verdict it was rendered for,
#: ``PayloadVerdicts.changes`` when that verdict was last read, and the bytes.
Remembered = tuple[ArchiveFacts, bool, str, int, bytes]


def still_shown(
    cached: Remembered | None, facts: ArchiveFacts, expired: bool, changes: int
) -> Remembered | str:
    """A remembered part if it still shows this archive as it is now, else the verdict to render it with.

    Args:
        cached: What was remembered for this place (URL), or None.
        facts: The archive version listed now.
        expired: Whether it is expired at the body's moment.
        changes: ``VERDICTS.changes``, read before any verdict of this body.

    Returns:
        ``cached`` itself; ``cached`` re-dated to ``changes`` (to be remembered instead) when verdicts were
        recorded since but not this archive's; or the archive's payload verdict, to render it anew.
    """
    if cached is None or cached[0] is not facts or cached[1] is not expired:
        return VERDICTS.state(facts)
    if cached[3] == changes:
        return cached
    state = VERDICTS.state(facts)  # a verdict was recorded since: is it this archive's?
    return (*cached[:3], changes, cached[4]) if state == cached[2] else state


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
