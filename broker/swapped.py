"""The "swapped" notification: a worker announces each committed refresh on ``SWAPPED_CHANNEL``.

Readers do not need it to see new bytes (a new snapshot opens the new inode, see docs/architecture.md); it is
for those who wait for a refresh (``syncctl refresh --wait``, tests, dashboards). Redis pub/sub is fire and
forget: a subscriber that is not connected at the moment of the publish misses it, so waiters subscribe
*before* they request, and fall back to the status records (``broker.status``) for what they missed.

Invariants: a message is the JSON object ``{"archive": <archive key>, "generation": <int >= 0>}`` and
nothing else; ``SwappedSubscription`` is ready (its SUBSCRIBE acknowledged) when its constructor returns,
so a publish that happens after that is delivered to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis

from broker.contract import SWAPPED_CHANNEL, MalformedRecord, require_int, validate_archive_key
from broker.redis_client import translated
from sync_format.errors import BrokerUnavailable

#: Longest wait for Redis to acknowledge a SUBSCRIBE, in seconds.
SUBSCRIBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class SwappedEvent:
    """One committed refresh.

    Attributes:
        archive: Archive key.
        generation: The generation now on disk.
    """

    archive: str
    generation: int

    def to_json(self) -> dict[str, Any]:
        """The message body as a dict.

        Returns:
            ``{"archive", "generation"}``.
        """
        return {"archive": self.archive, "generation": self.generation}

    @classmethod
    def from_json(cls, data: object) -> SwappedEvent:
        """Decode a message body strictly.

        Args:
            data: The decoded JSON.

        Returns:
            The event.

        Raises:
            MalformedRecord: Not an object with exactly a valid archive key and generation.
        """
        if not isinstance(data, dict) or set(data) != {"archive", "generation"}:
            raise MalformedRecord("swapped", "must be an object with exactly archive and generation")
        try:
            archive = validate_archive_key(data["archive"])
        except MalformedRecord as exc:
            raise MalformedRecord("swapped", exc.message, field="archive") from exc
        return cls(archive, require_int(data["generation"], "swapped", "generation"))


def publish_swapped(client: redis.Redis, archive: str, generation: int) -> int:
    """Announce that ``archive`` now has ``generation``.

    Args:
        client: Redis client.
        archive: Archive key.
        generation: The committed generation.

    Returns:
        How many subscribers received it.

    Raises:
        MalformedRecord: Bad archive key or generation.
        BrokerUnavailable: Redis cannot be reached.
    """
    body = json.dumps(SwappedEvent.from_json({"archive": archive, "generation": generation}).to_json())
    with translated(client, "publish swapped"):
        return int(client.publish(SWAPPED_CHANNEL, body))


class SwappedSubscription:
    """A subscription to ``SWAPPED_CHANNEL``; use it as a context manager and ``get`` events from it.

    Args:
        client: Redis client (the subscription takes one connection from its pool until closed).

    Raises:
        BrokerUnavailable: Redis cannot be reached or does not acknowledge within ``SUBSCRIBE_TIMEOUT``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        # Untyped before redis 8.2, typed since: both are accepted.
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
        try:
            with translated(client, "subscribe swapped"):
                self._pubsub.subscribe(SWAPPED_CHANNEL)
                acknowledged = self._wait_acknowledged(SUBSCRIBE_TIMEOUT)
        except BaseException:
            self._pubsub.close()
            raise
        if not acknowledged:
            self._pubsub.close()
            raise BrokerUnavailable("subscribe swapped: no acknowledgement from Redis")

    def _wait_acknowledged(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            message = self._pubsub.get_message(timeout=max(remaining, 0.0))
            if message is not None and message.get("type") == "subscribe":
                return True
            if remaining <= 0:
                return False

    def get(self, timeout: float) -> SwappedEvent | None:
        """The next event, waiting up to ``timeout`` seconds.

        Args:
            timeout: Seconds to wait.

        Returns:
            The event, or None when none arrived in time.

        Raises:
            MalformedRecord: A message on the channel does not decode.
            BrokerUnavailable: The connection to Redis was lost.
        """
        deadline = time.monotonic() + timeout
        with translated(self._client, "receive swapped"):
            while True:
                remaining = deadline - time.monotonic()
                message = self._pubsub.get_message(timeout=max(remaining, 0.0))
                if message is not None and message.get("type") == "message":
                    return _decode(message.get("data"))
                if remaining <= 0:
                    return None

    def close(self) -> None:
        """Unsubscribe and return the connection."""
        self._pubsub.close()

    def __enter__(self) -> SwappedSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _decode(data: object) -> SwappedEvent:
    if not isinstance(data, str):
        raise MalformedRecord("swapped", "message is not text")
    try:
        return SwappedEvent.from_json(json.loads(data))
    except json.JSONDecodeError as exc:
        raise MalformedRecord("swapped", f"message is not JSON: {exc}") from exc
