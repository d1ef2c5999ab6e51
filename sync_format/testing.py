"""Test data for sync and for people testing against it: manifests and archives made on demand.

Nothing here is used by the product at run time; tests, benchmarks and examples import it so that no test
data has to be committed. The reference manifest is the spec's §2.7 builder manifest (TV-1).
"""

from __future__ import annotations

import os
from pathlib import Path

from sync_format.builder import EMPTY_WASM, BuildResult, SyncBuilder
from sync_format.manifest import Manifest, MetaSection, PermissionsSection, PolicySection, SyncSection

#: The spec's §2.7 example manifest, exactly as the reference builder writes it (383 bytes).
REFERENCE_MANIFEST_TOML = """\
[sync]
version = "1.2"
content_type = "text/plain"
display_ext = "txt"
variant = "plain"

[meta]
created_by = "builder"
created_at = "2099-01-23T12:00:00Z"
hash_algo = "blake3"

[policy]
ttl = 3600
timeout = 30

[permissions]
allow_hosts = []
allow_env = []

[ownership]
write_allowed = false

[verification]
enabled = false

[capabilities]
values = []

[encryption]
enabled = false
"""

#: RFC 8032 test 1 secret seed, the key of the spec's signature vectors (§3.4).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_DID = "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"


def reference_manifest() -> Manifest:
    """The §2.7 builder manifest.

    Returns:
        The parsed manifest.
    """
    return Manifest.from_toml(REFERENCE_MANIFEST_TOML)


def make_manifest(
    *,
    content_type: str = "text/plain",
    display_ext: str = "txt",
    created_at: str = "2026-01-01T00:00:00Z",
    created_by: str = "sync-tests",
    ttl: int = 3600,
    timeout: int = 30,
    allow_hosts: tuple[str, ...] = (),
) -> Manifest:
    """A minimal valid manifest with the given fields.

    Args:
        content_type: ``sync.content_type``.
        display_ext: ``sync.display_ext``.
        created_at: ``meta.created_at``.
        created_by: ``meta.created_by``.
        ttl: ``policy.ttl`` in seconds.
        timeout: ``policy.timeout`` in seconds.
        allow_hosts: ``permissions.allow_hosts``.

    Returns:
        The manifest.
    """
    return Manifest(
        sync=SyncSection(version="1.2", content_type=content_type, display_ext=display_ext),
        meta=MetaSection(created_by=created_by, created_at=created_at, hash_algo="blake3"),
        policy=PolicySection(ttl=ttl, timeout=timeout),
        permissions=PermissionsSection(allow_hosts=allow_hosts),
    )


def make_archive(
    path: str | os.PathLike[str],
    payload: bytes = b"hello",
    *,
    manifest: Manifest | None = None,
    wasm: bytes = EMPTY_WASM,
    context: bytes | None = None,
    proof: bytes | None = None,
    state: bool = True,
) -> BuildResult:
    """Build an archive at ``path``.

    Args:
        path: Destination.
        payload: Payload bytes.
        manifest: Manifest; the reference manifest when None.
        wasm: ``sync.wasm`` bytes.
        context: ``context.json`` bytes, if any.
        proof: ``sync.proof`` bytes, if any.
        state: Whether to write ``state.json``.

    Returns:
        The builder's result.
    """
    builder = (
        SyncBuilder()
        .with_manifest(manifest or reference_manifest())
        .with_payload_bytes(payload)
        .with_wasm_bytes(wasm)
    )
    if context is not None:
        builder.with_context_bytes(context)
    if proof is not None:
        builder.with_proof_bytes(proof)
    if not state:
        builder.without_state()
    return builder.write_to(path)


def reference_archive_bytes(tmp_dir: str | os.PathLike[str]) -> bytes:
    """The bytes of TV-1 (reference manifest, payload ``hello``, empty module, no state).

    Args:
        tmp_dir: A directory to build in.

    Returns:
        The 704 archive bytes.
    """
    path = Path(tmp_dir, "tv1.sync")
    make_archive(path, state=False)
    return path.read_bytes()
