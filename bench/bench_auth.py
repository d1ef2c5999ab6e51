"""What authentication costs a mountd request, against anonymous requests measured in the same run.

(a) one scrypt check of a stored password (``PasswordHash.verify``, the cost of a first login and of every
    wrong password);
(b) small GETs per second on one keep-alive connection: anonymous (loopback, no users file) as the
    baseline, then Basic credentials on every request (the check remembered after the first), then
    wrong credentials on every request (goal for the remembered case: >= 0.8x the baseline).

Run ``python bench/bench_auth.py [--requests N]``. The store and users file live in a temp directory that is
removed at the end; the table goes to stdout. Goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import statistics
import tempfile
import time
from pathlib import Path

from broker import Settings
from mountd import PasswordHash, Role, UserTable, add_user, load_users, serve_background
from sync_format.testing import make_archive

#: Checks timed for (a).
VERIFY_ROUNDS = 5
#: Wrong-password requests in (b): each costs a hash, so fewer.
WRONG_REQUESTS = 10


def time_gets(url_port: int, count: int, headers: dict[str, str], expected: int) -> float:
    """GET /data.txt ``count`` times on one connection; requests per second."""
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=60)
    try:
        start = time.perf_counter()
        for _ in range(count):
            conn.request("GET", "/data.txt", headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == expected, resp.status
        return count / (time.perf_counter() - start)
    finally:
        conn.close()


def serve_rate(
    store: Path, users: UserTable | None, count: int, headers: dict[str, str], expected: int
) -> float:
    """Requests per second of one server configuration (one warm-up request first)."""
    with serve_background(Settings(host="127.0.0.1", port=0), store, users=users) as handle:
        time_gets(handle.port, 1, headers, expected)
        return time_gets(handle.port, count, headers, expected)


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="GETs per configuration in (b)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        root = Path(tmp)
        store = root / "store"
        store.mkdir()
        make_archive(store / "data.txt.sync", b"x" * 1024)
        users_file = root / "users.toml"
        add_user(users_file, "alice", Role.OWNER, "alice-secret")
        users = load_users(users_file)
        stored = PasswordHash.new("alice-secret")
        times = []
        for _ in range(VERIFY_ROUNDS):
            start = time.perf_counter()
            stored.verify("alice-secret")
            times.append(time.perf_counter() - start)
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
        anonymous = serve_rate(store, None, args.requests, {}, 200)
        basic = serve_rate(store, users, args.requests, good, 200)
        refused = serve_rate(store, users, WRONG_REQUESTS, wrong, 401)
    print(f"(a) scrypt check (ln=15, r=8, p=1): median {statistics.median(times) * 1000:.0f} ms")
    print(f"(b) anonymous GET             : {anonymous:8.0f} req/s  1.00x")
    print(f"    basic, remembered check   : {basic:8.0f} req/s  {basic / anonymous:.2f}x (goal >= 0.80x)")
    print(f"    basic, wrong password     : {refused:8.1f} req/s  {refused / anonymous:.4f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
