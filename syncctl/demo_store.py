"""Build the demo store: signed, self-updating archives whose guests fetch from the running demo source.

Layout of a demo directory ``DIR`` (``./sync-demo`` by default): ``DIR/store/`` (the archives, what is
served), ``DIR/demo-key.pem`` (the signing key, made once and kept), ``DIR/cache/`` (compiled guests and the
embedded broker's data), ``DIR/workers.log`` (what the refresh workers say) and ``DIR/.sync-demo`` (the
marker that says this directory is a demo's). Everything the demo writes stays in ``DIR``: deleting it
removes the demo.

The archives, each refreshed at most every ``DEMO_TTL`` seconds when read:

* ``readings.csv`` and ``feed.json``: the guest ``demo_guests/fetch_source.wasm`` (built with the C SDK
  from ``fetch_source.c``) fetches the URL its ``context.json`` names, the demo source's document, and
  writes the body as the new payload; ``allow_hosts`` names the source exactly (``127.0.0.1:PORT``);
* ``appended.csv``: the guest ``demo_guests/append_reading.wat``, kept as the hand-written reference
  example of the ABI, appends a row to its own payload; it needs no network.

Invariants:
    * The source's port is known only at run time and is part of both the context (its URL) and the signed
      manifest, so every run rebuilds the three archives (atomically, over the previous ones); other files
      in the store are left alone.
    * A directory is used only when it is missing, empty, or carries the marker: the demo never writes into
      a directory it did not make (``DemoDirectoryError``).
    * Every archive is signed (``sync-ext/1``) with the demo key: the signature binds the manifest and
      ``sync.wasm``, not the payload, which changes at every refresh (as ``syncctl pack --sign`` does).
    * The guests ship in the package (the fetch guest as its built module, so no toolchain is needed; the
      reference guest as WAT), so the demo works from an installed wheel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime

from sync_format import SyncBuilder
from sync_format.errors import SyncError
from sync_format.freshness import format_timestamp, now_ns
from sync_format.signing import SigningKey, read_key_file, sign_manifest, write_key_file
from sync_format.template import extension_of, template_manifest
from syncctl.demo_source import FEED_PATH, READINGS_PATH

if TYPE_CHECKING:
    from syncctl.demo_source import DemoSource

#: Seconds an archive stays fresh: a read after that starts a refresh.
DEMO_TTL = 5
#: Seconds one guest run may take (a fetch from loopback takes milliseconds).
DEMO_TIMEOUT = 10
#: Longest source URL the fetch guest holds (its buffer is 2 KiB, NUL included).
MAX_URL_BYTES = 2047

MARKER = ".sync-demo"
KEY_FILE = "demo-key.pem"
STORE_DIR = "store"
CACHE_DIR = "cache"
WORKER_LOG = "workers.log"
_MARKER_TEXT = "This directory was made by `syncctl demo`; it may be deleted.\n"
_APPENDED_SEED = b"reading,sensor,celsius\n1,roof,7.1\n"


class DemoDirectoryError(SyncError):
    """Raised when the demo directory cannot be used: it holds other files, or is not a directory.

    Attributes:
        path: The directory.
    """

    code = "demo_directory"

    def __init__(self, message: str, *, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class DemoArchive:
    """One archive of the demo store.

    Attributes:
        name: The name it is served under (``readings.csv``).
        path: The ``.sync`` file.
        what: One line saying what refreshes it.
    """

    name: str
    path: Path
    what: str


@dataclass(frozen=True)
class DemoStore:
    """A built demo directory.

    Attributes:
        base: The demo directory.
        store: The store directory to serve.
        cache: The cache directory (compiled guests, embedded broker).
        worker_log: Where the local refresh workers write their output.
        signer: The ``did:key`` that signed the archives.
        archives: The archives built, in display order.
    """

    base: Path
    store: Path
    cache: Path
    worker_log: Path
    signer: str
    archives: tuple[DemoArchive, ...]


def prepare_directory(base: Path) -> None:
    """Create ``base`` (or accept it as a previous demo's) and mark it as the demo's.

    Args:
        base: The demo directory.

    Raises:
        DemoDirectoryError: ``base`` is not a directory, or holds files and no marker.
    """
    if base.exists() and not base.is_dir():
        raise DemoDirectoryError("exists and is not a directory", path=base)
    if base.is_dir() and not (base / MARKER).exists() and any(base.iterdir()):
        raise DemoDirectoryError(
            "is not empty and was not made by `syncctl demo`; give a new or empty directory", path=base
        )
    base.mkdir(parents=True, exist_ok=True)
    (base / MARKER).write_text(_MARKER_TEXT)


def _demo_key(path: Path) -> SigningKey:
    """The demo's signing key: read it, or write a new one the first time."""
    if not path.exists():
        write_key_file(path, SigningKey.generate())
    return read_key_file(path)


def _guest_wat(name: str) -> str:
    return files("syncctl").joinpath("demo_guests", name).read_text(encoding="utf-8")


def fetch_guest() -> bytes:
    """The fetch guest: the shipped module built from ``demo_guests/fetch_source.c``.

    Returns:
        The binary module.
    """
    return files("syncctl").joinpath("demo_guests", "fetch_source.wasm").read_bytes()


def fetch_context(url: str) -> bytes:
    """The ``context.json`` that points the fetch guest at ``url``.

    Args:
        url: What the guest fetches.

    Returns:
        The JSON bytes.

    Raises:
        ValueError: The URL does not fit the guest's buffer.
    """
    if len(url.encode()) > MAX_URL_BYTES:
        raise ValueError(f"source URL is too long for the fetch guest: {url!r}")
    return json.dumps({"url": url}).encode()


def append_guest() -> bytes:
    """Compile the guest that appends a row to its own payload.

    Returns:
        The binary module.
    """
    return bytes(wasmtime.wat2wasm(_guest_wat("append_reading.wat")))


def _write_signed(
    path: Path,
    payload: bytes,
    wasm: bytes,
    key: SigningKey,
    *,
    allow_hosts: tuple[str, ...] = (),
    context: bytes | None = None,
) -> None:
    now = format_timestamp(now_ns())
    manifest = template_manifest(
        display_ext=extension_of(path.name),
        created_at=now,
        ttl=DEMO_TTL,
        timeout=DEMO_TIMEOUT,
        allow_hosts=allow_hosts,
    )
    # The payload is left unbound: it changes at every refresh, the manifest and the guest do not.
    signed = sign_manifest(manifest, key, timestamp=now, wasm=wasm, context=context, extension=True)
    builder = SyncBuilder().with_manifest_bytes(signed.to_bytes()).with_payload_bytes(payload)
    builder.with_wasm_bytes(wasm)
    if context is not None:
        builder.with_context_bytes(context)
    builder.write_to(path)


def build_demo_store(base: Path, source: DemoSource) -> DemoStore:
    """Build (or rebuild) the demo store in ``base`` for a running ``source``.

    Args:
        base: The demo directory (see the module docstring for its layout).
        source: The started demo source the fetching guests read from.

    Returns:
        What was built.

    Raises:
        DemoDirectoryError: ``base`` cannot be used.
        ArchiveError: An archive could not be written.
        SignatureError: The key file exists but is not a key.
    """
    base = base.absolute()
    prepare_directory(base)
    key = _demo_key(base / KEY_FILE)
    store = base / STORE_DIR
    store.mkdir(exist_ok=True)
    hosts = (source.host_entry,)
    archives = []
    latest = source.latest()
    fetched = (
        (READINGS_PATH, "sensor readings", source.readings_csv(latest)),
        (FEED_PATH, "a JSON feed", source.feed_json(latest)),
    )
    for path, what, body in fetched:
        name = path.lstrip("/")
        archive = DemoArchive(name, store / f"{name}.sync", f"{what} fetched from {source.url(path)}")
        context = fetch_context(source.url(path))
        _write_signed(archive.path, body, fetch_guest(), key, allow_hosts=hosts, context=context)
        archives.append(archive)
    appended = DemoArchive(
        "appended.csv", store / "appended.csv.sync", "a row appended by its guest, offline"
    )
    _write_signed(appended.path, _APPENDED_SEED, append_guest(), key)
    archives.append(appended)
    return DemoStore(base, store, base / CACHE_DIR, base / WORKER_LOG, key.did, tuple(archives))


def describe(built: DemoStore) -> str:
    """What the demo built, for the terminal.

    Args:
        built: The built store.

    Returns:
        Lines ending in a newline.
    """
    width = max(len(a.name) for a in built.archives)
    lines = [
        f"demo store {built.store}, signed by {built.signer}",
        f"each archive is refreshed when it is read more than {DEMO_TTL} s after its last refresh:",
    ]
    lines += [f"  {a.name:<{width}}  {a.what}" for a in built.archives]
    return "\n".join(lines) + "\n"
