"""What ``syncctl inspect`` reports about an archive: one JSON-ready document, and its text rendering.

Everything comes from the opened snapshot (CONTRIBUTING.md): the payload's BLAKE3 is the one ``state.json``
recorded at commit time, shown only when the state describes the current payload (``trusted``); a
``stale`` state (the payload was changed by a tool that does not keep ``state.json``) or a missing one
(``unknown``) is said so, and nothing is re-hashed — ``syncctl verify`` does that. The signature is
summarised, not verified.
"""

from __future__ import annotations

from typing import Any

from sync_format.builder import EMPTY_WASM
from sync_format.escape import escape_text
from sync_format.hosts import invalid_entries
from sync_format.reader import WASM_ENTRY, ArchiveSnapshot
from sync_format.zip_reader import METHOD_DEFLATED, METHOD_STORED

_METHODS = {METHOD_STORED: "stored", METHOD_DEFLATED: "deflated"}
#: Longest shown manifest value, allow-list entry and path, in characters (escapes included).
FIELD_LIMIT = 200
HOST_LIMIT = 100
PATH_LIMIT = 1000


def _has_update_logic(snapshot: ArchiveSnapshot) -> bool:
    """True when ``sync.wasm`` is present and is not the 8-byte empty module."""
    entry = snapshot.directory.get(WASM_ENTRY)
    if entry is None:
        return False
    if entry.size != len(EMPTY_WASM):
        return True
    return snapshot.read_wasm() != EMPTY_WASM


def _payload_hash_status(snapshot: ArchiveSnapshot) -> str:
    state = snapshot.state
    if state.payload_blake3 is None:
        return "unknown"
    return "stale" if state.stale else "trusted"


def _signature_summary(snapshot: ArchiveSnapshot) -> dict[str, Any]:
    sig = snapshot.manifest.signature
    if sig is None:
        return {"present": False}
    return {
        "present": True,
        "algo": sig.algo,
        "signer": snapshot.manifest.meta.created_by,
        "timestamp": sig.timestamp,
        "extension": sig.extension,
        "binds_payload": sig.payload_hash is not None,
        "binds_wasm": sig.wasm_hash is not None,
        "binds_context": sig.context_hash is not None,
    }


def describe_archive(snapshot: ArchiveSnapshot) -> dict[str, Any]:
    """Describe an opened archive.

    Args:
        snapshot: The archive.

    Returns:
        The ``inspect --json`` document.

    Raises:
        MalformedArchive: ``sync.wasm`` is 8 bytes long and fails its CRC check.
    """
    manifest = snapshot.manifest
    state = snapshot.state
    exp = snapshot.expiry()
    expires_at = exp.at_text() or ("never" if exp.never else None)
    return {
        "path": str(snapshot.path),
        "manifest": manifest.normalized(),
        "allow_hosts_never_matching": invalid_entries(manifest.permissions.allow_hosts),
        "entries": [
            {
                "name": e.name,
                "method": _METHODS.get(e.method, str(e.method)),
                "size": e.size,
                "compressed_size": e.compressed_size,
                "crc32": f"{e.crc32:08x}",
                "header_offset": e.header_offset,
                "data_offset": e.data_offset,
            }
            for e in snapshot.directory.entries
        ],
        "payload": {
            "offset": snapshot.payload_offset,
            "size": snapshot.payload_size,
            "crc32": f"{snapshot.payload.crc32:08x}",
            "blake3": state.payload_blake3,
            "blake3_status": _payload_hash_status(snapshot),
        },
        "update_logic": _has_update_logic(snapshot),
        "generation": state.generation,
        "updated_at": state.updated_at,
        "expiry_base": exp.base,
        "expires_at": expires_at,
        "expiry_error": exp.error,
        "expired": exp.is_expired(),
        "signature": _signature_summary(snapshot),
    }


def render_text(doc: dict[str, Any]) -> str:
    """Render an ``inspect`` document for people.

    Args:
        doc: The document from ``describe_archive``.

    Returns:
        The text, ending with a newline.
    """
    m = doc["manifest"]
    payload = doc["payload"]
    hosts = ", ".join(_s(h, HOST_LIMIT) for h in m["permissions"]["allow_hosts"])
    lines = [
        f"archive:      {_s(doc['path'], PATH_LIMIT)}",
        f"content:      {_s(m['sync']['content_type'])} (.{_s(m['sync']['display_ext'])}), "
        f"variant {_s(m['sync']['variant'])}, format {_s(m['sync']['version'])}",
        f"created:      {_s(m['meta']['created_at'])} by {_s(m['meta']['created_by'])}",
        f"policy:       ttl {m['policy']['ttl']} s, timeout {m['policy']['timeout']} s",
        f"allow_hosts:  {hosts or '(none)'}",
    ]
    if doc["allow_hosts_never_matching"]:
        never = ", ".join(_s(h, HOST_LIMIT) for h in doc["allow_hosts_never_matching"])
        lines.append(f"  never match: {never}")
    lines.append(f"update logic: {'yes (sync.wasm)' if doc['update_logic'] else 'none'}")
    lines.append("entries:")
    for e in doc["entries"]:
        lines.append(
            f"  {_s(e['name']):<16} {e['method']:<8} {e['size']:>14} bytes  "
            f"at {e['data_offset']:>10}  crc32 {e['crc32']}"
        )
    digest = payload["blake3"] or "-"
    lines.append(
        f"payload:      {payload['size']} bytes at offset {payload['offset']}, "
        f"blake3 {digest} ({payload['blake3_status']})"
    )
    lines.append(f"generation:   {doc['generation']}")
    lines.append(f"updated_at:   {_s(doc['updated_at'] or 'never refreshed')}")
    if doc["expiry_error"] is not None:
        expiry = f"unknown: {_s(doc['expiry_error'])} (counts as expired)"
    else:
        expiry = f"{doc['expires_at']} ({'expired' if doc['expired'] else 'fresh'})"
    lines.append(f"expires_at:   {expiry}")
    lines.append(f"signature:    {_signature_text(doc['signature'])}")
    return "\n".join(lines) + "\n"


def _signature_text(sig: dict[str, Any]) -> str:
    if not sig["present"]:
        return "none"
    parts = (
        ("payload", "binds_payload"),
        ("sync.wasm", "binds_wasm"),
        ("context.json", "binds_context"),
    )
    bound = [name for name, key in parts if sig[key]]
    scheme = sig["extension"] or "v1"
    binds = ", ".join(bound) if bound else "manifest only"
    return f"{_s(sig['algo'])} by {_s(sig['signer'])} at {_s(sig['timestamp'])} ({_s(scheme)}; binds {binds})"


def _s(value: object, limit: int = FIELD_LIMIT) -> str:
    """An archive-controlled value as shown: control and bidi characters escaped, length bounded."""
    return escape_text(value, limit)
