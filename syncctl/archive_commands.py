"""The archive half of ``syncctl``: ``keygen``, ``pack``, ``inspect``, ``verify`` and ``extract``.

Each command parses its arguments, calls the library and prints; errors travel up as ``SyncError`` or
``OSError`` to ``syncctl.main``, the one place that maps them to an exit status. The library (and with it
blake3 and PyNaCl) is imported inside the command that needs it, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sync_format.escape import escape_json_text

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import BinaryIO

    from sync_format import PayloadReader
    from syncctl.progress import ProgressCallback

#: Largest value of ``policy.ttl``/``policy.timeout``: TOML integers are signed 64-bit.
_MAX_SECONDS = 2**63 - 1
#: Block size for streaming payload bytes out (1 MiB).
_BLOCK = 1024 * 1024

_PACK_EPILOG = """\
defaults follow the reference store template: created_by "sync-fs", ttl 3600, timeout 30, format 1.2,
hash blake3, created_at now; display_ext is the input file's extension (a trailing .sync is stripped)
and content_type comes from the template's table for that extension (application/octet-stream when
unknown).

--sign signs the manifest with the reference's v1 scheme plus the sync-ext/1 extension, which also binds
sync.wasm and context.json, and sets created_by to the key's did:key. The payload is bound (its BLAKE3 is
signed) only when the archive has no update logic (no --wasm): a self-updating archive's payload changes
at every refresh while its manifest and signature stay as they are, so binding it would break the
signature at the first refresh."""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add the archive commands to the ``syncctl`` parser.

    Args:
        subparsers: The parser's subcommand set.
        common: Options every subcommand accepts (``-v``).
    """
    keygen = subparsers.add_parser(
        "keygen",
        parents=[common],
        help="write a new Ed25519 signing key and print its did:key",
        description="Write a new Ed25519 key as PKCS#8 PEM (mode 0600; never overwrites a file) "
        "and print its did:key.",
    )
    keygen.add_argument("keyfile", metavar="KEYFILE", help="where to write the key")
    keygen.add_argument("--json", action="store_true", help='print {"did": ..., "path": ...}')
    keygen.set_defaults(handler=cmd_keygen)

    pack = subparsers.add_parser(
        "pack",
        parents=[common],
        help="wrap a file as a .sync archive",
        description="Wrap FILE as the payload of a new .sync archive (written atomically).",
        epilog=_PACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pack.add_argument("file", metavar="FILE", help="the payload (streamed; any size)")
    pack.add_argument("-o", "--output", metavar="OUT.sync", required=True, help="archive to write")
    pack.add_argument(
        "--wasm",
        metavar="W",
        help="guest module (update logic); without it the 8-byte empty module is stored",
    )
    pack.add_argument("--ttl", metavar="S", type=_seconds, help="policy.ttl in seconds (3600)")
    pack.add_argument("--timeout", metavar="S", type=_seconds, help="policy.timeout in seconds (30)")
    pack.add_argument(
        "--allow-host",
        metavar="H",
        action="append",
        default=[],
        type=_text,
        help="host the update logic may reach (repeat for several; *.example.com for subdomains, "
        "host:port to pin a port); entries that can never match are warned about",
    )
    pack.add_argument(
        "--allow-env",
        metavar="NAME",
        action="append",
        default=[],
        type=_text,
        help="secret the update logic may reference in request headers as ${NAME}; the operator supplies "
        "its value (SYNC_GUEST_SECRET_NAME) and the hosts it may go to (SYNC_GUEST_SECRET_NAME_HOSTS), the "
        "archive never does (repeat for several)",
    )
    pack.add_argument("--content-type", metavar="T", type=_text, help="sync.content_type")
    pack.add_argument("--display-ext", metavar="E", type=_text, help="sync.display_ext")
    pack.add_argument(
        "--context",
        metavar="JSON",
        help="context.json for the update logic: inline JSON object text when the value starts "
        "with '{', otherwise the path of a file holding it (stored byte for byte)",
    )
    who = pack.add_mutually_exclusive_group()
    who.add_argument("--sign", metavar="KEYFILE", help="sign the manifest with this key (see below)")
    who.add_argument("--created-by", metavar="ID", type=_text, help="meta.created_by of an unsigned archive")
    pack.set_defaults(handler=cmd_pack)

    inspect = subparsers.add_parser(
        "inspect",
        parents=[common],
        help="show manifest, entries, payload, generation and expiry",
        description="Show an archive's manifest, entries, payload span and hash, refresh state, "
        "expiry and signature summary (nothing is re-hashed; use verify for that).",
    )
    inspect.add_argument("archive", metavar="ARCHIVE")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.set_defaults(handler=cmd_inspect)

    verify = subparsers.add_parser(
        "verify",
        parents=[common],
        help="check integrity and signatures (exit 0 only when intact)",
        description="Check every entry's CRC, the payload hash recorded at commit time, the "
        "manifest signature and a detached ARCHIVE.sig.json when present. Exit 0 when intact "
        "(and every signature present is valid), 1 otherwise.",
    )
    verify.add_argument("archive", metavar="ARCHIVE")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.add_argument(
        "--require-signature",
        action="store_true",
        help="fail when there is neither a [signature] table nor a detached ARCHIVE.sig.json",
    )
    verify.set_defaults(handler=cmd_verify)

    extract = subparsers.add_parser(
        "extract",
        parents=[common],
        help="write the payload bytes",
        description="Write the payload to a file (atomically) or to stdout.",
    )
    extract.add_argument("archive", metavar="ARCHIVE")
    extract.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="-",
        help="destination file, replaced atomically; '-' (the default) for stdout",
    )
    extract.set_defaults(handler=cmd_extract)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value <= _MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {_MAX_SECONDS}")
    return value


