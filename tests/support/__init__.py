"""What tests share: waiting on a condition, free ports, private Redis servers and network-namespace hosts.

- ``wait_for``, ``free_port`` (``support.polling``): the one way tests wait and pick a port; no fixed sleeps,
  no fixed ports.
- ``RedisServer`` (``support.redis_server``): a private ``redis-server`` on a free port of 127.0.0.1.
- ``outcome_beside_a_fifo`` (``support.fifos``): a call that must not wait on a FIFO, and what it raised.
- ``netns_hosts``, ``loopback_host``, ``Route``, ``ServedHost``, ``Certificate``, ``make_certificate``
  (``support.netns_hosts``): HTTP test hosts, each in a network namespace the test creates (10.231.0.0/16).

Test modules import these as ``from support import ...``: pytest puts ``tests/`` on ``sys.path`` because
``tests/conftest.py`` lives there (prepend import mode). ``tests/redis_server.py`` and
``tests/netns_hosts.py`` re-export the same names for the importers that predate this package.
"""

from support.fifos import outcome_beside_a_fifo
from support.netns_hosts import Certificate, Route, ServedHost, loopback_host, make_certificate, netns_hosts
from support.polling import free_port, wait_for
from support.redis_server import RedisServer

__all__ = [
    "Certificate",
    "RedisServer",
    "Route",
    "ServedHost",
    "free_port",
    "loopback_host",
    "make_certificate",
    "netns_hosts",
    "outcome_beside_a_fifo",
    "wait_for",
]
