"""What checking payloads against their CRC-32 costs mountd (``mountd/dav/integrity.py``).

mountd checks each version of each archive once, before its first GET is answered (payloads up to 256 MiB;
larger ones in the background). This measures, on a fresh mountd (``serve_background`` on 127.0.0.1, a
free port) over archives of several payload sizes:

* the time to the first body byte of the first GET of a version (the check happens before it) and the
  median of the following GETs (the cached verdict, one dictionary lookup), in milliseconds;
* the check alone (``payload_crc32`` over the payload in the page cache), in MB/s (10^6 bytes).

Run ``.venv/bin/python bench/bench_integrity.py [--quick]`` (``--quick``: 4 and 32 MiB only). No timed
assertions: figures only. The machine is shared; single runs vary by ±25 %.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from broker import Settings
from mountd import serve_background
from mountd.dav.integrity import payload_crc32
from sync_format import open_archive
from sync_format.testing import make_archive, make_manifest

REPEATS = 5


def timed_get(host: str, port: int, path: str) -> float:
    """Seconds from sending a GET to its first body byte (the check happens before it); the body is read."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read(1)
    elapsed = time.perf_counter() - started
    while resp.read(1 << 20):
        pass
    conn.close()
    assert resp.status == 200, resp.status
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes_mib = (4, 32) if args.quick else (4, 32, 128, 256)
    manifest = make_manifest(content_type="text/csv", display_ext="csv", ttl=2**40)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        store = Path(tmp)
        for mib in sizes_mib:
            make_archive(store / f"p{mib}.csv.sync", os.urandom(mib * 1024 * 1024), manifest=manifest)
        with serve_background(Settings(host="127.0.0.1", port=0), store) as handle:
            for mib in sizes_mib:
                path = f"/p{mib}.csv"
                archive = store / f"p{mib}.csv.sync"
                with open_archive(archive) as snapshot:  # warm the page cache as a served store would be
                    snapshot.read_payload()
                    offset, size = snapshot.payload_offset, snapshot.payload_size
                first = timed_get(handle.host, handle.port, path)
                later = statistics.median(timed_get(handle.host, handle.port, path) for _ in range(REPEATS))
                fd = os.open(archive, os.O_RDONLY)
                try:
                    started = time.perf_counter()
                    payload_crc32(fd, offset, size)
                    check = time.perf_counter() - started
                finally:
                    os.close(fd)
                rows.append((mib, first * 1000, later * 1000, size / check / 1e6))
    print("| payload | first GET: first byte, ms (checked) | later GETs: first byte, ms | check alone MB/s |")
    print("|---:|---:|---:|---:|")
    for mib, first, later, rate in rows:
        print(f"| {mib} MiB | {first:.1f} | {later:.1f} | {rate:.0f} |")
    print(f"later GETs: median of {REPEATS}; the check runs once per archive version (stat identity)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
