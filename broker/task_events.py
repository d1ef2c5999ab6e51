"""The worker's Celery consumer, with its task events sent in batches a short while apart.

A worker sends ``task-received``, ``task-started`` and ``task-succeeded`` for every job (Flower and
``celery events`` build their task lists from them). Celery's event loop already buffers task events, but it
flushes the buffer on the loop's next turn, so each event of a short job went out in a ``PUBLISH`` of its
own: three of a refresh's eight worker round trips. ``DeferredEventsConsumer`` flushes the buffer
``TASK_EVENT_DELAY`` seconds after the first event that found it empty, so a short job's three events (and
the events of the jobs that run meanwhile) leave in one ``task-multi`` message, which Celery's receiver (and
so Flower) unpacks into the same events, in order, with their own timestamps.

Invariants:
    * Every task event is still sent, at most ``TASK_EVENT_DELAY`` seconds late (sooner when Celery's own
      buffer limit fills); worker heartbeats and other event groups are not delayed.
    * Events still buffered when the worker shuts down are flushed first.
    * Only the event loop (prefork, the worker's pool) buffers; without a hub Celery sends events at once,
      as before.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: How long a buffered task event waits for others before the buffer is published, in seconds. A refresh
#: of a small guest takes tens of milliseconds, so its events usually share one message; Flower shows a
#: job's state this much later at most.
TASK_EVENT_DELAY = 0.25
#: The value of Celery's ``worker_consumer`` setting that selects this consumer.
CONSUMER_PATH = f"{__name__}:DeferredEventsConsumer"


class DeferredEventsConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, flushing buffered task events ``TASK_EVENT_DELAY`` after the first of them."""

    _event_flush_scheduled = False

    def on_send_event_buffered(self) -> None:
        """Called by the event dispatcher for each buffered event: schedule one flush for all of them."""
        if self.hub is None or self._event_flush_scheduled:
            return
        self._event_flush_scheduled = True
        self.hub.call_later(TASK_EVENT_DELAY, self._flush_deferred_events)

    def _flush_deferred_events(self) -> None:
        self._event_flush_scheduled = False
        self._flush_events()

    def shutdown(self) -> None:
        """Send what is buffered, then shut down as Celery does."""
        try:
            self._flush_events()
        except Exception as exc:  # noqa: BLE001  (the broker may be gone already; shutdown goes on)
            log.warning("task events lost at shutdown error=%s", exc)
        super().shutdown()
