"""``syncctl user``: manage the users file that ``syncctl serve --auth FILE`` checks logins against.

``add`` creates the file when missing (mode 0600) or replaces the user's role and password; the password is
read from the terminal (asked twice, not echoed) or, when stdin is not a terminal, from stdin's first line,
and only its hashes are stored (``mountd.auth.users``). ``--digest`` also stores the HTTP digest HA1, which is
password-equivalent (``docs/security.md``). ``remove`` deletes a user; ``list`` prints name, role and whether
digest is enabled, never a hash.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``user add|remove|list`` to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    user = subparsers.add_parser(
        "user",
        parents=[common],
        help="manage the users file of `serve --auth`",
        description="Add, remove and list the users of a users file (TOML; passwords are stored hashed).",
    )
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        parents=[common],
        help="add a user or change a user's role and password",
        description="Add NAME to FILE (created, mode 0600, when missing), or replace its role and password. "
        "The password is asked for on a terminal, else read from the first line of stdin.",
    )
    add.add_argument("file", metavar="FILE", type=Path, help="the users file")
    add.add_argument("name", metavar="NAME", help="user name (letters, digits, ._@+-)")
    add.add_argument(
        "--role",
        choices=("owner", "consumer"),
        default="consumer",
        help="owner may write, consumer only reads (default consumer)",
    )
    add.add_argument(
        "--digest",
        action="store_true",
        help="also store the HTTP digest hash (password-equivalent; only for clients that need digest)",
    )
    add.set_defaults(handler=cmd_user_add)

    remove = actions.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("file", metavar="FILE", type=Path, help="the users file")
    remove.add_argument("name", metavar="NAME", help="the user to remove")
    remove.set_defaults(handler=cmd_user_remove)

    listing = actions.add_parser("list", parents=[common], help="list users, roles and digest support")
    listing.add_argument("file", metavar="FILE", type=Path, help="the users file")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_user_list)


def _read_password(name: str) -> str:
    """The new password: asked twice on a terminal, else stdin's first line without its line break."""
    from mountd.errors import UsersFileError

    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UsersFileError("the passwords do not match", user=name)
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user_add(args: argparse.Namespace) -> int:
    """``syncctl user add``.

    Args:
        args: Parsed arguments.

    Returns:
        0 once the file is written.
    """
    from mountd.auth.users import Role, add_user

    password = _read_password(args.name)
    replaced = add_user(args.file, args.name, Role(args.role), password, digest=args.digest)
    verb = "updated" if replaced else "added"
    digest = ", digest enabled" if args.digest else ""
    sys.stdout.write(f"{verb} user {args.name} ({args.role}{digest}) in {args.file}\n")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    """``syncctl user remove``.

    Args:
        args: Parsed arguments.

    Returns:
        0 once the file is written.
    """
    from mountd.auth.users import remove_user

    remove_user(args.file, args.name)
    sys.stdout.write(f"removed user {args.name} from {args.file}\n")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """``syncctl user list``.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from mountd.auth.users import load_users

    table = load_users(args.file)
    rows = [
        {"name": name, "role": user.role.value, "digest": user.digest_ha1 is not None}
        for name, user in sorted(table.users.items())
    ]
    if args.json:
        sys.stdout.write(json.dumps({"realm": table.realm, "users": rows}, indent=2) + "\n")
        return 0
    for row in rows:
        fields = [str(row["name"]), str(row["role"])] + (["digest"] if row["digest"] else [])
        sys.stdout.write("\t".join(fields) + "\n")
    return 0
