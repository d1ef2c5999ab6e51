"""``RedisPropertyManager``: WebDAV dead properties (PROPPATCH) in Redis, shared by every mountd of a store.

wsgidav keeps dead properties in a property manager (its contract: ``get_properties``, ``get_property``,
``write_property``, ``remove_property``, ``remove_properties``, ``copy_properties``, ``move_properties``,
as ``wsgidav.prop_man.property_manager.PropertyManager`` implements it in memory and in a shelve file). A
shelve file belongs to one process; two mountd replicas behind one load balancer would each see their own
properties. This manager keeps them in the broker's Redis (``syncctl serve --writable`` with ``--broker``).

Layout under ``prefix`` (the lock storage's, ``sync:dav:<store>:``):

* ``props:<url>`` → a hash: property name (Clark notation) → the property's XML, base64 (wsgidav hands over
  bytes; the client may use a decoding connection).

Invariants:
    * Each call is one Redis command or one transaction (``MULTI``): another replica sees a property from the
      moment ``write_property`` returns, and a copy or move is never seen half done.
    * Values are bytes in and bytes out, never unpickled (whoever can write to the broker cannot make
      mountd run code).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import redis

from broker.redis_client import make_redis

log = logging.getLogger(__name__)

#: Seconds a property command may wait for Redis: it is on the request path.
SOCKET_TIMEOUT = 5.0


class RedisPropertyManager:
    """wsgidav property manager in Redis.

    Args:
        url: A Redis URL.
        prefix: Key prefix (one per store).
    """

    def __init__(self, url: str, *, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisPropertyManager(prefix={self.prefix!r})"

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = make_redis(self.url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=SOCKET_TIMEOUT)
        return self._redis

    def _key(self, url: str) -> str:
        return f"{self.prefix}props:{url}"

    def get_properties(self, norm_url: str, environ: Any = None) -> list[str]:
        return [str(name) for name in self._client().hkeys(self._key(norm_url))]

    def get_property(self, norm_url: str, name: str, environ: Any = None) -> bytes | None:
        value = self._client().hget(self._key(norm_url), name)
        return None if value is None else base64.b64decode(value)

    def write_property(
        self, norm_url: str, name: str, property_value: bytes, dry_run: bool = False, environ: Any = None
    ) -> None:
        if dry_run:
            return
        data = property_value if isinstance(property_value, bytes) else str(property_value).encode()
        self._client().hset(self._key(norm_url), name, base64.b64encode(data).decode())

    def remove_property(self, norm_url: str, name: str, dry_run: bool = False, environ: Any = None) -> None:
        if not dry_run:
            self._client().hdel(self._key(norm_url), name)

    def remove_properties(self, norm_url: str, environ: Any = None) -> None:
        self._client().delete(self._key(norm_url))

    def copy_properties(self, src_url: str, dest_url: str, environ: Any = None) -> None:
        values: dict[Any, Any] = dict(self._client().hgetall(self._key(src_url)))
        if values:
            pipe = self._client().pipeline()
            pipe.delete(self._key(dest_url))
            pipe.hset(self._key(dest_url), mapping=values)
            pipe.execute()

    def move_properties(self, src_url: str, dest_url: str, with_children: bool, environ: Any = None) -> None:
        client = self._client()
        sources = [self._key(src_url)]
        if with_children:
            pattern = _escape(self._key(src_url.rstrip("/") + "/")) + "*"
            sources.extend(str(key) for key in client.scan_iter(match=pattern, count=1000))
        pipe = client.pipeline()
        for key in sources:
            target = self._key(dest_url) + key[len(self._key(src_url)) :]
            values: dict[Any, Any] = dict(client.hgetall(key))
            if values:
                pipe.delete(target)
                pipe.hset(target, mapping=values)
                pipe.delete(key)
        pipe.execute()

    def _close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None


def _escape(pattern: str) -> str:
    # SCAN MATCH is a glob: a path may contain its special characters.
    return "".join("\\" + c if c in "*?[]\\" else c for c in pattern)
