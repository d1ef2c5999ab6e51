"""The ``syncctl`` entry point: the argument parser, logging, dispatch and the one place errors are mapped.

Exit status (ARCHITECTURE "CLI"): 0 on success; 1 when the input is invalid or the operation failed, with
exactly one ``error: …`` line on stderr and never a traceback (every ``SyncError`` and ``OSError`` is
caught here, in ``run_reported``, and nowhere else: handlers raise typed errors, ``syncctl.errors`` for
failures that exist only at the command line); 2 for usage errors, which argparse reports itself; 130 after
Ctrl-C. Command groups register their subcommands through a ``register(subparsers, common)`` function;
each subcommand stores its handler (``args -> exit status``) as ``args.handler``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sync_format.escape import escape_text
from syncctl import (
    archive_commands,
    demo_commands,
    failed_commands,
    guest_commands,
    lock_commands,
    serve_commands,
    service_commands,
    user_commands,
)
from syncctl.log_format import configure_logging

#: Exit status when the input is invalid or the operation failed (usage errors are argparse's 2).
EXIT_FAILURE = 1
#: Longest ``error:`` line message, in characters (escapes included).
ERROR_LIMIT = 2000
#: Exit status after Ctrl-C, as shells report a death by SIGINT.
EXIT_INTERRUPTED = 130

_DISTRIBUTION = "sync-archives"
_LOG_FORMAT_HELP = "log lines as text or one JSON object each (SYNC_LOG_FORMAT, default text)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (running from a source tree)"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for: ``importlib.metadata`` costs every command ~20 ms."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"{parser.prog} {_version()}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every subcommand.

    Returns:
        The parser; ``parse_args`` leaves the command's handler in ``args.handler``.
    """
    # -v is accepted before and after the subcommand; SUPPRESS keeps the subcommand's copy from
    # resetting a count given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log more (-v: info, -vv: debug) on stderr",
    )
    common.add_argument(
        "--log-format", choices=("text", "json"), default=argparse.SUPPRESS, help=_LOG_FORMAT_HELP
    )
    parser = argparse.ArgumentParser(
        prog="syncctl",
        description="Build, inspect, verify and unpack self-updating .sync data archives.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug) on stderr"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help=_LOG_FORMAT_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    archive_commands.register(subparsers, common)
    guest_commands.register(subparsers, common)
    service_commands.register(subparsers, common)
    failed_commands.register(subparsers, common)
    serve_commands.register(subparsers, common)
    demo_commands.register(subparsers, common)
    user_commands.register(subparsers, common)
    lock_commands.register(subparsers, common)
    return parser


def _one_line(text: str) -> str:
    """Collapse a message onto one line (the contract is exactly one ``error:`` line), with the control and
    bidi characters an archive or a guest may have put in it escaped."""
    return escape_text(" ".join(text.split()), ERROR_LIMIT) or "unknown error"


def _os_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return reason


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return EXIT_FAILURE


def _silence_stdout() -> None:
    """After the reader of stdout went away, point it at /dev/null so the final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``syncctl``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status (argparse exits with 2 itself on usage errors).
    """
    args = build_parser().parse_args(argv)
    from broker.settings import log_format
    from sync_format.errors import SyncError

    try:
        args.log_format = log_format(args.log_format)
    except SyncError as exc:
        return _fail(str(exc))
    configure_logging(args.verbose, args.log_format)
    return run_reported(lambda: args.handler(args))


def run_reported(action: Callable[[], int]) -> int:
    """Run a command's handler and map what it raises: the one place ``error:`` lines are written.

    Args:
        action: The handler, called without arguments; it returns an exit status.

    Returns:
        Its exit status; 1 after a ``SyncError`` or ``OSError`` (one ``error:`` line on stderr); 130 after
        Ctrl-C.
    """
    from sync_format.errors import SyncError

    try:
        status: int = action()
    except SyncError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        _silence_stdout()
        return _fail("output closed before everything was written (broken pipe)")
    except OSError as exc:
        return _fail(_os_error_text(exc))
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    return status
