"""Replay: many PROPFIND Depth 1 listings that wsgidav renders itself, at once, against an in-process mountd.

A condition header (``If-Unmodified-Since`` in the future) makes the fast path pass a listing on to wsgidav,
which renders every member into an element tree in memory. This starts ``serve_background`` over a temporary
folder of ``--archives`` copies of one archive, sends ``--requests`` such listings at once, and a GET of a
small file one second in; it prints the statuses, the wall time, the GET's wait and the process's peak and
current RSS (client and server share the process: a plain listing's run shows the clients' own share).
``mountd.dav.render_slots`` bounds these renders (docs/security.md, "Folder listings wsgidav renders")::

    .venv/bin/python bench/replay_heavy_listings.py --archives 10000 --requests 16
    .venv/bin/python bench/replay_heavy_listings.py --archives 10000 --requests 16 --plain   # fast path
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from broker import Settings
from mountd import NullFreshness, serve_background
from sync_format.testing import make_archive


def _memory() -> str:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) // 1024
    return f"peak RSS {fields.get('VmHWM')} MB, RSS {fields.get('VmRSS')} MB"


def main() -> int:
    """Run the replay once and print what happened."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--plain", action="store_true", help="no condition: the fast path answers")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="heavy-listings-"))
    try:
        folder = root / "store" / "big"
        folder.mkdir(parents=True)
        make_archive(folder / "first.txt.sync", b"one payload")
        for i in range(args.archives):
            shutil.copyfile(folder / "first.txt.sync", folder / f"item{i:05d}.txt.sync")
        headers = {"Depth": "1"}
        if not args.plain:
            headers["If-Unmodified-Since"] = "Fri, 01 Jan 2100 00:00:00 GMT"
        with serve_background(Settings(host="127.0.0.1", port=0), root / "store", NullFreshness()) as handle:

            def fetch(method: str, path: str, extra: dict[str, str]) -> tuple[int, bytes]:
                conn = http.client.HTTPConnection(handle.host, handle.port, timeout=300)
                try:
                    conn.request(method, path, headers=extra)
                    response = conn.getresponse()
                    return response.status, response.read()
                finally:
                    conn.close()

            print("first listing:", fetch("PROPFIND", "/big/", headers)[0], "|", _memory())
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda: statuses.append(fetch("PROPFIND", "/big/", headers)[0]))
                for _ in range(args.requests)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            asked = time.monotonic()
            got = fetch("GET", "/big/first.txt", {})
            waited = time.monotonic() - asked
            for thread in threads:
                thread.join()
            kind = "plain" if args.plain else "conditional"
            print(
                f"{args.requests} {kind} listings of {args.archives} archives at once: "
                f"{time.monotonic() - started:.1f} s, statuses {dict(Counter(statuses))}; "
                f"a GET 1 s in waited {waited:.2f} s ({got[0]}) | {_memory()}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
