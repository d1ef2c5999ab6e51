"""Compare the reader's two ways of checking local headers (``zip_reader._Parser.inline_local_headers``)."""

from __future__ import annotations

import os
from pathlib import Path

from sync_format import ArchiveError, zip_reader


def read_both_ways(data: bytes, path: Path) -> tuple[object, object]:
    """``read_directory`` of ``data`` with the inline acceptance of local headers and without it: each the
    directory, or the refusal as (type, message, offset)."""
    path.write_bytes(data)
    results: list[object] = []
    for inline in (True, False):
        zip_reader._Parser.inline_local_headers = inline
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                results.append(zip_reader.read_directory(fd, os.fstat(fd).st_size))
            finally:
                os.close(fd)
        except ArchiveError as exc:
            results.append((type(exc), str(exc), exc.offset))
        finally:
            zip_reader._Parser.inline_local_headers = True
    return results[0], results[1]
