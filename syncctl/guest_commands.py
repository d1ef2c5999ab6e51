"""The guest half of ``syncctl``: ``run`` performs one refresh now, in the sandbox, committed atomically;
``guest new|build|test`` take an author from a template to a checked module tried against fixtures.

The command builds ``Settings`` from its flags and the environment, a ``GuestRuntime`` from them, and calls
``workers.refresh.run_refresh``; a failed refresh raises ``RefreshFailed`` (exit status 1, and ``main``
writes one ``error:`` line naming the stable error code). wasmtime and the sandbox are imported only when
the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sync_format.escape import escape_text


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add the guest commands to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    run = subparsers.add_parser(
        "run",
        parents=[common],
        help="refresh one archive now, in the sandbox",
        description="Run ARCHIVE's guest once in a fresh confined child and commit the payload it "
        "composes atomically (generation + 1). Archives without update logic are left unchanged.",
    )
    run.add_argument("archive", metavar="ARCHIVE", help="the .sync archive")
    run.add_argument("--json", action="store_true", help="print the refresh outcome as JSON")
    run.add_argument(
        "--sandbox",
        choices=("strict", "permissive"),
        help="strict (default, SYNC_SANDBOX) refuses to run without every confinement layer; "
        "permissive runs and reports what is missing",
    )
    run.add_argument("--cache-dir", metavar="DIR", help="compiled-module cache (SYNC_CACHE_DIR)")
    run.set_defaults(handler=cmd_run)
    _register_guest(subparsers, common)


def _register_guest(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    guest = subparsers.add_parser(
        "guest",
        parents=[common],
        help="write update logic: new template, build, test against fixtures",
        description="Write a guest (update logic) in C, Zig, Rust or AssemblyScript (docs/guest-authors.md).",
    )
    commands = guest.add_subparsers(dest="guest_command", metavar="SUBCOMMAND", required=True)
    new = commands.add_parser(
        "new",
        parents=[common],
        help="write a working template into DIR",
        description="Write a guest that fetches the URL named in context.json and makes the body the "
        "payload, with a README, context.json and fixtures.json, into DIR (new or empty).",
    )
    new.add_argument("dir", metavar="DIR")
    new.add_argument("--lang", required=True, choices=("c", "zig", "rust", "assemblyscript"))
    new.set_defaults(handler=cmd_guest_new)
    build = commands.add_parser(
        "build",
        parents=[common],
        help="compile a guest and check it against the ABI",
        description="Compile SRC (a .c, .zig or AssemblyScript .ts file, or a Rust crate directory) into a "
        "size-optimized, reproducible module, check its imports and exports against the guest ABI, and "
        "only then write it.",
    )
    build.add_argument("src", metavar="SRC")
    build.add_argument(
        "-o", "--output", metavar="OUT.wasm", help="default: SRC with .wasm (guest.wasm in a crate)"
    )
    build.set_defaults(handler=cmd_guest_build)
    test = commands.add_parser(
        "test",
        parents=[common],
        help="run a guest in the strict sandbox against fixtures (no network)",
        description="Run WASM (or ARCHIVE's guest) once in the real strict sandbox with every HTTP request "
        "answered from FIXTURES; print the requests, the guest's log and the resulting payload (or its "
        "diff against the current one). Nothing is committed.",
    )
    test.add_argument("target", metavar="WASM|ARCHIVE")
    test.add_argument("--context", metavar="FILE", help="context.json to run with (default: the archive's)")
    test.add_argument("--fixtures", metavar="FILE", help="responses by URL and method (default: none)")
    test.add_argument("--payload", metavar="FILE", help="current payload for a bare WASM (default: empty)")
    test.add_argument("-o", "--output", metavar="FILE", help="also write the resulting payload here")
    test.add_argument(
        "--allow-env",
        metavar="NAME",
        action="append",
        default=[],
        help="secret a bare WASM may reference as ${NAME} (value: SYNC_GUEST_SECRET_NAME, sent only to "
        "hosts in SYNC_GUEST_SECRET_NAME_HOSTS; or a placeholder bound to the fixtures' hosts)",
    )
    test.set_defaults(handler=cmd_guest_test)


def cmd_guest_new(args: argparse.Namespace) -> int:
    """``syncctl guest new``: write a template.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from pathlib import Path

    from syncctl.guest_templates import write_template

    written = write_template(Path(args.dir), args.lang)
    for path in written:
        sys.stdout.write(f"wrote {path}\n")
    return 0


