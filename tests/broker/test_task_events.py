"""The worker's consumer sends a job's task events together, a short while later (``broker.task_events``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import redis
from redis_server import RedisServer

from broker import Settings, make_celery_app
from broker.celery_app import WORKER_CONSUMER
from broker.task_events import CONSUMER_PATH, TASK_EVENT_DELAY, DeferredEventsConsumer


class FakeHub:
    """The event loop's timer, driven by hand."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((delay, callback))

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _, callback in timers:
            callback()


def _consumer(dispatcher: Any, hub: FakeHub | None) -> DeferredEventsConsumer:
    # Only what the event methods use; building a whole Celery consumer needs a running worker.
    consumer = DeferredEventsConsumer.__new__(DeferredEventsConsumer)
    consumer.hub = hub
    consumer.event_dispatcher = dispatcher
    return consumer


def test_workers_use_the_deferred_events_consumer() -> None:
    app = make_celery_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    assert app.conf.worker_consumer == WORKER_CONSUMER == CONSUMER_PATH


def test_a_jobs_three_events_leave_in_one_publish_after_the_delay(redis_server: RedisServer) -> None:
    """received, started, succeeded: one ``task.multi`` message once the timer fires, none before, all
    three inside in order (Celery's receiver, and so Flower, unpacks a list into its events)."""
    app = make_celery_app(Settings(), broker_url=redis_server.url)
    listener = redis.Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    pubsub.psubscribe("/0.celeryev/*")
    assert pubsub.get_message(timeout=1.0)["type"] == "psubscribe"
    hub = FakeHub()
    with app.connection_for_write() as connection:
        consumer = _consumer(None, hub)
        dispatcher = app.events.Dispatcher(
            connection,
            hostname="w@test",
            buffer_group=["task"],
            on_send_buffered=consumer.on_send_event_buffered,
        )
        consumer.event_dispatcher = dispatcher
        for kind in ("task-received", "task-started", "task-succeeded"):
            dispatcher.send(kind, uuid="job-1")
        assert [delay for delay, _ in hub.timers] == [TASK_EVENT_DELAY]
        assert pubsub.get_message(timeout=0.3) is None
        hub.fire()
        message = pubsub.get_message(timeout=2.0)
        assert message is not None
        assert message["channel"] == b"/0.celeryev/task.multi"
        events = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        assert [(e["type"], e["uuid"]) for e in events] == [
            ("task-received", "job-1"),
            ("task-started", "job-1"),
            ("task-succeeded", "job-1"),
        ]
        assert pubsub.get_message(timeout=0.3) is None
        dispatcher.send("task-received", uuid="job-2")  # the next batch gets a timer of its own
        assert [delay for delay, _ in hub.timers] == [TASK_EVENT_DELAY]
        dispatcher.close()
    pubsub.close()
    listener.close()
    app.close()


class CountingDispatcher:
    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_shutdown_flushes_what_is_buffered() -> None:
    dispatcher = CountingDispatcher()
    consumer = _consumer(dispatcher, FakeHub())
    consumer.blueprint = type("Blueprint", (), {"shutdown": lambda self, c: None})()
    consumer.shutdown()
    assert dispatcher.flushes == 1


def test_without_an_event_loop_nothing_is_scheduled() -> None:
    consumer = _consumer(CountingDispatcher(), None)
    consumer.on_send_event_buffered()
    assert consumer.event_dispatcher.flushes == 0
