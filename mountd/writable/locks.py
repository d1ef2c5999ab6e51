"""``RedisLockStorage``: WebDAV locks kept in Redis, so that every mountd on one store sees the same locks.

wsgidav's lock manager keeps locks in a storage object (its contract: ``open``, ``close``, ``cleanup``,
``clear``, ``get``, ``create``, ``refresh``, ``delete``, ``get_lock_list``, as ``LockStorageDict`` implements
it). One mountd process can keep them in memory; several behind one store (or a restart in the middle of a
client's edit) need them shared. wsgidav ships a Redis storage, but it stores locks with ``pickle``, so anyone
who can write to the broker could make mountd run code; this one stores JSON.

Layout under ``prefix`` (default ``sync:dav:``):

* ``lock:<token>`` → the lock as JSON (``owner`` is bytes, kept as base64), with Redis expiry = the lock's
  timeout, so expired locks vanish by themselves;
* ``url:<root>`` → a set of tokens locking that path (members whose lock expired are pruned on read).

Invariants:
    * A lock is visible to every process from the moment ``create`` returns; ``delete`` removes it at once.
    * Expiry is decided by Redis (one clock), never by comparing hosts' clocks.
    * Creating a lock is atomic across processes: ``create`` takes a Redis lock (``mutex`` key, one per
      prefix) and checks conflicts again under it, with wsgidav's own rules, against the locks in Redis;
      two mountd processes locking the same path at the same moment: one wins, the other gets 423.

Why ours rather than wsgidav's ``RedisLockStorage``: wsgidav's pickles locks (anyone who can write to the
broker could make mountd run code) and, like its lock manager, checks conflicts per process only.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import redis
from wsgidav.lock_man.lock_manager import (  # type: ignore[import-untyped]
    LockManager,
    generate_lock_token,
    normalize_lock_root,
    validate_lock,
)

from broker.redis_client import make_redis

log = logging.getLogger(__name__)

#: Key prefix of every lock key.
DEFAULT_PREFIX = "sync:dav:"
#: Lock lifetime when the client asks for none or for "infinite" (seconds; wsgidav's own default).
DEFAULT_TIMEOUT = 604_800
#: Longest lock lifetime granted (seconds; wsgidav's maximum).
MAX_TIMEOUT = 4 * 604_800
#: Seconds the cross-process mutex of ``create`` is held at most (a crashed holder frees it after this).
MUTEX_TIMEOUT = 10.0
#: Seconds a lock command may wait for Redis: a lock is on the request path.
SOCKET_TIMEOUT = 5.0
_BYTES_TAG = "__b64__"


def _encode(lock: dict[str, Any]) -> str:
    return json.dumps(
        {
            k: {_BYTES_TAG: base64.b64encode(v).decode()} if isinstance(v, bytes) else v
            for k, v in lock.items()
        }
    )


def _decode(text: str) -> dict[str, Any]:
    raw = json.loads(text)
    return {k: base64.b64decode(v[_BYTES_TAG]) if isinstance(v, dict) else v for k, v in raw.items()}


class RedisLockStorage:
    """wsgidav lock storage in Redis.

    Args:
        url: A Redis URL (``redis://``, ``rediss://``, ``unix://``).
        prefix: Prefix of the keys (one per store when several stores share a Redis).
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: redis.Redis | None = None
        self._lock_rules: Any = None

    def __repr__(self) -> str:
        return f"RedisLockStorage(prefix={self.prefix!r})"

    def _checker(self) -> Any:
        if self._lock_rules is None:
            self._lock_rules = LockManager(self)  # only its conflict rules are used, over this storage
        return self._lock_rules

    def open(self) -> None:
        if self._redis is not None:
            return
        self._redis = make_redis(self.url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=SOCKET_TIMEOUT)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def cleanup(self) -> None:
        return None  # Redis expires lock keys itself; dangling set members are pruned on read

    def clear(self) -> None:
        client = self._client()
        keys = list(client.scan_iter(match=self._escape(self.prefix) + "*", count=1000))
        if keys:
            client.delete(*keys)

    def get(self, token: str) -> dict[str, Any] | None:
        text = self._client().get(self._lock_key(token))
        return None if text is None else _decode(str(text))

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        root = normalize_lock_root(path)
        timeout = float(lock.get("timeout") or DEFAULT_TIMEOUT)
        if timeout < 0 or timeout > MAX_TIMEOUT:
            timeout = MAX_TIMEOUT
        lock["root"] = root
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        validate_lock(lock)
        token = generate_lock_token()
        lock["token"] = token
        client = self._client()
        # wsgidav's manager checked conflicts in this process; check again under a lock every process shares.
        with client.lock(f"{self.prefix}mutex", timeout=MUTEX_TIMEOUT, blocking_timeout=SOCKET_TIMEOUT):
            self._checker()._check_lock_permission(
                root, lock["type"], lock["scope"], lock["depth"], [], lock.get("principal")
            )
            pipe = client.pipeline()
            pipe.set(self._lock_key(token), _encode(lock), ex=max(1, int(timeout)))
            pipe.sadd(self._url_key(root), token)
            pipe.execute()
        log.debug("lock created root=%s token=%s", root, token)
        return lock

    def refresh(self, token: str, *, timeout: float) -> dict[str, Any]:
        lock = self.get(token)
        if lock is None:
            raise ValueError(f"lock {token} does not exist")
        if timeout < 0 or timeout > MAX_TIMEOUT:
            timeout = MAX_TIMEOUT
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        self._client().set(self._lock_key(token), _encode(lock), ex=max(1, int(timeout)))
        return lock

    def delete(self, token: str) -> bool:
        client = self._client()
        lock = self.get(token)
        if lock is None:
            return False
        pipe = client.pipeline()
        pipe.delete(self._lock_key(token))
        pipe.srem(self._url_key(lock["root"]), token)
        pipe.execute()
        return True

    def all_locks(self) -> list[dict[str, Any]]:
        """Every lock under this prefix (for ``syncctl locks list``), oldest expiry first."""
        client = self._client()
        found = []
        for key in client.scan_iter(match=self._escape(self.prefix) + "lock:*", count=1000):
            text = client.get(key)
            if text is not None:
                found.append(_decode(str(text)))
        return sorted(found, key=lambda lock: float(lock.get("expire", 0)))

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[Any]:
        root = normalize_lock_root(path)
        keys: list[str] = []
        if include_root:
            keys.append(self._url_key(root))
        if include_children:
            pattern = self._escape(self._url_key(root.rstrip("/") + "/")) + "*"
            own = self._url_key(root)  # matched by the pattern of "/" (its children's start with it)
            keys.extend(k for k in self._client().scan_iter(match=pattern, count=1000) if str(k) != own)
        found: list[Any] = []
        for key in keys:
            for member in self._client().smembers(key):
                token = str(member)
                lock = self.get(token)
                if lock is None:
                    self._client().srem(key, token)  # its lock expired
                    continue
                found.append(token if token_only else lock)
        return found

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self.open()
        assert self._redis is not None
        return self._redis

    def _lock_key(self, token: str) -> str:
        return f"{self.prefix}lock:{token}"

    def _url_key(self, root: str) -> str:
        return f"{self.prefix}url:{root}"

    @staticmethod
    def _escape(pattern: str) -> str:
        # SCAN MATCH is a glob: a path may contain its special characters.
        return "".join("\\" + c if c in "*?[]\\" else c for c in pattern)
