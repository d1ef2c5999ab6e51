"""mountd hears every "swapped" notification: ``SwapListener`` on a private redis-server hands each to its
callbacks, comes back after Redis restarts (telling ``on_connect``, so the scheduler walks for what it
missed), and the listing cache forgets the old generation of an announced archive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, wait_for

from broker import SERVICE_CONNECT_TIMEOUT, SERVICE_SOCKET_TIMEOUT, make_redis
from broker.swapped import SwappedEvent, publish_swapped
from mountd import ArchiveFacts, ArchiveIndex
from mountd.refresh.swap_listener import SwapListener
from sync_format import commit_payload
from sync_format.testing import make_archive

WAIT = 20.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it is restarted)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def client_of(server: RedisServer) -> redis.Redis:
    """A client with the service timeouts."""
    return make_redis(
        server.url, socket_timeout=SERVICE_SOCKET_TIMEOUT, connect_timeout=SERVICE_CONNECT_TIMEOUT
    )


def test_notifications_reach_every_callback_and_survive_a_redis_restart(private_redis: RedisServer) -> None:
    """Events arrive in order; a raising callback does not stop the next one; after Redis restarts the
    listener subscribes again, calls ``on_connect`` again, and later events arrive."""
    seen: list[SwappedEvent] = []
    connects: list[int] = []

    def broken(event: SwappedEvent) -> None:
        raise RuntimeError("a broken consumer")

    listener = SwapListener(
        client_of(private_redis), [broken, seen.append], on_connect=[lambda: connects.append(1)]
    ).start()
    publisher = client_of(private_redis)
    try:
        assert listener.wait_connected(WAIT)
        publish_swapped(publisher, "a.txt.sync", 1)
        publish_swapped(publisher, "b.txt.sync", 7)
        wait_for(lambda: len(seen) == 2, WAIT, what="two events")
        assert seen == [SwappedEvent("a.txt.sync", 1), SwappedEvent("b.txt.sync", 7)]
        private_redis.restart()
        wait_for(lambda: len(connects) == 2, WAIT, what="subscribed again")
        publish_swapped(client_of(private_redis), "a.txt.sync", 2)
        wait_for(lambda: len(seen) == 3, WAIT, what="an event after the restart")
        assert seen[-1] == SwappedEvent("a.txt.sync", 2)
        assert listener.connects == 2
    finally:
        listener.close()


def test_an_announced_commit_drops_the_listing_and_the_old_facts(tmp_path: Path) -> None:
    """``ArchiveIndex.forget`` (the listener's callback) drops the directory's listing and the facts of the
    version it showed, so no answer comes from the old generation after the notice."""
    store = tmp_path / "store"
    store.mkdir()
    path = store / "a.txt.sync"
    make_archive(path, b"old")
    index = ArchiveIndex()
    old = index.list_directory(store).archives["a.txt"].facts
    assert isinstance(index.cached(old.identity), ArchiveFacts)
    commit_payload(path, 0, b"new")
    index.forget(path)
    assert index.cached(old.identity) is None
    assert index.list_directory(store).archives["a.txt"].facts.generation == 1
