"""Byte progress bars on stderr for long payload copies (``pack``, ``extract``).

A bar is drawn only when stderr is a terminal and the payload is larger than ``PROGRESS_THRESHOLD``:
small copies finish before a bar would be readable, and logs or pipes must not fill with redraws. The
bar is transient (erased when done), so a finished command leaves only its own output behind. rich is
imported only when a bar is actually drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Payloads above this many bytes (8 MiB) get a bar; smaller ones copy in well under a second.
PROGRESS_THRESHOLD = 8 * 1024 * 1024

#: Called with the number of bytes done so far (the library's ``Progress`` callback shape).
ProgressCallback = Callable[[int], None]


def _ignore(_done: int) -> None:
    """The callback used when no bar is drawn."""


@contextmanager
def byte_progress(description: str, total: int) -> Iterator[ProgressCallback]:
    """Show a transient progress bar for ``total`` bytes while the body runs.

    Args:
        description: What is being done ("packing payload").
        total: Number of bytes the work covers.

    Yields:
        A callback taking the running byte count; a no-op when no bar is drawn.
    """
    if total <= PROGRESS_THRESHOLD or not sys.stderr.isatty():
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # extract writes payload bytes to stdout while the bar runs: nothing may wrap or reroute it
        redirect_stdout=False,
        redirect_stderr=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int) -> None:
            bar.update(task, completed=done)

        yield update
