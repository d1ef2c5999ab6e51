"""Show that a SIGTERM restart of Redis can lose list items that BRPOP consumers were popping.

Redis serves a BRPOP (pops the item and logs the pop in its append-only file) while reading the command, but
writes the reply only before its next wait for events; a SIGTERM shutdown that runs in between (``serverCron``
in the same event-loop turn) persists the pop and exits without replying. The item is then neither in the
list after the restart nor received by any client: kombu's Redis transport (which BRPOPs, then records the
message as unacknowledged in a second round trip) cannot restore it. This is why a refresh message can
vanish when Redis restarts (``broker.claims``: the stale queued claim re-send).

Each round: a private ``redis-server`` (AOF, fsync every second, no RDB) with ``--items`` items in a list,
``--consumers`` threads BRPOPping them, SIGTERM after a short while, restart on the same directory; lost =
items - received - left in the list. Run from the repository root::

    .venv/bin/python bench/redis_brpop_shutdown_loss.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from support import free_port, wait_for  # noqa: E402


def start(directory: str, port: int) -> subprocess.Popen[bytes]:
    """A redis-server with the compose stack's persistence, answering PING."""
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
    ]
    command += ["--appendfsync", "everysec", "--dir", directory]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    probe = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False

    wait_for(answers, 10, what="redis-server answers PING")
    probe.close()
    return process


def one_round(number: int, items: int, consumers: int) -> tuple[int, int, int]:
    """Received, left in the list, lost."""
    with tempfile.TemporaryDirectory(prefix="brpop-loss-") as directory:
        port = free_port()
        server = start(directory, port)
        client = redis.Redis(port=port)
        client.lpush("q", *[str(i) for i in range(items)])
        received: list[bytes] = []

        def consume() -> None:
            mine = redis.Redis(port=port, socket_timeout=2)
            while True:
                try:
                    popped = mine.brpop(["q"], timeout=1)
                except redis.RedisError:
                    return
                if popped is None:
                    return
                received.append(popped[1])

        threads = [threading.Thread(target=consume) for _ in range(consumers)]
        for thread in threads:
            thread.start()
        time.sleep(0.02 + 0.01 * (number % 5))
        server.send_signal(signal.SIGTERM)
        server.wait()
        for thread in threads:
            thread.join()
        server = start(directory, port)
        left = int(client.llen("q"))
        server.terminate()
        server.wait()
        return len(received), left, items - len(received) - left


def main() -> int:
    """Run the rounds and print what each lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--consumers", type=int, default=4)
    args = parser.parse_args()
    total = 0
    for number in range(args.rounds):
        received, left, lost = one_round(number, args.items, args.consumers)
        total += lost
        print(f"round {number}: received {received}, left {left}, lost {lost}", flush=True)
    print(f"lost {total} items in {args.rounds} restarts ({args.consumers} consumers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
