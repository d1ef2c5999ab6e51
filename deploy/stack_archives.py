"""Archives for deploy/test-stack.sh, made inside the project image (it has wasmtime and sync_format).

Run by ``stack_checks.py`` in a one-off container as ``python /deploy/stack_archives.py OUT`` with the
repository's ``tests/`` mounted at /tests (for ``guests``, the test guests). Writes into OUT:

* ``ttl/ttl.sync``: a 5 s TTL archive whose guest appends a CSV row (``syncctl``'s demo guest, no network);
* ``scale/scale-NN.sync`` (30) and ``restart/restart-NN.sync`` (10): the same guest, created an hour ago
  with a 10 minute TTL, so they are stale when copied into the store and fresh after one refresh;
* ``hostile/hostile.sync``: stale, its manifest allows flower:5555, redis:6379, mountd:4918 and
  169.254.169.254, its guest requests each and records the results (``guests.record``);
* ``index.json``: for each archive file, the name mountd serves it under and the hostile guest's URLs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import wasmtime

sys.path.insert(0, os.environ.get("SYNC_TESTS_DIR", "/tests"))
from guests import http_request, record

from sync_format.store import display_name
from sync_format.testing import make_archive, make_manifest

#: What the hostile guest asks for: a Flower API call that shuts a worker down, Redis, mountd, cloud metadata.
HOSTILE = (
    ("POST", "http://flower:5555/api/worker/shutdown/any"),
    ("GET", "http://redis:6379/"),
    ("GET", "http://mountd:4918/"),
    ("GET", "http://169.254.169.254/latest/meta-data/"),
)
HOSTILE_HOSTS = ("flower:5555", "redis:6379", "mountd:4918", "169.254.169.254")


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(out: Path) -> None:
    append = bytes(
        wasmtime.wat2wasm((resources.files("syncctl") / "demo_guests" / "append_reading.wat").read_text())
    )
    now = time.time()
    index: dict[str, object] = {}

    def build(group: str, name: str, wasm: bytes, payload: bytes, **manifest: object) -> None:
        path = out / group / name
        path.parent.mkdir(parents=True, exist_ok=True)
        made = make_manifest(content_type="text/csv", display_ext="csv", **manifest)  # type: ignore[arg-type]
        make_archive(path, payload, manifest=made, wasm=wasm)
        index[f"{group}/{name}"] = display_name(path, "csv")

    # Fresh for 5 s from the next whole second, then stale.
    build("ttl", "ttl.sync", append, b"n,sensor,value\n", ttl=5, created_at=stamp(now + 1))
    for i in range(30):
        build(
            "scale", f"scale-{i:02d}.sync", append, b"n,sensor,value\n", ttl=600, created_at=stamp(now - 3600)
        )
    for i in range(10):
        build(
            "restart",
            f"restart-{i:02d}.sync",
            append,
            b"n,sensor,value\n",
            ttl=600,
            created_at=stamp(now - 3600),
        )
    calls, data, at = [], {}, 0x100
    for method, url in HOSTILE:
        expr, segments = http_request(url, method, at=at)
        calls.append(expr)
        data.update(segments)
        at += len(url) + len(method) + 16
    build(
        "hostile",
        "hostile.sync",
        record(*calls, data=data),
        b"untouched\n",
        ttl=600,
        timeout=60,
        created_at=stamp(now - 3600),
        allow_hosts=HOSTILE_HOSTS,
    )
    index["hostile_urls"] = [f"{m} {u}" for m, u in HOSTILE]
    (out / "index.json").write_text(json.dumps(index, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
