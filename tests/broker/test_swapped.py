"""The swapped notification: published on commit, received by subscribers, decoded strictly."""

from __future__ import annotations

import threading

import pytest
import redis
from redis_server import RedisServer

from broker import MalformedRecord, SwappedSubscription, make_redis
from broker.contract import SWAPPED_CHANNEL
from broker.swapped import SwappedEvent, publish_swapped
from sync_format.errors import BrokerUnavailable


def test_subscriber_receives_the_swap(redis_client: redis.Redis) -> None:
    """A subscriber gets ``{archive, generation}`` of each commit published after it subscribed."""
    with SwappedSubscription(redis_client) as subscription:
        assert publish_swapped(redis_client, "dir/a.sync", 5) == 1
        assert subscription.get(timeout=5) == SwappedEvent("dir/a.sync", 5)
        assert subscription.get(timeout=0.05) is None


def test_every_subscriber_receives_it(redis_client: redis.Redis) -> None:
    """Several subscribers (mountd processes, waiting CLIs) each receive the event."""
    with SwappedSubscription(redis_client) as one, SwappedSubscription(redis_client) as two:
        assert publish_swapped(redis_client, "a.sync", 1) == 2
        assert one.get(timeout=5) == two.get(timeout=5) == SwappedEvent("a.sync", 1)


def test_get_waits_for_a_publish_from_another_thread(redis_client: redis.Redis) -> None:
    """``get`` blocks until an event arrives rather than returning early."""
    with SwappedSubscription(redis_client) as subscription:
        publisher = threading.Thread(target=publish_swapped, args=(redis_client, "a.sync", 9))
        publisher.start()
        try:
            assert subscription.get(timeout=10) == SwappedEvent("a.sync", 9)
        finally:
            publisher.join()


def test_publish_without_subscribers_is_not_an_error(redis_client: redis.Redis) -> None:
    """Publishing when nobody listens reaches zero subscribers and raises nothing."""
    assert publish_swapped(redis_client, "a.sync", 1) == 0


def test_foreign_messages_raise_our_error(redis_client: redis.Redis) -> None:
    """A message on the channel that is not a swapped event raises ``MalformedRecord``."""
    with SwappedSubscription(redis_client) as subscription:
        redis_client.publish(SWAPPED_CHANNEL, '{"archive": "../x", "generation": 1}')
        with pytest.raises(MalformedRecord):
            subscription.get(timeout=5)
        redis_client.publish(SWAPPED_CHANNEL, "not json")
        with pytest.raises(MalformedRecord):
            subscription.get(timeout=5)


def test_bad_events_are_not_published(redis_client: redis.Redis) -> None:
    """An unsafe key or a negative generation is refused before publishing."""
    with pytest.raises(MalformedRecord):
        publish_swapped(redis_client, "/abs.sync", 1)
    with pytest.raises(MalformedRecord):
        publish_swapped(redis_client, "a.sync", -1)


def test_subscribing_to_a_stopped_redis_raises_broker_unavailable(private_redis: RedisServer) -> None:
    """Without Redis, subscribing and publishing raise ``BrokerUnavailable``."""
    client = make_redis(private_redis.url, socket_timeout=1, connect_timeout=1)
    private_redis.stop()
    with pytest.raises(BrokerUnavailable):
        SwappedSubscription(client)
    with pytest.raises(BrokerUnavailable):
        publish_swapped(client, "a.sync", 1)
