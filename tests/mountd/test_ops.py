"""mountd's ops endpoints: health (store readable, broker reported) and Prometheus metrics that move."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dav_client import get, propfind, request
from prometheus_client.parser import text_string_to_metric_families
from recording_hook import RecordingHook
from redis_server import RedisServer, wait_for
from store_manifests import EXPIRED

from broker import Settings
from broker.connection import BrokerConnection
from broker.swapped import SwappedEvent
from mountd import (
    HEALTH_PATH,
    METRICS_PATH,
    BrokerFreshness,
    NullFreshness,
    ServerHandle,
    serve_background,
)
from mountd.ops.endpoints import OpsEndpoints, check_health
from mountd.ops.metrics import MountdMetrics, record_bytes
from mountd.refresh.hooks import observe
from mountd.refresh.scheduler import RefreshScheduler
from sync_format import EMPTY_WASM, BuildResult, commit_payload
from sync_format.testing import make_archive

AddArchive = Callable[..., BuildResult]
PAYLOAD = b"0123456789" * 1000


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the metrics page by (name, labels), parsed with prometheus_client's parser."""
    resp = get(url, METRICS_PATH)
    assert resp.status == 200
    assert (resp.header("content-type") or "").startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(url: str, name: str, **labels: str) -> float:
    """One sample's value (0 when the sample is absent)."""
    return samples(url).get((name, frozenset(labels.items())), 0.0)


def health(url: str) -> tuple[int, dict[str, Any]]:
    """The health endpoint's status and JSON document."""
    resp = get(url, HEALTH_PATH)
    assert resp.header("content-type") == "application/json"
    return resp.status, json.loads(resp.body)


def test_health_is_ok_with_a_readable_store_and_no_broker(url: str) -> None:
    """A readable store without a broker is healthy: 200 JSON with status ok, store true, broker none."""
    assert health(url) == (200, {"status": "ok", "store": True, "broker": "none", "buffered_refreshes": 0})


def test_health_is_503_once_the_store_is_gone(store: Path, url: str) -> None:
    """Removing the store directory turns health into 503 with status unhealthy and store false."""
    shutil.rmtree(store)
    status, doc = health(url)
    assert (status, doc["status"], doc["store"]) == (503, "unhealthy", False)


def test_health_of_a_single_archive_follows_the_file(add_archive: AddArchive, store: Path) -> None:
    """Serving one archive, health is 200 while the file can be opened and 503 once it is gone."""
    archive = store / "one.txt.sync"
    add_archive("one.txt.sync", b"one")
    with serve_background(Settings(port=0), archive, NullFreshness()) as handle:
        assert health(handle.mount_url)[0] == 200
        archive.unlink()
        assert health(handle.mount_url)[0] == 503
        os.mkfifo(archive)  # something that is no archive, and whose open would wait for a writer
        try:
            status, doc = health_within(handle.mount_url, 10)
        finally:
            with contextlib.suppress(OSError):  # where the check waits in open(), this lets it return
                os.close(os.open(archive, os.O_WRONLY | os.O_NONBLOCK))
        assert (status, doc["store"]) == (503, False)


