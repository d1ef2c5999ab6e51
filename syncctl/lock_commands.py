"""``syncctl locks list|break``: an owner's view of the WebDAV locks of a served store, and a way out of them.

Locks of a writable store served by ``syncctl serve --writable`` live in the broker's Redis
(``mountd.writable.locks.RedisLockStorage``, prefix ``sync:dav:<absolute store path>:``), so this command
reaches them without the server: ``list`` prints one line per lock (token, path, depth, scope, holder, seconds
left); ``break`` removes the locks named by token, or every lock at or below ``--path``, or ``--all``.
Over HTTP an owner does the same with UNLOCK (``mountd.auth.lock_policy``), also for a server whose locks are
in memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from syncctl.broker_options import broker_options
from syncctl.errors import InvalidArguments


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``locks`` to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    locks = subparsers.add_parser(
        "locks",
        parents=[common],
        help="list or break the WebDAV locks of a writable store",
        description="List or break the WebDAV locks a writable `syncctl serve` keeps in its broker's Redis.",
    )
    actions = locks.add_subparsers(dest="locks_action", metavar="ACTION", required=True)
    for name, text in (("list", "print the locks"), ("break", "remove locks")):
        action = actions.add_parser(name, parents=[common, broker_options()], help=text)
        action.add_argument("store", metavar="STORE", help="the store directory as served")
        if name == "break":
            action.add_argument("tokens", nargs="*", metavar="TOKEN", help="lock tokens to remove")
            action.add_argument("--path", help="remove every lock at or below this request path")
            action.add_argument("--all", action="store_true", help="remove every lock of the store")
        action.set_defaults(handler=cmd_locks)


def cmd_locks(args: argparse.Namespace) -> int:
    """``syncctl locks list|break``.

    Args:
        args: Parsed arguments.

    Returns:
        0; 1 when ``break`` was given nothing to remove.
    """
    from broker.connection import connect
    from broker.settings import Settings
    from mountd.writable.locks import RedisLockStorage

    settings = Settings.from_env({"broker_url": args.broker, "cache_dir": args.cache_dir})
    root = Path(args.store).absolute()
    with connect(settings) as connection:
        storage = RedisLockStorage(connection.redis_url, prefix=f"sync:dav:{root}:")
        try:
            found = storage.all_locks()
            if args.locks_action == "list":
                now = time.time()
                for lock in found:
                    left = max(0, int(float(lock.get("expire", now)) - now))
                    sys.stdout.write(
                        f"{lock['token']}\t{lock.get('root')}\tdepth={lock.get('depth')}\t"
                        f"scope={lock.get('scope')}\tuser={lock.get('principal')}\tleft={left}s\n"
                    )
                return 0
            if not (args.tokens or args.path or args.all):
                raise InvalidArguments("locks break needs TOKEN..., --path PATH or --all")
            prefix = (args.path or "").rstrip("/")
            chosen = [
                lock
                for lock in found
                if args.all
                or lock["token"] in args.tokens
                or (args.path and _under(str(lock.get("root", "")), prefix))
            ]
            for lock in chosen:
                storage.delete(lock["token"])
                sys.stdout.write(
                    f"broken {lock['token']}\t{lock.get('root')}\tuser={lock.get('principal')}\n"
                )
            return 0
        finally:
            storage.close()


def _under(root: str, prefix: str) -> bool:
    """Whether a lock's root (normalized, no trailing slash) is ``prefix`` or below it."""
    root = root.rstrip("/")
    return prefix in ("", root) or root.startswith(prefix + "/")
