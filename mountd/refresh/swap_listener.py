"""``SwapListener``: one thread in mountd that hears every "swapped" notification and passes it on.

Workers publish ``{"archive", "generation"}`` on ``SWAPPED_CHANNEL`` after each commit (``broker.swapped``).
mountd listens so that the refresh scheduler schedules the new generation at once, the listing cache drops
what it knew of the old one, and readers waiting for a fresh generation (``Cache-Control: no-cache``) wake.

Redis pub/sub is fire and forget: a notification published while the subscription is down is lost. So the
listener reconnects with a back-off (``RECONNECT_MIN`` doubling to ``RECONNECT_MAX``) and, after every
(re)subscription, calls the ``on_connect`` callbacks — the scheduler walks the store then, which finds
whatever was committed while nobody listened. The scheduler's periodic walk remains the last safety net.

Invariants: callbacks run on the listener's thread, one event at a time, in publish order; a callback that
raises is logged with its traceback and the next one still runs; ``close`` stops the thread within
``POLL_INTERVAL`` plus one Redis timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis

from broker.contract import MalformedRecord
from broker.swapped import SwappedEvent, SwappedSubscription
from sync_format.errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: Seconds one wait for a message lasts (how long ``close`` may wait for the thread to notice).
POLL_INTERVAL = 0.5
#: Seconds before the first reconnection attempt; doubled per failure up to ``RECONNECT_MAX``.
RECONNECT_MIN = 0.2
#: Seconds between reconnection attempts at most.
RECONNECT_MAX = 5.0
#: Seconds ``close`` waits for the thread.
CLOSE_TIMEOUT = 10.0


class SwapListener:
    """Subscribe to "swapped" notifications on a background thread and hand each to ``callbacks``.

    Args:
        client: A Redis client on the broker's Redis (the subscription takes one connection from it).
        callbacks: Called with each event.
        on_connect: Called after each successful (re)subscription (the first one included).
    """

    def __init__(
        self,
        client: redis.Redis,
        callbacks: Sequence[Callable[[SwappedEvent], object]],
        *,
        on_connect: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.client = client
        self.callbacks = list(callbacks)
        self.on_connect = list(on_connect)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._events = self._connects = 0
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mountd-swap-listener", daemon=True)

    def start(self) -> SwapListener:
        """Start the thread.

        Returns:
            The listener itself.
        """
        self._thread.start()
        return self

    @property
    def events(self) -> int:
        """Notifications received so far."""
        with self._lock:
            return self._events

    @property
    def connects(self) -> int:
        """Successful subscriptions so far (1 + reconnections)."""
        with self._lock:
            return self._connects

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the subscription is up.

        Args:
            timeout: Seconds to wait.

        Returns:
            True when subscribed.
        """
        return self._connected.wait(timeout)

    def close(self) -> None:
        """Stop the thread and unsubscribe."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(CLOSE_TIMEOUT)

    def _run(self) -> None:
        delay = RECONNECT_MIN
        while not self._stop.is_set():
            try:
                subscription = SwappedSubscription(self.client)
            except BrokerUnavailable as exc:
                log.warning("swapped subscription failed retry_in_s=%.1f error=%s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            with self._lock:
                self._connects += 1
            self._connected.set()
            log.info("swapped subscription up connects=%d", self._connects)
            for callback in self.on_connect:
                self._call(callback)
            try:
                self._listen(subscription)
            except BrokerUnavailable as exc:
                log.warning("swapped subscription lost error=%s", exc)
            finally:
                self._connected.clear()
                subscription.close()

    def _listen(self, subscription: SwappedSubscription) -> None:
        while not self._stop.is_set():
            try:
                event = subscription.get(POLL_INTERVAL)
            except MalformedRecord as exc:
                log.warning("malformed swapped notification ignored reason=%s", exc.message)
                continue
            if event is None:
                continue
            with self._lock:
                self._events += 1
            for callback in self.callbacks:
                self._call(callback, event)

    @staticmethod
    def _call(callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            # A broken consumer must not stop the others, nor the subscription.
            log.exception("swapped callback failed callback=%r", callback)
