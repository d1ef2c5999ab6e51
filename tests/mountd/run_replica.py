"""Run one writable mountd replica for tests: ``python run_replica.py STORE REDIS_URL``.

Serves STORE writable on 127.0.0.1 (ephemeral port) with locks (``RedisLockStorage``) and dead properties
(``RedisPropertyManager``) in the Redis at REDIS_URL, as ``syncctl serve --writable --broker`` does; prints
``ready <mount_url>`` once listening and exits 0 after SIGTERM.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from broker import Settings
from mountd import ServerHandle, serve
from mountd.writable.locks import RedisLockStorage
from mountd.writable.policy import WritePolicy


def main() -> int:
    """Serve until signalled."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    store, url = Path(sys.argv[1]), sys.argv[2]
    prefix = f"sync:dav:{store}:"
    try:
        from mountd.writable.properties import RedisPropertyManager

        properties: object = RedisPropertyManager(url, prefix=prefix)
    except ImportError:  # before shared properties existed: each replica keeps its own, in memory
        properties = None

    def ready(handle: ServerHandle) -> None:
        print(f"ready {handle.mount_url}", flush=True)

    serve(
        Settings(host="127.0.0.1", port=0),
        store,
        on_ready=ready,
        writable=WritePolicy(store, max_upload=1 << 20),
        lock_storage=RedisLockStorage(url, prefix=prefix),
        property_store=properties,  # type: ignore[arg-type]
    )
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
