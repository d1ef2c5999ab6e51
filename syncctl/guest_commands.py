"""The guest half of ``syncctl``: ``run`` performs one refresh now, in the sandbox, committed atomically.

The command builds ``Settings`` from its flags and the environment, a ``GuestRuntime`` from them, and calls
``workers.refresh.run_refresh``; a failed refresh is exit status 1 with one ``error:`` line naming the
stable error code. wasmtime and the sandbox are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
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


def cmd_run(args: argparse.Namespace) -> int:
    """``syncctl run``: one refresh of one archive.

    Args:
        args: Parsed arguments.

    Returns:
        0 when the refresh succeeded (committed, unchanged or no update logic), 1 when it failed.
    """
    from broker.settings import Settings
    from workers.refresh import run_refresh
    from workers.runtime import GuestRuntime

    settings = Settings.from_env({"sandbox": args.sandbox, "cache_dir": args.cache_dir})
    outcome = run_refresh(args.archive, GuestRuntime(settings))
    doc = outcome.to_json()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_summary(doc))
    if not outcome.ok:
        error = escape_text(" ".join((outcome.error or "").split()), 1000)
        sys.stderr.write(f"error: {outcome.error_code}: {error}\n")
        return 1
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
