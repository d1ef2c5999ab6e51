"""Re-exports ``support.netns_hosts`` under its old import name (``netns_hosts``)."""

from support.netns_hosts import (
    LINK_BLOCK,
    READY_PATH,
    START_TIMEOUT,
    Certificate,
    Route,
    ServedHost,
    loopback_host,
    make_certificate,
    netns_hosts,
)
from support.polling import wait_for

__all__ = [
    "LINK_BLOCK",
    "READY_PATH",
    "START_TIMEOUT",
    "Certificate",
    "Route",
    "ServedHost",
    "loopback_host",
    "make_certificate",
    "netns_hosts",
    "wait_for",
]
