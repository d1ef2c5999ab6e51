"""A refresh worker with a fast retry policy, run as a script.

``retry_worker.py BROKER STORE NAME CONCURRENCY MAX_RETRIES`` is ``syncctl worker`` (same app factory, same
``register_tasks``, same Celery worker options) with one difference: ``RetryPolicy(MAX_RETRIES, 0.2 s,
0.5 s)`` instead of the default five retries over minutes, so a test sees a transient failure retried and
given up within seconds. The policy is passed where the product takes it (``register_tasks`` and
``make_celery_app``); nothing else is stubbed. SYNC_CACHE_DIR configures the module cache as for any worker.
"""

from __future__ import annotations

import sys

from broker.celery_app import make_celery_app
from broker.connection import connect
from broker.contract import QUEUE_REFRESH
from broker.retry import RetryPolicy
from broker.settings import Settings
from workers.tasks import register_tasks

#: Ceiling of the first retry's delay, in seconds.
BASE_DELAY = 0.2
#: Cap on any retry's delay, in seconds (the visibility timeout becomes this plus 30 s).
MAX_DELAY = 0.5


def main(argv: list[str]) -> None:
    """Run the worker until it is told to stop."""
    broker, store, name, concurrency = argv[1], argv[2], argv[3], argv[4]
    retry = RetryPolicy(max_retries=int(argv[5]), base_delay=BASE_DELAY, max_delay=MAX_DELAY)
    settings = Settings.from_env({"broker_url": broker, "store": store})
    with connect(settings) as connection:
        app = make_celery_app(settings, broker_url=connection.celery_url, retry=retry)
        register_tasks(app, settings, broker_url=connection.redis_url, retry=retry)
        app.worker_main(
            [
                "worker",
                f"--queues={QUEUE_REFRESH}",
                "--pool=prefork",
                f"--hostname={name}",
                "--events",
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
            ]
        )


if __name__ == "__main__":
    main(sys.argv)
