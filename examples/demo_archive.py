"""The main job until the server exists: pack a small demo store, sign it, inspect and verify it.

Run with ``make demo``. It builds ``demo-store/`` (ignored by git) with a CSV of readings and a JSON feed,
signs them with a fresh key, commits one payload refresh to show the atomic swap and the generation, and
prints what ``syncctl inspect`` and ``syncctl verify`` say. Later issues turn this into ``syncctl demo``,
which serves the store over WebDAV with live refreshes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sync_format import commit_payload

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "demo-store"


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


def main() -> None:
    """Build, sign, refresh once, inspect and verify the demo store."""
    STORE.mkdir(exist_ok=True)
    sources = STORE / "sources"
    sources.mkdir(exist_ok=True)
    readings = sources / "readings.csv"
    readings.write_text("time,sensor,celsius\n2026-11-25T12:00:00Z,roof,7.5\n")
    feed = sources / "feed.json"
    feed.write_text(json.dumps({"items": [{"title": "hello"}]}) + "\n")
    key = STORE / "demo-key.pem"
    if not key.exists():
        syncctl("keygen", str(key))

    csv_archive = STORE / "readings.csv.sync"
    json_archive = STORE / "feed.json.sync"
    syncctl("pack", str(readings), "-o", str(csv_archive), "--ttl", "5", "--sign", str(key))
    syncctl("pack", str(feed), "-o", str(json_archive), "--ttl", "5", "--allow-host", "127.0.0.1")

    result = commit_payload(csv_archive, 0, readings.read_bytes() + b"2026-11-25T12:00:05Z,roof,7.6\n")
    print(f"refreshed {csv_archive.name}: generation {result.generation}\n")

    for archive in (csv_archive, json_archive):
        syncctl("inspect", str(archive))
        syncctl("verify", str(archive))
    print(f"\nDemo store ready in {STORE}")


if __name__ == "__main__":
    main()
