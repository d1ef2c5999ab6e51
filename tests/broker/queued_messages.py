"""Read the refresh queue straight from Redis: the messages kombu's Redis transport left in the queue list.

Kombu keeps a queue as a Redis list named after the queue (priority 0, the default); each element is a
JSON envelope whose base64 body is Celery's ``[args, kwargs, embed]``. Reading the list shows exactly what a
producer enqueued, independent of any worker.
"""

from __future__ import annotations

import base64
import json

import redis

from broker import QUEUE_REFRESH, TASK_REFRESH, RefreshRequest


def queue_length(client: redis.Redis, queue: str = QUEUE_REFRESH) -> int:
    """Messages waiting in ``queue``."""
    return int(client.llen(queue))


def queued_requests(client: redis.Redis, queue: str = QUEUE_REFRESH) -> list[RefreshRequest]:
    """The refresh requests waiting in ``queue``, oldest first; any other task name fails the test."""
    requests = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == TASK_REFRESH
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert kwargs == {}
        assert len(args) == 1
        requests.append(RefreshRequest.from_json(args[0]))
    return requests
