"""``sync-mount``: the reference's command (spec §8.5), as a thin shell over ``syncctl serve``.

``sync-mount ARCHIVE [-p PORT] [-v]`` serves one archive read-only on 127.0.0.1 (default port 4918), like
the reference, and like ``syncctl serve`` it also refreshes the archive when it expires (embedded broker and
a local worker unless ``SYNC_BROKER_URL`` is set). ``sync-mount --writable DIR`` serves a store directory
writable (created when missing; an existing file is an error), as the reference's flag does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from syncctl import main as syncctl_main
from syncctl.errors import InvalidArguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sync-mount``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="sync-mount",
        description="Serve a .sync archive's payload over WebDAV (read-only), or a writable store directory.",
    )
    parser.add_argument(
        "archive", metavar="ARCHIVE", help="the .sync archive (a store directory with --writable)"
    )
    parser.add_argument("--writable", action="store_true", help="serve ARCHIVE as a writable store directory")
    parser.add_argument("-p", "--port", type=int, default=4918, help="port on 127.0.0.1 (default 4918)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {syncctl_main._version()}")
    args = parser.parse_args(argv)
    return syncctl_main.run_reported(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    verbose = ["-" + "v" * args.verbose] if args.verbose else []
    if args.writable:
        if Path(args.archive).is_file():
            raise InvalidArguments(f"{args.archive}: --writable serves a store directory, not a file")
        return syncctl_main.main([*verbose, "serve", args.archive, "--port", str(args.port), "--writable"])
    if not Path(args.archive).is_file():
        raise InvalidArguments(f"{args.archive}: not an archive file")
    return syncctl_main.main([*verbose, "serve", args.archive, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
