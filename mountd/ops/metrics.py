"""``MountdMetrics``: the Prometheus instruments of one mountd application, in a registry of its own.

What is counted, and where it is counted:

* requests, their duration and the body bytes sent — by ``mountd.ops.endpoints.OpsEndpoints`` around every
  request that passed the Host check (the ops endpoints themselves are not counted, so scrapes do not inflate
  them). Bytes are what the WSGI iterable yielded; a response sent another way (a sendfile path) reports
  its bytes with ``record_bytes(environ, n)``, which finds this request's metrics in the environ;
* stale reads — by ``CountingFreshness``, which wraps the freshness hook the provider is given and counts
  each ``on_stale`` call before passing it on;
* the refresh scheduler's freshness summary — refresh lag (seconds past expiry at commit, a histogram),
  archives expired now, the refresh queue (waiting in the scheduler, in flight), walk CPU — read at scrape
  time from the ``RefreshScheduler`` attached with ``attach_scheduler`` (absent until one is attached);
* refresh requests by result — read at scrape time from the hook's own ``counts``
  (``mountd.refresh.hooks.FreshnessCounts``): the hook already counts what ``request_refresh`` returned, in
  its background thread, so nothing is counted twice or in two places. A hook that does not report
  (``mountd.refresh.hooks.observe``) reports zeros.

Invariants:
    * No module-level registry or metric: each application has its own ``CollectorRegistry`` (two servers in
      one process — the tests run many — never share counters).
    * Label values are bounded: methods outside ``KNOWN_METHODS`` are counted as ``other``, statuses are the
      three-digit codes the server sent, results are the four names of ``REFRESH_RESULTS``.
    * Recording never raises into a request and never blocks on anything but the metric's own lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from mountd.dav.integrity import VERDICTS
from mountd.dav.provider import FreshnessHook
from mountd.refresh.hooks import FreshnessCounts
from mountd.refresh.scheduler import LAG_BUCKETS, FreshnessSummary

log = logging.getLogger(__name__)

#: Prefix of every metric name mountd exports.
PREFIX = "sync_mountd"
#: Environ key under which a request finds the metrics that count it (see ``record_bytes``).
METRICS_KEY = "sync.metrics"
#: Methods counted under their own name; anything else a client sends is ``other`` (bounded label values).
KNOWN_METHODS = frozenset(
    {
        "GET",
        "HEAD",
        "OPTIONS",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "PUT",
        "DELETE",
        "COPY",
        "MOVE",
        "LOCK",
        "UNLOCK",
        "POST",
    }
)
#: Request duration buckets in seconds: a PROPFIND of a cached listing takes a millisecond, a GET of a
#: large payload over a slow link minutes.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: ``refresh_requests_total`` results and the ``FreshnessCounts`` field each one is read from: the claim was
#: taken and the task sent; a refresh was already queued or running (the claim existed); Redis or the broker
#: was unreachable and the refresh waits in the hook's pending set; the request raised something else.
REFRESH_RESULTS = {"enqueued": "queued", "merged": "merged", "buffered": "deferred", "failed": "failed"}
#: Content type of the exposition: the Prometheus text format 0.0.4, which every Prometheus reads (our names
#: and labels are plain ASCII, so prometheus_client's output is that format; its default header names 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MountdMetrics:
    """The instruments of one application.

    Args:
        counts: Returns the freshness hook's counts, read at scrape time for refresh-request counts
            (``mountd.refresh.hooks.observe``).
    """

    def __init__(self, counts: Callable[[], FreshnessCounts]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by method and HTTP status (the ops endpoints are not counted).",
            ("method", "status"),
            registry=self.registry,
        )
        self.response_bytes = Counter(
            f"{PREFIX}_response_bytes",
            "Response body bytes sent.",
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from the request reaching mountd to the last body byte handed to the server.",
            ("method",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.stale_reads = Counter(
            f"{PREFIX}_stale_reads",
            "Reads (GET, HEAD) of expired archives: calls of the freshness hook.",
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.registry.register(_RefreshRequests(counts))
        self.registry.register(_CorruptPayloads())
        self._scheduler = _SchedulerSummary()
        self.registry.register(self._scheduler)

    def identify_process(self, slot: int) -> None:
        """Export ``process{slot, pid}`` = 1: which server process (``mountd.processes``) answered.

        Each process counts only its own requests, and a scrape reaches whichever process accepts it;
        the slot label keeps each process's series apart (``sum`` over ``slot`` for the server's total).

        Args:
            slot: The process's slot (0 .. count-1); stable across restarts of the process.
        """
        self.registry.register(_ProcessIdentity(slot))

    def attach_scheduler(self, summary: Callable[[], FreshnessSummary]) -> None:
        """Export the freshness summary of the refresh scheduler from now on.

        Args:
            summary: Returns the current summary (``RefreshScheduler.summary``).
        """
        self._scheduler.source = summary

    def record_request(self, method: str, status: str, seconds: float) -> None:
        """Count one finished request.

        Args:
            method: The request method (unknown ones are counted as ``other``).
            status: The three-digit status code sent.
            seconds: Time from the request reaching mountd to its end.
        """
        label = method if method in KNOWN_METHODS else "other"
        children = self._children.get((label, status))
        if children is None:
            # labels() costs more than the increment itself; the pairs are few (bounded labels), so each
            # pair's instruments are looked up once.
            children = self._children[(label, status)] = (
                self.requests.labels(method=label, status=status),
                self.duration.labels(method=label),
            )
        children[0].inc()
        children[1].observe(seconds)

    def add_bytes(self, n: int) -> None:
        """Count body bytes sent.

        Args:
            n: Bytes; zero and negative counts are ignored.
        """
        if n > 0:
            self.response_bytes.inc(n)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (``CONTENT_TYPE``).

        Returns:
            The page.
        """
        return generate_latest(self.registry)


