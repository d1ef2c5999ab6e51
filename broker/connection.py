"""Which Redis a process talks to: the one ``--broker`` names, or the embedded one of its settings.

``connect(settings)`` is the one place that decides. With ``Settings.broker_url`` set (``redis://…``) the
process uses it for Celery, claims, status and notifications. Without it, the embedded ``redis-server`` in
``<cache_dir>/broker`` is started or re-attached to, so a single machine needs nothing installed or running;
both paths then run the same code. The handle stops an embedded server it owns on close.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from broker.embedded import EmbeddedRedis
from broker.redis_client import redact_url, to_celery_url, to_redis_url
from broker.settings import Settings


@dataclass
class BrokerConnection:
    """Where this process's Celery broker and Redis are.

    Attributes:
        celery_url: URL for ``make_celery_app``.
        redis_url: URL for ``make_redis``.
        embedded: The embedded server when no URL was configured.
    """

    celery_url: str
    redis_url: str
    embedded: EmbeddedRedis | None = None

    @property
    def description(self) -> str:
        """A loggable description (passwords removed)."""
        kind = "embedded" if self.embedded is not None else "redis"
        return f"{kind} {redact_url(self.redis_url)}"

    def close(self) -> None:
        """Stop the embedded server if this process owns it."""
        if self.embedded is not None:
            self.embedded.close()

    def __enter__(self) -> BrokerConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(settings: Settings) -> BrokerConnection:
    """Resolve the broker of these settings, starting the embedded one when none is configured.

    Args:
        settings: Supplies ``broker_url`` and ``cache_dir``.

    Returns:
        The connection; close it when the process is done with the broker.

    Raises:
        BrokerUnavailable: The embedded server could not be started.
        SettingsError: The configured URL is not a Redis URL.
    """
    if settings.broker_url:
        return BrokerConnection(to_celery_url(settings.broker_url), to_redis_url(settings.broker_url))
    embedded = EmbeddedRedis.for_settings(settings).start()
    return BrokerConnection(embedded.celery_url, embedded.redis_url, embedded)
