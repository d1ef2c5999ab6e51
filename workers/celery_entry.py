"""For people who know Celery: ``celery -A workers.celery_entry worker`` (or ``… flower``) uses our app.

Celery's ``-A`` needs a module attribute, and our code has no module-level app (CONTRIBUTING.md). This module
builds one on first access through PEP 562's module ``__getattr__``, from ``Settings.from_env()`` (so
``SYNC_BROKER_URL`` and ``SYNC_STORE`` apply), with the refresh task registered. Nothing in sync imports it;
``syncctl worker`` builds its own app. With ``SYNC_LOG_FORMAT=json`` the root logger gets our JSON formatter
first: Flower (Tornado) then adds no text handler of its own, so its lines are JSON events too (the compose
stack's Flower). Without ``SYNC_BROKER_URL`` the embedded broker of the settings is
started or re-attached to, as ``syncctl worker`` does.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _build() -> Any:
    from broker.celery_app import make_celery_app  # noqa: PLC0415  (built only when Celery asks)
    from broker.connection import connect  # noqa: PLC0415
    from broker.settings import WORKER_DEFAULTS, Settings  # noqa: PLC0415
    from workers.tasks import register_tasks  # noqa: PLC0415

    _log_json_if_asked()
    settings = Settings.from_env(defaults=WORKER_DEFAULTS)
    connection = connect(settings)
    app = make_celery_app(settings, broker_url=connection.celery_url)
    register_tasks(app, settings, broker_url=connection.redis_url)
    return app


def _log_json_if_asked() -> None:
    from broker.settings import log_format  # noqa: PLC0415
    from syncctl.log_format import configure_logging  # noqa: PLC0415

    if log_format() == "json":
        # Info level: Flower's startup lines ("Visit me at ...", "Broker: ...") are info records.
        configure_logging(1, "json")


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return _build()
    raise AttributeError(name)
