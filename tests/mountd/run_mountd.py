"""Run mountd as its own process for tests: ``python run_mountd.py STORE``.

Serves STORE read-only on 127.0.0.1 with an ephemeral port through ``mountd.serve`` (no broker), prints
``ready <mount_url>`` on stdout once the socket listens, and exits 0 after SIGTERM or SIGINT once the
server has shut down, printing ``stopped``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from broker import Settings
from mountd import ServerHandle, serve


def main() -> int:
    """Serve until signalled."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def ready(handle: ServerHandle) -> None:
        print(f"ready {handle.mount_url}", flush=True)

    serve(Settings(host="127.0.0.1", port=0), Path(sys.argv[1]), on_ready=ready)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