def record_bytes(environ: dict[str, Any], n: int) -> None:
    """Count ``n`` body bytes sent for the request of ``environ`` by a path other than the WSGI iterable.

    For a response whose bytes bypass the iterable (e.g. sent with ``os.sendfile``); bytes yielded by the
    iterable are counted already and must not be reported again.

    Args:
        environ: The request's environ.
        n: Bytes sent.
    """
    metrics = environ.get(METRICS_KEY)
    if isinstance(metrics, MountdMetrics):
        metrics.add_bytes(n)


class CountingFreshness:
    """A freshness hook that counts ``on_stale`` calls, then passes them to the hook it wraps.

    Args:
        inner: The hook doing the work.
        metrics: Where stale reads are counted.
    """

    def __init__(self, inner: FreshnessHook, metrics: MountdMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def on_stale(self, archive: str, generation: int, timeout: int) -> None:
        """Count the stale read and pass it on.

        Args:
            archive: The archive key.
            generation: The generation served.
            timeout: The manifest's ``policy.timeout``.
        """
        self.metrics.stale_reads.inc()
        self.inner.on_stale(archive, generation, timeout)


class _ProcessIdentity(Collector):
    """``process{slot, pid}`` = 1 (see ``MountdMetrics.identify_process``)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_process",
            "The server process that answered this scrape: its slot and pid (metrics are per process).",
            labels=("slot", "pid"),
        )
        family.add_metric((str(self.slot), str(os.getpid())), 1)
        yield family


class _RefreshRequests(Collector):
    """``refresh_requests_total{result}`` and ``refresh_replays_total``, read from the hook's counts."""

    def __init__(self, counts: Callable[[], FreshnessCounts]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.counts()
        requests = CounterMetricFamily(
            f"{PREFIX}_refresh_requests",
            "Refresh requests made for stale reads, by result: enqueued, merged (a refresh was already "
            "queued or running), buffered (broker unreachable; kept for replay), failed.",
            labels=("result",),
        )
        for result, field in REFRESH_RESULTS.items():
            requests.add_metric((result,), getattr(counts, field))
        yield requests
        yield CounterMetricFamily(
            f"{PREFIX}_refresh_replays",
            "Buffered refresh requests sent (or merged) later, once the broker was reachable again.",
            value=counts.replayed,
        )


class _CorruptPayloads(Collector):
    """``corrupt_payloads_total``: archive versions whose payload failed its CRC-32
    (``mountd.dav.integrity``)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            f"{PREFIX}_corrupt_payloads",
            "Archive versions found with a payload that does not match its CRC-32 (never served).",
            value=VERDICTS.corrupt_found,
        )


class _SchedulerSummary(Collector):
    """The refresh scheduler's freshness metrics, read from its summary at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], FreshnessSummary] | None = None

    def collect(self) -> Iterator[Any]:
        if self.source is None:
            return
        summary = self.source()
        lag = HistogramMetricFamily(
            f"{PREFIX}_refresh_lag_seconds",
            "Seconds past the previous generation's expiry at which each new generation was committed "
            "(0 when it came before expiry), as seen by this mountd's scheduler.",
        )
        buckets = [(str(bound), count) for bound, count in zip(LAG_BUCKETS, summary.lag_buckets, strict=True)]
        lag.add_metric([], [*buckets, ("+Inf", summary.lag_count)], summary.lag_sum)
        yield lag
        yield GaugeMetricFamily(
            f"{PREFIX}_archives_expired", "Archives with update logic that are expired now.", summary.expired
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_archives_watched",
            "Archives with update logic and a finite TTL the scheduler looks after.",
            summary.archives,
        )
        depth = GaugeMetricFamily(
            f"{PREFIX}_refresh_queue_depth",
            "Proactive refreshes due and waiting for room in the window, and in flight (queued or running).",
            labels=("state",),
        )
        depth.add_metric(("waiting",), summary.waiting)
        depth.add_metric(("in_flight",), summary.in_flight)
        yield depth
        yield GaugeMetricFamily(
            f"{PREFIX}_scheduler_leader",
            "1 when this mountd's scheduler holds the store's lease (asks for refreshes), else 0.",
            int(summary.leader),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_scheduler_requests",
            "Proactive refreshes this mountd's scheduler asked for.",
            value=summary.requested,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_scheduler_walks", "Walks of the whole store by the scheduler.", value=summary.scans
        )
        yield CounterMetricFamily(
            f"{PREFIX}_scheduler_walk_cpu_seconds",
            "CPU seconds (thread time) the scheduler's walks took.",
            value=summary.pass_cpu_seconds,
        )
