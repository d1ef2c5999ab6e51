"""The refresh task when Redis is gone before the job starts: the message goes back to the broker.

A Redis restart while a worker holds a delivery used to fail the task with ``BrokerUnavailable`` at the
claim's start; Celery then acknowledged the message once it reconnected and the job was lost, while the
producer's claim kept every new request for that archive merged into it (deploy/test-stack.sh's "restart
redis" check found it under the real stack). The task must reject the message with requeue instead.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.exceptions import Reject  # type: ignore[import-untyped]
from redis_server import free_port

from broker.contract import RefreshRequest
from broker.retry import RetryPolicy
from broker.settings import Settings
from sync_format.errors import BrokerUnavailable
from workers.tasks import WorkerState, refresh_job


def test_a_job_that_cannot_reach_redis_at_start_is_requeued_not_failed(tmp_path: Path) -> None:
    """Nothing listens where Redis should be: the task raises Reject(requeue=True) carrying the
    BrokerUnavailable, so the message is requeued or redelivered, never acknowledged as failed."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings.from_env({"store": tmp_path, "broker_url": url, "cache_dir": tmp_path / "cache"})
    state = WorkerState(settings, url, RetryPolicy())
    task = SimpleNamespace(request=SimpleNamespace(hostname="w@test", id="job-1", retries=0))
    payload = RefreshRequest.new("gone.sync", 0).to_json()
    with pytest.raises(Reject) as caught:
        refresh_job(task, payload, state)
    assert caught.value.requeue is True
    assert isinstance(caught.value.reason, BrokerUnavailable)
