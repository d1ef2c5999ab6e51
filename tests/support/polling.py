"""``wait_for``, the one way tests wait on a condition, and ``free_port``, the one way they pick a TCP port.

Tests never sleep for a fixed time and never use a fixed port: they poll a condition with a deadline, and
let the kernel pick a free port of 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, *, interval: float = 0.01, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Args:
        predicate: The condition; exceptions it raises propagate.
        timeout: Seconds before giving up.
        interval: Seconds between polls.
        what: Description of the condition for the failure message.

    Returns:
        The first truthy value.

    Raises:
        AssertionError: The condition did not hold within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate!r}")
        pause.wait(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