def health_within(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """``health`` with a client timeout."""
    resp = request(url, "GET", HEALTH_PATH, timeout=timeout)
    return resp.status, json.loads(resp.body)


@pytest.mark.parametrize("path", [HEALTH_PATH, METRICS_PATH])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PROPFIND", "OPTIONS"])
def test_other_methods_on_ops_paths_get_405(url: str, path: str, method: str) -> None:
    """Only GET and HEAD reach the ops endpoints; anything else is 405 with an Allow header."""
    resp = request(url, method, path)
    assert resp.status == 405
    assert resp.header("allow") == "GET, HEAD"


@pytest.mark.parametrize("path", [HEALTH_PATH, METRICS_PATH])
def test_head_on_ops_paths_has_no_body(url: str, path: str) -> None:
    """HEAD answers 200 with the GET's headers and no body."""
    resp = request(url, "HEAD", path)
    assert (resp.status, resp.body) == (200, b"")
    assert int(resp.header("content-length") or 0) > 0


def test_ops_paths_are_behind_the_host_check(server: ServerHandle) -> None:
    """A request for the health path under a foreign Host is refused (421) before the endpoint sees it."""
    resp = request(server.mount_url, "GET", HEALTH_PATH, headers={"Host": f"evil.example:{server.port}"})
    assert resp.status == 421


def test_a_get_moves_requests_and_bytes(add_archive: AddArchive, url: str) -> None:
    """A GET of an archive counts one GET 200 request, a duration observation and exactly the payload's
    bytes; scrapes themselves are not counted."""
    add_archive("data.txt.sync", PAYLOAD)
    before = samples(url)
    assert ("sync_mountd_requests_total", frozenset({("method", "GET"), ("status", "200")})) not in before
    resp = get(url, "/data.txt")
    assert (resp.status, resp.body) == (200, PAYLOAD)
    wait_for(
        lambda: value(url, "sync_mountd_requests_total", method="GET", status="200") == 1,
        10,
        what="the GET is counted",
    )
    assert value(url, "sync_mountd_response_bytes_total") == len(PAYLOAD)
    assert value(url, "sync_mountd_request_duration_seconds_count", method="GET") == 1


def test_bytes_sent_by_sendfile_are_counted(add_archive: AddArchive, url: str) -> None:
    """A payload big enough that the gateway sends most of it with sendfile is still counted byte-exact."""
    big = bytes(range(256)) * (3 * 4096 + 17)
    add_archive("big.txt.sync", big)
    resp = get(url, "/big.txt")
    assert resp.body == big
    wait_for(
        lambda: value(url, "sync_mountd_response_bytes_total") == len(big),
        10,
        what="every byte of the body is counted",
    )


def _slow_reader(server: ServerHandle, path: str) -> tuple[socket.socket, Any]:
    """A GET from a client with a 64 KiB receive buffer that has not read yet: its body gets parked (the
    connection loop sends it, ``mountd.http.handoff``). Returns the socket and its reader, head read."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200")
    while reader.readline() not in (b"\r\n", b""):
        pass
    time.sleep(0.5)  # the server fills the socket buffers and parks the rest
    return sock, reader


def test_parked_bodies_count_the_bytes_that_left_not_the_bytes_planned(
    add_archive: AddArchive, server: ServerHandle
) -> None:
    """A body finished by the connection loop counts in full once it is out; one whose reader resets the
    connection after 1 MiB counts what the kernel took, not the whole payload."""
    body = os.urandom(16 * 1024 * 1024)
    add_archive("huge.txt.sync", body)
    url = server.mount_url
    sock, reader = _slow_reader(server, "/huge.txt")
    with sock, reader:
        assert reader.read(len(body)) == body
    wait_for(
        lambda: value(url, "sync_mountd_response_bytes_total") == len(body),
        10,
        what="the parked body counted in full once out",
    )
    baseline = len(os.listdir("/proc/self/fd"))
    sock, reader = _slow_reader(server, "/huge.txt")
    with sock, reader:
        assert reader.read(1024 * 1024) == body[: 1024 * 1024]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
    # The parked send ends on the reset: its socket and its payload descriptor close after its report.
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= baseline, 10, what="the parked send ended")
    counted = value(url, "sync_mountd_response_bytes_total") - len(body)
    # At least what the reader read; at most that and the socket buffers (a few MiB), never the 16 MiB.
    assert 1024 * 1024 <= counted < len(body) // 2


def test_statuses_and_methods_are_labelled(add_archive: AddArchive, url: str) -> None:
    """A 404 and a PROPFIND are counted under their own status and method, an unknown method as other."""
    add_archive("data.txt.sync", PAYLOAD)
    assert get(url, "/missing.bin").status == 404
    propfind(url, "/")
    assert request(url, "BREW", "/data.txt").status == 405
    wait_for(
        lambda: (
            value(url, "sync_mountd_requests_total", method="GET", status="404") == 1
            and value(url, "sync_mountd_requests_total", method="PROPFIND", status="207") == 1
            and value(url, "sync_mountd_requests_total", method="other", status="405") == 1
        ),
        10,
        what="404, PROPFIND and the unknown method counted",
    )


def test_a_stale_read_counts_a_stale_read(add_archive: AddArchive, hook: RecordingHook, url: str) -> None:
    """A GET of an expired archive increments stale_reads_total once and still reaches the hook."""
    add_archive("old.txt.sync", b"old", manifest=EXPIRED)
    add_archive("new.txt.sync", b"new")
    assert value(url, "sync_mountd_stale_reads_total") == 0
    assert get(url, "/old.txt").body == b"old"
    assert get(url, "/new.txt").body == b"new"
    assert value(url, "sync_mountd_stale_reads_total") == 1
    assert len(hook.calls) == 1


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of this test, which the test may stop."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def broker_server(
    add_archive: AddArchive, store: Path, redis_server: RedisServer
) -> Iterator[tuple[ServerHandle, BrokerFreshness]]:
    """mountd with the broker-backed hook on the private Redis and one expired archive."""
    add_archive("old.txt.sync", b"old", manifest=EXPIRED)
    settings = Settings(port=0)
    freshness = BrokerFreshness.connect(settings, BrokerConnection(redis_server.celery_url, redis_server.url))
    try:
        with serve_background(settings, store, freshness) as handle:
            yield handle, freshness
    finally:
        freshness.close()


def test_refresh_requests_are_counted_by_result(
    broker_server: tuple[ServerHandle, BrokerFreshness], redis_server: RedisServer
) -> None:
    """The first stale read enqueues, the next merges into the queued refresh, and with Redis down a read
    is buffered; health reports the broker (ok, then unavailable with one buffered refresh) and stays 200."""
    handle, freshness = broker_server
    url = handle.mount_url
    assert health(url) == (200, {"status": "ok", "store": True, "broker": "ok", "buffered_refreshes": 0})

    def result(name: str) -> float:
        return value(url, "sync_mountd_refresh_requests_total", result=name)

    get(url, "/old.txt")
    assert freshness.wait_idle(10)
    assert (result("enqueued"), result("merged")) == (1, 0)
    get(url, "/old.txt")
    assert freshness.wait_idle(10)
    assert (result("enqueued"), result("merged"), result("buffered")) == (1, 1, 0)
    redis_server.stop()
    get(url, "/old.txt")
    assert freshness.wait_idle(10)
    assert (result("buffered"), result("failed")) == (1, 0)
    assert value(url, "sync_mountd_stale_reads_total") == 3
    assert health(url) == (
        200,
        {"status": "ok", "store": True, "broker": "unavailable", "buffered_refreshes": 1},
    )


def test_check_health_names_no_broker_for_hooks_without_one(store: Path) -> None:
    """A hook that is not broker-backed makes the broker field none."""
    assert check_health(store, observe(RecordingHook()).broker_health).broker == "none"


def test_record_bytes_counts_bytes_sent_outside_the_iterable(store: Path) -> None:
    """An application that sends its body another way reports it with record_bytes, and it is counted."""

    def sendfile_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "4096")])
        record_bytes(environ, 4096)
        return []

    hook = NullFreshness()
    metrics = MountdMetrics(lambda: hook.counts)
    app = OpsEndpoints(sendfile_app, metrics, lambda: check_health(store, hook.broker_health))
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/big.txt"}
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert list(body) == []
    body.close()  # type: ignore[attr-defined]  # the server closes what it was given
    assert statuses == ["200 OK"]
    page = metrics.exposition().decode()
    assert "sync_mountd_response_bytes_total 4096.0" in page
    assert 'sync_mountd_requests_total{method="GET",status="200"} 1.0' in page


def test_the_scheduler_s_freshness_summary_is_exported(
    add_archive: AddArchive, store: Path, server: ServerHandle, url: str
) -> None:
    """Attached to the metrics, the scheduler's summary shows: archives watched and expired, the queue
    (waiting beyond the window, in flight), the lag histogram after a commit past expiry, walks and CPU."""
    for name in ("a.txt.sync", "b.txt.sync", "c.txt.sync"):
        make_archive(store / name, b"old", manifest=EXPIRED, wasm=EMPTY_WASM + b"\x00\x05\x04sync")
    scheduler = RefreshScheduler(store, RecordingHook(), server.provider.index, window=2)
    server.metrics.attach_scheduler(scheduler.summary)
    scheduler.scan()
    assert value(url, "sync_mountd_archives_watched") == 3
    assert value(url, "sync_mountd_archives_expired") == 3
    assert value(url, "sync_mountd_refresh_queue_depth", state="in_flight") == 2
    assert value(url, "sync_mountd_refresh_queue_depth", state="waiting") == 1
    commit_payload(store / "a.txt.sync", 0, b"new")
    scheduler.on_swapped(SwappedEvent("a.txt.sync", 1))
    scheduler.step()
    assert value(url, "sync_mountd_archives_expired") == 2
    assert value(url, "sync_mountd_refresh_lag_seconds_count") == 1
    assert value(url, "sync_mountd_refresh_lag_seconds_bucket", le="3600.0") == 0  # expired since 2020
    assert value(url, "sync_mountd_refresh_lag_seconds_bucket", le="+Inf") == 1
    assert value(url, "sync_mountd_scheduler_walks_total") == 1
    assert value(url, "sync_mountd_scheduler_leader") == 1