def _text(text: str) -> str:
    """Manifest strings must be valid UTF-8; undecodable argv bytes arrive as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {text!r}") from None
    return text


def _print_json(doc: Any) -> None:
    # Raw bidi and format characters from an archive would reorder what the terminal shows: escaped.
    sys.stdout.write(escape_json_text(json.dumps(doc, indent=2, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key file (never overwriting one) and print its did:key.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from sync_format.signing import SigningKey, write_key_file

    key = SigningKey.generate()
    write_key_file(args.keyfile, key)
    if args.json:
        _print_json({"did": key.did, "path": str(Path(args.keyfile).resolve())})
    else:
        print(key.did)
    return 0


def _context_bytes(value: str) -> tuple[bytes, Path | None]:
    """The ``--context`` bytes and the file they came from (None for inline text)."""
    if value.lstrip().startswith("{"):
        return os.fsencode(value), None  # argv bytes as given; the builder checks UTF-8 and JSON
    path = Path(value)
    return path.read_bytes(), path


def _hash_file(path: Path, progress: ProgressCallback) -> str:
    """``blake3:<hex>`` of a file, streamed, reporting progress (the payload hash a signature binds)."""
    import blake3

    from sync_format.signing.canonical import HASH_PREFIX

    hasher = blake3.blake3()
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            hasher.update(block)
            done += len(block)
            progress(done)
    return HASH_PREFIX + hasher.hexdigest()


def cmd_pack(args: argparse.Namespace) -> int:
    """Wrap a file as an archive.

    Args:
        args: Parsed arguments.

    Returns:
        0.

    Raises:
        ArchiveError: Unreadable or invalid inputs, or the archive could not be written.
    """
    from sync_format import EMPTY_WASM, ArchiveError, SyncBuilder, invalid_entries
    from sync_format.freshness import format_timestamp, now_ns
    from sync_format.signing import read_key_file, sign_manifest
    from sync_format.signing.canonical import HASH_PREFIX
    from sync_format.template import (
        DEFAULT_CREATED_BY,
        DEFAULT_TIMEOUT,
        DEFAULT_TTL,
        extension_of,
        template_manifest,
    )
    from syncctl.progress import byte_progress

    payload = Path(args.file)
    output = Path(args.output)
    builder = SyncBuilder().with_payload_file(payload)
    size = payload.stat().st_size
    wasm = EMPTY_WASM
    if args.wasm is not None:
        wasm = Path(args.wasm).read_bytes()
        try:
            builder.with_wasm_bytes(wasm)
        except ArchiveError as exc:
            exc.at(args.wasm)  # name the file the user gave
            raise
    context = None
    if args.context is not None:
        context, source = _context_bytes(args.context)
        try:
            builder.with_context_bytes(context)
        except ArchiveError as exc:
            if source is not None:
                exc.at(source)
            raise
    now = format_timestamp(now_ns())
    manifest = template_manifest(
        display_ext=args.display_ext if args.display_ext is not None else extension_of(payload.name),
        content_type=args.content_type,
        created_by=DEFAULT_CREATED_BY if args.created_by is None else args.created_by,
        created_at=now,
        ttl=DEFAULT_TTL if args.ttl is None else args.ttl,
        timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
        allow_hosts=args.allow_host,
    )
    if args.allow_env:
        permissions = dataclasses.replace(manifest.permissions, allow_env=tuple(args.allow_env))
        manifest = dataclasses.replace(manifest, permissions=permissions)
    never = invalid_entries(manifest.permissions.allow_hosts)
    if never:
        _warn(f"allow-host entries that can never match: {', '.join(map(repr, never))}")
    payload_hash = None
    if args.sign is not None:
        key = read_key_file(args.sign)
        if wasm == EMPTY_WASM:
            with byte_progress("hashing payload", size) as progress:
                payload_hash = _hash_file(payload, progress)
        manifest = sign_manifest(
            manifest,
            key,
            timestamp=now,
            payload=payload_hash,
            wasm=wasm,
            context=context,
            extension=True,
        )
    builder.with_manifest_bytes(manifest.to_bytes())
    with byte_progress("packing payload", size) as progress:
        result = builder.write_to(output, progress=progress)
    if payload_hash is not None and payload_hash != HASH_PREFIX + result.payload.blake3:
        output.unlink(missing_ok=True)
        raise ArchiveError(
            "the payload changed while it was being packed; the signed archive was removed",
            path=output,
        )
    signed = f", signed by {manifest.meta.created_by}" if args.sign is not None else ""
    print(
        f"{result.path}: payload {result.payload.size} bytes at offset {result.payload_offset}, "
        f"blake3 {result.payload.blake3}{signed}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Describe an archive.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from sync_format import open_archive
    from syncctl.inspection import describe_archive, render_text

    with open_archive(args.archive) as snapshot:
        doc = describe_archive(snapshot)
    if args.json:
        _print_json(doc)
    else:
        sys.stdout.write(render_text(doc))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check an archive's integrity and signatures.

    Args:
        args: Parsed arguments.

    Returns:
        0 when intact.

    Raises:
        ArchiveError: Some check failed (after the report was printed).
    """
    from sync_format import ArchiveError
    from syncctl.integrity import check_archive

    report = check_archive(args.archive, require_signature=args.require_signature)
    if args.json:
        _print_json(report.to_json())
    else:
        sys.stdout.write(report.render_text())
        sys.stdout.flush()
    for warning in report.warnings:
        _warn(warning)
    if not report.ok:
        failure = report.failure_message()
        if report.opened:
            raise ArchiveError(f"verification failed: {failure}", path=report.path)
        raise ArchiveError(failure)  # the reader's own message, which names the file
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Write an archive's payload to a file (atomically) or stdout.

    Args:
        args: Parsed arguments.

    Returns:
        0.
    """
    from sync_format import open_archive
    from sync_format.atomic import atomic_write
    from syncctl.progress import byte_progress

    with (
        open_archive(args.archive) as snapshot,
        snapshot.open_payload() as reader,
        byte_progress("extracting payload", reader.size) as progress,
    ):
        if args.output == "-":
            _copy(reader, sys.stdout.buffer, progress)
            sys.stdout.buffer.flush()
        else:
            with atomic_write(Path(args.output)) as out:
                _copy(reader, out, progress)
    return 0


def _copy(reader: PayloadReader, out: BinaryIO, progress: ProgressCallback) -> None:
    done = 0
    blocks: Iterable[bytes] = reader.iter_blocks(_BLOCK)
    for block in blocks:
        out.write(block)
        done += len(block)
        progress(done)
