"""``syncctl demo``: build a store of self-updating archives fed by a local source, and serve it.

The command starts the demo source (``syncctl.demo_source``: ever-changing ``/readings.csv`` and
``/feed.json`` on a free loopback port), builds the store for it (``syncctl.demo_store``), then serves the
store exactly as ``syncctl serve`` does (``serve_commands.serve_store``: embedded broker, local workers,
mountd) and prints the mount URL with mount instructions. SIGINT or SIGTERM stops the server, the workers,
the broker and then the source; the exit status is 0. A signal that arrives while the store is still being
built or the broker is starting unwinds the same way, like Ctrl-C (exit 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mountd.app import Listening

_DESCRIPTION = """\
Build a demo store of signed, self-updating archives in DIR and serve it over WebDAV with live refreshes.
A small HTTP source on 127.0.0.1 (started and stopped with the demo) serves sensor readings and a JSON feed
that change every few seconds; the archives readings.csv and feed.json fetch from it in the sandbox when
they are read after their TTL (a few seconds), and appended.csv grows by a row on its own. DIR keeps the
store, the signing key, the caches and the workers' log; the archives are rebuilt at every start."""

#: Where the demo lives when no DIR is given: beside the user, easy to find and to delete.
DEFAULT_DIR = "sync-demo"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``demo`` to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    demo = subparsers.add_parser(
        "demo",
        parents=[common],
        help="build a demo store of self-updating archives and serve it",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default=DEFAULT_DIR,
        help=f"demo directory: new, empty or an earlier demo's (default ./{DEFAULT_DIR})",
    )
    demo.add_argument("--host", help="address to serve on (SYNC_HOST, default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port to serve on (SYNC_PORT, default 4918; 0 picks one)")
    demo.add_argument(
        "--sandbox", choices=("strict", "permissive"), help="for the local workers (SYNC_SANDBOX)"
    )
    demo.add_argument("--no-serve", action="store_true", help="build the store and exit")
    demo.set_defaults(handler=cmd_demo)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    """``syncctl demo``.

    Args:
        args: Parsed arguments.

    Returns:
        0 after the store was built (``--no-serve``) or after a clean shutdown.
    """
    from broker.settings import Settings
    from syncctl.demo_source import DemoSource
    from syncctl.demo_store import build_demo_store, describe
    from syncctl.mount_instructions import mount_instructions
    from syncctl.serve_commands import serve_store

    # Until the server installs its own handlers, SIGTERM unwinds like Ctrl-C so nothing started is left.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with DemoSource() as source:
            built = build_demo_store(Path(args.dir), source)
            _say(describe(built))
            if args.no_serve:
                _say(
                    "built only (--no-serve): the source stops with this command, so readings.csv and "
                    f"feed.json cannot refresh until `syncctl demo {args.dir}` rebuilds and serves them\n"
                )
                return 0
            settings = Settings.from_env(
                {
                    "store": built.store,
                    "host": args.host,
                    "port": args.port,
                    "cache_dir": built.cache,
                    "sandbox": args.sandbox,
                }
            )
            # The operator's side of the egress rule: the demo's own loopback source, nothing else.
            opened = (*settings.egress_allow_private, source.operator_entry)
            settings = replace(settings, egress_allow_private=opened)
            _say(
                f"egress: the demo opens its source {source.operator_entry} to its archives' guests "
                "(SYNC_EGRESS_ALLOW_PRIVATE); no other loopback or private address is reachable\n"
            )

            def ready(handle: Listening) -> None:
                _say(mount_instructions(handle.mount_url, watch=built.archives[0].name))
                _say(f"refresh workers log to {built.worker_log}\n")
                _say("Ctrl-C stops the server, the workers, the broker and the source.\n")

            return serve_store(
                settings,
                built.store,
                worker_log=built.worker_log,
                on_ready=ready,
                log_format=args.log_format,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
