"""Build the demo: a small store of signed, self-updating archives, refreshed twice in the sandbox.

``make demo`` runs this, then serves ``demo/store`` with ``syncctl serve`` (live refreshes, nothing else
to install). Run alone: ``python examples/demo_archive.py [DIR]``. It builds ``DIR/store`` (``demo/`` by
default, ignored by git; sources, key and caches live beside the store, not in it) with a CSV of readings
whose guest (``examples/guests/append_reading.wat``) appends a row at every refresh, and a static JSON
feed. Both are signed with a fresh key: the CSV's signature binds its update logic (not its payload,
which changes), the feed's binds its payload. ``syncctl run`` refreshes the CSV twice in the sandbox
(atomic swaps, generation 1 and 2), and ``syncctl inspect`` and ``syncctl verify`` show the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "demo"


def syncctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would and echo what it prints."""
    print(f"$ syncctl {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", *args], check=False, text=True, capture_output=True
    )
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"syncctl {args[0]} failed with exit code {result.returncode}")
    return result


def main(base: Path = DEFAULT_DIR) -> None:
    """Build, sign, refresh twice, inspect and verify the demo store in ``base / "store"``."""
    store = base / "store"
    store.mkdir(parents=True, exist_ok=True)
    sources = base / "sources"
    sources.mkdir(exist_ok=True)
    readings = sources / "readings.csv"
    readings.write_text("reading,sensor,celsius\n1,roof,7.1\n")
    feed = sources / "feed.json"
    feed.write_text(json.dumps({"items": [{"title": "hello"}]}) + "\n")
    guest = sources / "append_reading.wasm"
    guest.write_bytes(wasmtime.wat2wasm((ROOT / "examples" / "guests" / "append_reading.wat").read_text()))
    key = base / "demo-key.pem"
    if not key.exists():
        syncctl("keygen", str(key))

    csv_archive = store / "readings.csv.sync"
    json_archive = store / "feed.json.sync"
    syncctl(
        "pack", str(readings), "-o", str(csv_archive), "--ttl", "5", "--wasm", str(guest), "--sign", str(key)
    )
    syncctl("pack", str(feed), "-o", str(json_archive), "--ttl", "3600", "--sign", str(key))

    cache = ["--cache-dir", str(base / "cache")]
    syncctl("run", str(csv_archive), *cache)
    syncctl("run", str(csv_archive), *cache)
    syncctl("extract", str(csv_archive))

    for archive in (csv_archive, json_archive):
        syncctl("inspect", str(archive))
        syncctl("verify", str(archive))
    print(f"\nDemo store ready in {store}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)