def cmd_guest_build(args: argparse.Namespace) -> int:
    """``syncctl guest build``: compile, check, write.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from pathlib import Path

    from broker.settings import Settings
    from sync_format.atomic import atomic_write
    from syncctl.guest_build import build, default_output

    src = Path(args.src)
    result = build(src, Settings.from_env().cache_dir)
    out = Path(args.output) if args.output else default_output(src)
    with atomic_write(out) as handle:
        handle.write(result.wasm)
    sys.stdout.write(
        f"built {out} ({len(result.wasm)} bytes, {result.language}, {result.seconds:.2f} s); ABI checked\n"
    )
    return 0


def cmd_guest_test(args: argparse.Namespace) -> int:
    """``syncctl guest test``: one sandboxed run against fixtures.

    Args:
        args: Parsed arguments.

    Returns:
        0 when the guest completed, 1 when it failed.
    """
    from pathlib import Path

    from syncctl.guest_trial import run_trial

    return run_trial(
        Path(args.target),
        context=None if args.context is None else Path(args.context),
        fixtures=None if args.fixtures is None else Path(args.fixtures),
        payload=None if args.payload is None else Path(args.payload),
        output=None if args.output is None else Path(args.output),
        out=sys.stdout,
        allow_env=tuple(args.allow_env),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``syncctl run``: one refresh of one archive.

    Args:
        args: Parsed arguments.

    Returns:
        0 when the refresh succeeded (committed, unchanged or no update logic), 1 when it failed.
    """
    from broker.settings import Settings
    from syncctl.errors import RefreshFailed
    from workers.refresh import run_refresh
    from workers.runtime import GuestRuntime

    settings = Settings.from_env({"sandbox": args.sandbox, "cache_dir": args.cache_dir})
    # The user named this file: a symlink is followed here, once (the refresh itself never follows one).
    outcome = run_refresh(os.path.realpath(args.archive), GuestRuntime(settings))
    doc = outcome.to_json()
    doc["archive"] = str(args.archive)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_summary(doc))
    if not outcome.ok:
        raise RefreshFailed(outcome.error_code, outcome.error)
    return 0


def _summary(doc: dict[str, Any]) -> str:
    lines = [
        f"archive:    {escape_text(doc['archive'], 1000)}",
        f"status:     {doc['status']}",
        f"generation: {doc['base_generation']} -> {doc['generation']}",
        f"duration:   {doc['duration_ms']:.1f} ms",
    ]
    if doc["entry"]:
        lines.append(f"guest:      entry {doc['entry']}, fuel {doc['fuel_used']}, requests {doc['requests']}")
    if doc["payload_size"] is not None:
        lines.append(f"payload:    {doc['payload_size']} bytes")
    lines.extend(f"guest log:  {line}" for line in doc.get("guest_log") or ())
    sandbox = doc.get("sandbox")
    if sandbox:
        active = [s["layer"] for s in sandbox["layers"] if s["active"]]
        missing = [f"{s['layer']} ({s['reason']})" for s in sandbox["layers"] if not s["active"]]
        lines.append(f"sandbox:    {', '.join(active) or 'none'} (landlock ABI {sandbox['landlock_abi']})")
        if missing:
            lines.append(f"missing:    {'; '.join(missing)}")
    for refused in doc.get("egress") or []:
        host, reason = escape_text(refused["host"]), escape_text(refused["reason"])
        lines.append(f"egress:     {refused['rule']} ({refused['code']}) host {host}: {reason}")
    return "\n".join(lines) + "\n"
