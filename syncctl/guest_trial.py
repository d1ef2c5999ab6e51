"""``syncctl guest test``: run a guest once in the real strict sandbox against fixtures, commit nothing.

The run uses a scratch archive (in a private temp directory) holding the guest, the payload it starts from
and the context: for an ARCHIVE these are its own (``--context`` replaces the context), for a bare WASM an
empty payload (or ``--payload``) and ``--context``. It goes through ``workers.refresh.execute_guest``, the
production path (same runtime, module cache, confined child, budgets), with a ``FixtureRequester`` instead
of egress, so no request leaves the machine. The report lists every request with its answer, the guest's log
lines, the outcome, and the resulting payload (text shown in full up to a limit) or a unified diff against
the payload it started from. Everything a guest or an archive chose is printed with non-printable characters
escaped (a terminal is not theirs to drive).
"""

from __future__ import annotations

import dataclasses
import difflib
import tempfile
from pathlib import Path
from typing import TextIO

from broker.settings import Settings
from sync_format.atomic import atomic_write
from sync_format.builder import SyncBuilder
from sync_format.hosts import parse_pattern, parse_url
from sync_format.reader import open_archive
from sync_format.template import template_manifest
from syncctl.guest_fixtures import Fixture, FixtureRequester, load_fixtures
from workers.engine import WASM_HEADER

#: Payload bytes shown as text in the report; longer ones are summarised.
SHOW_LIMIT = 4096


def run_trial(
    target: Path,
    *,
    context: Path | None,
    fixtures: Path | None,
    payload: Path | None,
    output: Path | None,
    out: TextIO,
    allow_env: tuple[str, ...] = (),
) -> int:
    """Run ``target``'s guest once against fixtures and report.

    Args:
        target: A ``.wasm`` module or a ``.sync`` archive.
        context: context.json to use instead of the archive's.
        fixtures: The fixtures file; without it every request gets -5.
        payload: Starting payload for a bare module.
        output: Where to also write the resulting payload.
        out: Where the report goes.
        allow_env: Secret names a bare module may use (an archive's own ``allow_env`` is used otherwise);
            values come from ``SYNC_GUEST_SECRET_<NAME>`` (bound by ``SYNC_GUEST_SECRET_<NAME>_HOSTS``, as in
            production) or are a placeholder bound to the fixtures' hosts, and are never printed.

    Returns:
        0 when the guest completed, 1 when it failed.
    """
    from workers.refresh import execute_guest
    from workers.runtime import GuestRuntime

    raw = target.read_bytes()
    allow_hosts: tuple[str, ...] | None = None
    if raw[:8] == WASM_HEADER:
        wasm, current, ctx = raw, b"" if payload is None else payload.read_bytes(), None
    else:
        with open_archive(target) as snap:
            wasm = snap.read_wasm() or b""
            current, ctx = snap.read_payload(), snap.read_context()
            allow_hosts = tuple(snap.manifest.permissions.allow_hosts)
            allow_env = tuple(snap.manifest.permissions.allow_env)
    if context is not None:
        ctx = context.read_bytes()
    canned = [] if fixtures is None else load_fixtures(fixtures)
    requester = FixtureRequester(canned, allow_hosts)
    settings = Settings.from_env({"sandbox": "strict"})
    # A placeholder is no secret, so it is bound to every destination of the trial; a real secret from the
    # environment keeps the operator's binding (unbound, it is refused here as it would be in production).
    placeholders = [name for name in allow_env if name not in settings.guest_secrets]
    trial_hosts = _trial_destinations(canned, allow_hosts or ())
    runtime = GuestRuntime(
        dataclasses.replace(
            settings,
            guest_secrets={name: f"<secret {name}>" for name in placeholders} | dict(settings.guest_secrets),
            guest_secret_hosts={name: trial_hosts for name in placeholders if trial_hosts}
            | dict(settings.guest_secret_hosts),
        )
    )
    with tempfile.TemporaryDirectory(prefix="sync-guest-test-") as tmp:
        scratch = Path(tmp) / "trial.sync"
        manifest = template_manifest(display_ext="bin", allow_hosts=allow_hosts or ("*",))
        if allow_env:
            permissions = dataclasses.replace(manifest.permissions, allow_env=allow_env)
            manifest = dataclasses.replace(manifest, permissions=permissions)
        builder = SyncBuilder().with_manifest(manifest).with_payload_bytes(current).with_wasm_bytes(wasm)
        if ctx is not None:
            builder.with_context_bytes(ctx)
        builder.write_to(scratch)
        with open_archive(scratch) as snap:
            result = execute_guest(snap, wasm, runtime, requester=requester)
        try:
            new = None if result.new_payload is None else result.new_payload.read()
        finally:
            result.close()
    _report(out, requester, result.log, current, new, result.unchanged)
    if result.error is not None:
        out.write(f"result:   failed: {result.error.code}: {' '.join(result.error.message.split())}\n")
        return 1
    if new is not None and output is not None:
        # Written beside it and renamed over it: a symlink a local user planted at OUT (in /tmp, say) is
        # replaced, never followed, so the guest's bytes cannot land in a file the link points at.
        with atomic_write(output) as handle:
            handle.write(new)
    return 0


