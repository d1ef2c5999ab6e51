"""Rewrite an archive so that only its ctime tells: the same inode, size and mtime, other bytes."""

from __future__ import annotations

import os
from pathlib import Path

from support import wait_for


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` in place (same inode), of the same size, and put its mtime back with
    ``os.utime``; returns once the ctime moved (a coarse clock can leave it unchanged within one tick).

    Args:
        path: The file; ``data`` must be exactly its size.
        data: The new bytes.
    """
    before = os.stat(path)
    assert len(data) == before.st_size

    def once() -> bool:
        with path.open("r+b") as out:
            out.write(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return os.stat(path).st_ctime_ns != before.st_ctime_ns

    wait_for(once, 5, what="ctime to move")
    after = os.stat(path)
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_dev,
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
