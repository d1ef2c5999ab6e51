"""Replay of the slow-listing attack: readers that ask for a large listing and never read it, then GETs.

A store with one folder of ``--archives`` archives (copies of one; PROPFIND Depth 1 of it is several MB,
more than the kernel's socket buffers) is served by ``mountd.serve_background`` on 127.0.0.1, once the
archives are older than a listing's racy window (as a store under attack is). ``--readers`` raw sockets
with a 4 KiB receive buffer send that PROPFIND (``--page``: a browser's GET of the folder's HTML page) and
read nothing; then a GET of a 5-byte payload is timed every 0.25 s, ``--gets`` times. With each stalled
reader holding a worker thread (mountd before parked listings and pages, ``mountd.http.handoff.ParkedBody``),
the first GET waits for the server's 10 s send timeout; without, it waits only for the CPU of rendering the
listings. A body must be larger than the server's largest socket send buffer (``tcp_wmem``, 4 MiB here) to
stall a thread: the page is about a quarter of the listing's size, so ``--page --archives 20000``. As the
control, the same number of readers that read at once (what the CPU alone costs). ``--conditional`` adds an
``If-Unmodified-Since`` to the PROPFINDs: the fast path passes such a request on, and wsgidav renders the
document itself, whole, before answering (as for any PROPFIND of a writable store; parked within
``handoff.MAX_PARKED_HELD_BYTES``). Diagnostic only: no goal, not run by ``make bench``.

Run ``.venv/bin/python bench/replay_slow_listings.py [--archives 8000] [--readers 24] [--gets 8] [--page]
[--conditional]``.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker import Settings  # noqa: E402
from mountd import NullFreshness, ServerHandle, serve_background  # noqa: E402
from sync_format.testing import make_archive, make_manifest  # noqa: E402

#: Seconds the store must be old before it is served.
RACY_WAIT = 2.5
#: The condition of ``--conditional``: always true, and enough for the fast path to pass the request on.
CONDITION = ("If-Unmodified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")
#: A manifest that never expires: no refresh is asked for.
NEVER_EXPIRES = make_manifest(created_at="2026-01-01T00:00:00Z", ttl=2**62)


def timed_get(handle: ServerHandle) -> float:
    """Seconds for one GET of the small payload."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=60)
    conn.request("GET", "/small.txt")
    if conn.getresponse().read() != b"small":
        raise RuntimeError("wrong body")
    conn.close()
    return time.monotonic() - started


def propfind(handle: ServerHandle, conditional: bool = False) -> int:
    """One PROPFIND Depth 1 of the big folder (with ``CONDITION``), read at once; its body's length."""
    conn = http.client.HTTPConnection(handle.host, handle.port, timeout=60)
    conn.request("PROPFIND", "/big/", headers={"Depth": "1", **dict([CONDITION] if conditional else [])})
    size = len(conn.getresponse().read())
    conn.close()
    return size


def gets(handle: ServerHandle, count: int) -> list[str]:
    """``count`` timed GETs, 0.25 s apart."""
    out = []
    for _ in range(count):
        time.sleep(0.25)
        out.append(f"{timed_get(handle):.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Build the store, serve it, replay, print the GET times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=int, default=8000)
    parser.add_argument("--readers", type=int, default=24)
    parser.add_argument("--gets", type=int, default=8)
    parser.add_argument(
        "--page", action="store_true", help="ask for the folder's HTML page (GET, Accept: text/html) instead"
    )
    parser.add_argument(
        "--conditional", action="store_true", help="PROPFINDs with a condition: wsgidav renders the document"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sync-replay-") as tmp:
        store = Path(tmp) / "store"
        (store / "big").mkdir(parents=True)
        first = store / "big" / "a00000.txt.sync"
        make_archive(first, b"x", manifest=NEVER_EXPIRES)
        for i in range(1, args.archives):
            shutil.copyfile(first, store / "big" / f"a{i:05d}.txt.sync")
        make_archive(store / "small.txt.sync", b"small", manifest=NEVER_EXPIRES)
        # As a store is when attacked: older than a listing's racy window (younger versions are scanned
        # again by every listing until they can be recorded, ``mountd.dav.facts_store.RACY_NS``).
        time.sleep(RACY_WAIT)
        settings = Settings(host="127.0.0.1", port=0, cache_dir=Path(tmp) / "cache")
        with serve_background(settings, store, NullFreshness()) as handle:
            size = propfind(handle, args.conditional)
            print(f"listing of {args.archives} archives: {size:,} bytes")
            head, ask = ("GET", "Accept: text/html\r\n") if args.page else ("PROPFIND", "Depth: 1\r\n")
            if args.conditional:
                ask += f"{CONDITION[0]}: {CONDITION[1]}\r\n"
            stalled = []
            for _ in range(args.readers):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((handle.host, handle.port))
                request = f"{head} /big/ HTTP/1.1\r\nHost: 127.0.0.1:{handle.port}\r\n{ask}\r\n"
                sock.sendall(request.encode())
                stalled.append(sock)
            print(
                f"{args.readers} readers that read nothing; GET seconds: {' '.join(gets(handle, args.gets))}"
            )
            for sock in stalled:
                sock.close()
            time.sleep(1)
            ask_again = (handle, args.conditional)
            readers = [threading.Thread(target=propfind, args=ask_again) for _ in range(args.readers)]
            for reader in readers:
                reader.start()
            times = " ".join(gets(handle, 1))
            print(f"{args.readers} readers that read at once (control); GET seconds: {times}")
            for reader in readers:
                reader.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