def _trial_destinations(canned: list[Fixture], allow_hosts: tuple[str, ...]) -> tuple[str, ...]:
    """Host patterns of everything a trial can reach: each fixture's host:port and the archive's allow-list
    entries that parse (placeholder secrets are bound to these)."""
    found: list[str] = [entry for entry in allow_hosts if parse_pattern(entry) is not None]
    for fixture in canned:
        target = parse_url(fixture.url)
        if target is not None:
            host = f"[{target.host}]" if ":" in target.host else target.host
            found.append(f"{host}:{target.port}")
    return tuple(dict.fromkeys(found))


def _report(
    out: TextIO,
    requester: FixtureRequester,
    log: list[str],
    current: bytes,
    new: bytes | None,
    unchanged: bool,
) -> None:
    out.write(f"requests: {len(requester.requests)}\n")
    for req in requester.requests:
        answer = f"{req.status}" if req.error_code is None else f"{req.status} ({req.error_code})"
        out.write(f"  {_printable(req.method)} {_printable(req.url)} -> {answer}\n")
        for name, value in req.headers:
            shown = "(from an operator secret)" if name.lower() in req.secret_headers else _printable(value)
            out.write(f"      {_printable(name)}: {shown}\n")
    if log:
        out.write("log:\n" + "".join(f"  {line}\n" for line in log))
    if new is None:
        out.write("result:   unchanged (the guest said so)\n" if unchanged else "result:   unchanged\n")
        return
    out.write(f"result:   new payload, {len(new)} bytes (was {len(current)})\n")
    if new == current:
        out.write("payload:  identical to the current one\n")
        return
    try:
        old_text, new_text = current.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        out.write("payload:  binary\n")
        return
    old_text, new_text = _printable(old_text, keep="\n\t"), _printable(new_text, keep="\n\t")
    if not current:
        shown = new_text if len(new_text) <= SHOW_LIMIT else new_text[:SHOW_LIMIT] + "\n[...]\n"
        out.write("payload:\n" + shown + ("" if shown.endswith("\n") else "\n"))
        return
    diff = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True), "current", "new"
    )
    out.write("diff:\n" + "".join(line if line.endswith("\n") else line + "\n" for line in diff))


def _printable(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (ESC, C1 controls, bidi overrides...) as an escape.

    What a guest or an archive chose (URLs, header values, payload text) reaches a terminal here: it must
    not be able to clear the screen, retitle the window or hide text.
    """
    return "".join(c if c.isprintable() or c in keep else ascii(c)[1:-1] for c in text)
