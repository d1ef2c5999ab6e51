"""The Celery app factory: the settings that held up, derived limits, and no implicit global app."""

from __future__ import annotations

import subprocess
import sys

import pytest

from broker import (
    PRODUCER_CONNECT_TIMEOUT,
    PRODUCER_SOCKET_TIMEOUT,
    QUEUE_REFRESH,
    TASK_REFRESH,
    RetryPolicy,
    Settings,
    SettingsError,
    job_time_limits,
    make_celery_app,
)
from broker.celery_app import HARD_LIMIT_MARGIN, SOFT_LIMIT_MARGIN, guest_budget, visibility_timeout
from broker.claims import RUNNING_CLAIM_TTL_MS


def test_factory_applies_the_reliability_settings() -> None:
    """Late acks, requeue on a lost worker, prefetch 1, events, routes and timeouts are all set."""
    settings = Settings(broker_url="redis://:pw@127.0.0.1:1/0")
    app = make_celery_app(settings)
    conf = app.conf
    assert conf.broker_url == "redis://:pw@127.0.0.1:1/0"
    assert conf.task_default_queue == QUEUE_REFRESH
    assert conf.task_routes == {TASK_REFRESH: {"queue": QUEUE_REFRESH}}
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert conf.broker_connection_retry_on_startup is True
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True
    assert conf.task_ignore_result is True
    assert conf.result_backend is None
    assert conf.accept_content == ["json"]
    options = conf.broker_transport_options
    assert options["unacked_restore_throttle"] == 1
    assert options["socket_timeout"] == 5.0
    assert options["socket_connect_timeout"] == 5.0
    assert options["visibility_timeout"] == visibility_timeout(settings)
    limits = job_time_limits(settings.max_guest_timeout, settings)
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (limits.soft, limits.hard)
    assert app.tasks.get(TASK_REFRESH) is None


def test_visibility_timeout_exceeds_the_longest_retry_delay() -> None:
    """A retry waiting for its countdown is not redelivered; a dead worker's job returns in 2 minutes."""
    settings = Settings(max_guest_timeout=1200.0)
    assert visibility_timeout(settings, RetryPolicy(max_delay=900.0)) > 900.0
    assert visibility_timeout(settings) < 120.0
    slow = Settings(retry_base_delay=100.0, retry_max_delay=900.0)
    assert visibility_timeout(slow) == 900.0 + slow.visibility_margin


def test_visibility_timeout_outlasts_a_dead_jobs_claim() -> None:
    """Even with retries of a second, a dead worker's job is redelivered only after its claim has expired
    (else the copy would find the claim held and drop out); the margin comes from the settings."""
    fast = Settings(retry_base_delay=0.2, retry_max_delay=0.5, visibility_margin=10.0)
    assert visibility_timeout(fast) == RUNNING_CLAIM_TTL_MS / 1000 + 10.0


def test_time_limits_follow_the_manifest_timeout() -> None:
    """Limits are the guest budget plus margins; 0 means the default; the cap applies."""
    settings = Settings(guest_timeout=30.0, max_guest_timeout=600.0)
    assert guest_budget(0, settings) == 30.0
    assert guest_budget(5, settings) == 5.0
    assert guest_budget(10_000, settings) == 600.0
    limits = job_time_limits(5, settings)
    assert limits.soft == 5 + SOFT_LIMIT_MARGIN
    assert limits.hard == limits.soft + HARD_LIMIT_MARGIN
    with pytest.raises(ValueError, match="negative"):
        job_time_limits(-1, settings)


def test_result_backend_is_used_only_when_configured() -> None:
    """Naming a result backend turns results on; otherwise they are ignored."""
    settings = Settings(broker_url="redis://h/0", result_backend="redis://h/1")
    app = make_celery_app(settings)
    assert app.conf.result_backend == "redis://h/1"
    assert app.conf.task_ignore_result is False


def test_embedded_urls_and_overrides() -> None:
    """An explicit URL wins over the settings; a ``unix://`` URL is given to Celery as ``redis+socket``."""
    app = make_celery_app(Settings(broker_url="redis://h/0"), broker_url="unix:///tmp/x/redis.sock")
    assert app.conf.broker_url == "redis+socket:///tmp/x/redis.sock"


def test_producer_apps_fail_fast() -> None:
    """A producer app uses the producer timeouts and one immediate reconnect, so a send never waits long."""
    app = make_celery_app(Settings(), broker_url="redis://h/0", producer=True)
    options = app.conf.broker_transport_options
    assert options["socket_timeout"] == PRODUCER_SOCKET_TIMEOUT
    assert options["socket_connect_timeout"] == PRODUCER_CONNECT_TIMEOUT
    assert app.conf.broker_connection_timeout == PRODUCER_CONNECT_TIMEOUT
    assert (options["max_retries"], options["interval_start"]) == (1, 0)
    worker_options = make_celery_app(Settings(), broker_url="redis://h/0").conf.broker_transport_options
    assert "max_retries" not in worker_options


def test_missing_or_foreign_broker_urls_are_refused() -> None:
    """Without a broker URL, or with a non-Redis one, the factory raises ``SettingsError``."""
    with pytest.raises(SettingsError, match="no broker URL"):
        make_celery_app(Settings())
    with pytest.raises(SettingsError):
        make_celery_app(Settings(broker_url="amqp://h//"))


def test_apps_are_independent_and_not_current() -> None:
    """Each call builds a new app and none becomes Celery's implicit current app."""
    code = (
        "import celery, broker;"
        "a = broker.make_celery_app(broker.Settings(broker_url='redis://h/0'));"
        "b = broker.make_celery_app(broker.Settings(broker_url='redis://h/1'));"
        "from celery._state import _tls, default_app;"
        "print(a is not b, getattr(_tls, 'current_app', None) is None, default_app is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_importing_broker_loads_no_worker_code() -> None:
    """Producers import ``broker`` without loading ``workers`` or ``wasmtime``."""
    code = "import sys, broker; print(','.join(m for m in ('workers', 'wasmtime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
