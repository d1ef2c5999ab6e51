"""kombu's Redis transport with one reusable redis-py client per channel, for sync's Celery apps.

kombu's Redis channel builds a new ``redis.Redis`` object for every synchronous operation
(``Channel.conn_or_acquire`` without a client): the unacknowledged-message bookkeeping at each delivery and
each ack, every event ``PUBLISH``, the restore of unacknowledged messages. A ``redis.Redis`` builds its
table of response callbacks when it is created (about 0.1 ms of CPU), and a worker's consumer made about
2.4 of them per job (``bench/bench_pipeline.py``'s CPU table, issue 15). ``ReusingChannel`` makes that
client once per connection pool and hands it out again.

Invariants:
    * Same commands, same connections: the reused client draws its connections from the channel's pool
      exactly as a fresh one does (a ``redis.Redis`` holds no connection of its own between commands;
      pipelines and pub/sub objects still get their own), so nothing kombu sends changes.
    * A new pool gets a new client: kombu drops its pools when a connection is lost
      (``Channel._disconnect_pools``) and the client is rebuilt on the next pool.
    * Only kombu's stock Redis transport is replaced (``redis://``, ``rediss://``, ``redis+socket://``);
      any other transport an app is given stays as it is.
"""

from __future__ import annotations

from typing import Any

import redis
from celery.app.amqp import AMQP  # type: ignore[import-untyped]
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis


class ReusingChannel(kombu_redis.Channel):
    """kombu's Redis channel, with its synchronous client built once per connection pool."""

    _reused_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._reused_client
        if client is None or client.connection_pool is not self.pool:
            client = self._reused_client = super()._create_client(asynchronous=False)  # type: ignore[no-untyped-call]
        return client


class ReusingTransport(kombu_redis.Transport):
    """kombu's Redis transport, with ``ReusingChannel`` channels."""

    Channel = ReusingChannel


class SyncConnection(Connection):
    """A kombu connection that uses ``ReusingTransport`` where kombu would use its Redis transport.

    The transport class is chosen here rather than through Celery's ``broker_transport`` setting because a
    ``redis+socket://`` URL (the embedded broker) names its transport itself, which overrides the setting.
    """

    def get_transport_cls(self) -> Any:
        """The transport class of this connection.

        Returns:
            ``ReusingTransport`` for kombu's Redis transport, else what kombu resolves.
        """
        transport = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return ReusingTransport if transport is kombu_redis.Transport else transport


class SyncAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper, building ``SyncConnection`` connections (``Celery(amqp=...)``)."""

    Connection = SyncConnection
