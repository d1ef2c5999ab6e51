"""The options every command that talks to the broker takes: ``--broker`` and ``--cache-dir``."""

from __future__ import annotations

import argparse


def broker_options() -> argparse.ArgumentParser:
    """A parent parser with ``--broker URL`` and ``--cache-dir DIR`` (their values become settings).

    Returns:
        A parser to pass in ``parents=[...]`` of a subcommand.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--broker", metavar="URL", help="Redis URL (SYNC_BROKER_URL); embedded when absent")
    options.add_argument("--cache-dir", metavar="DIR", help="cache and embedded-broker data (SYNC_CACHE_DIR)")
    return options
