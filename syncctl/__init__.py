"""``syncctl``: the command line of sync, a thin shell over the library (docs/architecture.md, "Errors and
exit codes").

Its interface is the command line itself (the ``syncctl`` script is ``syncctl.main:main``; ``python -m
syncctl`` runs the same). Each command parses its arguments, calls into ``sync_format`` (and later the other
packages), and maps a ``SyncError`` or ``OSError`` to exit status 1 with one ``error: …`` line on stderr;
argparse usage errors exit with 2. Modules that need the library import it inside the command, so
``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

# Nothing is re-exported: importing ``main`` here would shadow the ``syncctl.main`` module.
__all__: list[str] = []
