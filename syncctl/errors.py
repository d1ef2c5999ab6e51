"""The typed failures of ``syncctl`` commands, raised by handlers and reported by ``syncctl.main`` alone.

A handler never writes ``error:`` itself: it raises a ``SyncError`` (these, or the format's, broker's and
workers' own), and ``syncctl.main`` turns it into exit status 1 and exactly one ``error: …`` line. These
classes cover what is a failure only at the command line: a refresh that ran and failed, a wait that
timed out, an argument combination argparse cannot express.
"""

from __future__ import annotations

from sync_format.errors import SyncError


class CommandFailed(SyncError):
    """The command ran and its operation failed (exit status 1).

    Attributes:
        code: ``command_failed``, or the failure's own stable code when it has one.
    """

    code = "command_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RefreshFailed(CommandFailed):
    """A refresh ran (here or on a worker) and ended failed; the message is ``<error code>: <error>``."""

    def __init__(self, error_code: str | None, error: str | None) -> None:
        super().__init__(f"{error_code}: {error or ''}", code=error_code or "refresh_failed")


class InvalidArguments(CommandFailed):
    """Arguments that parse but do not make sense together (or name the wrong kind of file)."""

    code = "invalid_arguments"
