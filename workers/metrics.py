"""Worker metrics: what refresh jobs did, recorded in the pool processes and read by the main process.

Celery's prefork pool runs jobs in child processes, while the endpoint that Prometheus scrapes
(``workers.metrics_server``) lives in the worker's main process. The numbers are aggregated with
prometheus_client's *multiprocess mode*: every process writes its values to small memory-mapped files in
one directory (``PROMETHEUS_MULTIPROC_DIR``), and a scrape merges the files. We chose it over a hand-made
aggregation because it already handles what is hard here: values survive the death of the pool process that
wrote them (counters and histograms keep their totals), a fork resets the child's files (a pool process
never writes into its parent's), and gauges have per-metric merge rules (``livesum`` for jobs in progress,
``mostrecent`` for the latest sandbox report). Its price is a process-wide switch, which
``enable_multiprocess`` flips once in the worker's main process before the pool forks:

* the directory is ``<cache_dir>/worker-metrics/<host>-<pid>``, emptied at start (a previous process with
  the same pid must not leak its counts) and removed at exit; at start, directories of this host whose
  process is gone (a worker that was SIGKILLed) are removed too; other hosts' directories are never touched
  (a shared cache volume's other containers have other pid namespaces);
* ``PROMETHEUS_MULTIPROC_DIR`` is set in this process's environment (prometheus_client opens its files
  there, and the pool processes inherit it); this is a write for a library, not configuration we read;
* the value class prometheus_client chose at import is replaced by the multiprocess one, so it does not
  matter what imported prometheus_client first.

When the endpoint is off nothing of this happens and the instruments are ordinary in-process values
nobody reads (recording costs a lock and an addition).

Metrics (prefix ``sync_worker_``): ``job_duration_seconds{outcome}`` (histogram, wall time of one delivery
of a job), ``jobs_total{outcome,code}`` (``code`` is the stable error code of a failed job, ``""``
otherwise), ``jobs_in_progress``, ``sandbox_layers_active{layer}`` (1/0 from the latest ``SandboxReport``).

Invariants:
    * Each delivery of a job is recorded exactly once, also when it raises (outcome ``error``); a job that
      is retried is counted once per attempt, under the outcome of that attempt.
    * Label values are bounded: outcomes are ``OUTCOMES``, codes are our stable error codes, layers are
      ``workers.confine.Layer`` values.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from broker.contract import RefreshStatus
from sync_format.errors import SyncError

log = logging.getLogger(__name__)

#: Prefix of every metric name a worker exports.
PREFIX = "sync_worker"
#: Environment variable through which prometheus_client finds its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Directory under the cache directory that holds one multiprocess directory per worker process.
METRICS_SUBDIR = "worker-metrics"
#: Job duration buckets in seconds: an archive without update logic takes milliseconds, a guest at most its
#: budget (``MAX_GUEST_TIMEOUT``, 600 s) plus the margins around it.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
#: Outcomes of a delivery: a ``RefreshOutcome`` status, ``skipped`` (another job holds the archive),
#: ``rejected`` (the request could not be decoded) or ``error`` (the task raised; the code names what).
OUTCOMES = frozenset({*(s.value for s in RefreshStatus if s is not RefreshStatus.RUNNING), "error"})
#: Code of a job that raised something other than a ``SyncError``.
INTERNAL_ERROR = "internal"
#: Gauge files of live-only modes carry the writer's pid in their name: ``gauge_livesum_<pid>.db``.
_LIVE_PREFIX = "gauge_live"


class JobMetrics:
    """The instruments a worker records its jobs in (one set per process; see the module docstring)."""

    def __init__(self) -> None:
        self.duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Wall time of one delivery of a refresh job, by outcome.",
            ("outcome",),
            buckets=JOB_BUCKETS,
            registry=None,
        )
        self.jobs = Counter(
            f"{PREFIX}_jobs",
            "Deliveries of refresh jobs by outcome and error code (empty unless the job failed).",
            ("outcome", "code"),
            registry=None,
        )
        self.in_progress = Gauge(
            f"{PREFIX}_jobs_in_progress",
            "Refresh jobs running now.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.layers = Gauge(
            f"{PREFIX}_sandbox_layers_active",
            "Whether each confinement layer was active in the latest sandboxed guest (1) or not (0).",
            ("layer",),
            registry=None,
            multiprocess_mode="mostrecent",
        )

    @contextmanager
    def job(self) -> Iterator[JobRecord]:
        """Track one delivery: in progress while the block runs, recorded when it ends.

        Yields:
            The record to call ``done`` on; a block that raises before is recorded as ``error``.
        """
        record = JobRecord(self, time.monotonic())
        self.in_progress.inc()
        try:
            yield record
        except BaseException as exc:
            if not record.recorded:
                code = exc.code if isinstance(exc, SyncError) else INTERNAL_ERROR
                record.done("error", code)
            raise
        finally:
            self.in_progress.dec()
            if not record.recorded:
                record.done("error", INTERNAL_ERROR)

    def sandbox_report(self, report: dict[str, Any] | None) -> None:
        """Remember which layers the latest sandbox had.

        Args:
            report: ``SandboxReport.to_json()`` of the job's child, or None when no guest ran.
        """
        if not report:
            return
        for item in report.get("layers", ()):
            self.layers.labels(layer=str(item["layer"])).set(1 if item.get("active") else 0)


class JobRecord:
    """The outcome of one delivery, recorded once."""

    def __init__(self, metrics: JobMetrics, started: float) -> None:
        self.metrics = metrics
        self.started = started
        self.recorded = False

    def done(self, outcome: str, code: str | None = None, sandbox: dict[str, Any] | None = None) -> None:
        """Record the delivery's outcome (later calls are ignored).

        Args:
            outcome: One of ``OUTCOMES``.
            code: The stable error code of a failure; None or empty otherwise.
            sandbox: The sandbox report of the guest's child, if one ran.
        """
        if self.recorded:
            return
        self.recorded = True
        label = outcome if outcome in OUTCOMES else "error"
        self.metrics.jobs.labels(outcome=label, code=code or "").inc()
        self.metrics.duration.labels(outcome=label).observe(time.monotonic() - self.started)
        self.metrics.sandbox_report(sandbox)


def metrics_directory(cache_dir: Path) -> Path:
    """This worker process's multiprocess directory.

    Args:
        cache_dir: ``Settings.cache_dir``.

    Returns:
        ``<cache_dir>/worker-metrics/<host>-<pid>``.
    """
    return cache_dir / METRICS_SUBDIR / f"{socket.gethostname()}-{os.getpid()}"


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the pool processes it forks later) to multiprocess metrics in ``directory``.

    Args:
        directory: From ``metrics_directory``; emptied (created when missing).
    """
    prefix = directory.name.rpartition("-")[0] + "-"
    if directory.parent.is_dir():
        for old in directory.parent.iterdir():
            pid = old.name.removeprefix(prefix)
            if old.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # untyped library
    log.info("worker metrics enabled directory=%s", directory)


def disable_multiprocess(directory: Path) -> None:
    """Remove ``directory`` at exit (its counts die with the worker, as a process's counters do).

    Args:
        directory: The directory ``enable_multiprocess`` set up.
    """
    shutil.rmtree(directory, ignore_errors=True)


def exposition(directory: Path) -> bytes:
    """Merge every process's values in ``directory`` into the Prometheus text format.

    Live-only gauges of pool processes that have exited are dropped first (``mark_process_dead``), so a
    pool process killed in the middle of a job does not count as running forever.

    Args:
        directory: The multiprocess directory.

    Returns:
        The page.
    """
    for path in directory.glob(f"{_LIVE_PREFIX}*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    registry.register(_WrittenFiles(directory))
    return generate_latest(registry)


#: Times a merge is tried again when a process's file changed under it (created empty, or removed).
MERGE_ATTEMPTS = 3


class _WrittenFiles:
    """prometheus_client's multiprocess merge over the files that have been written to.

    A pool process creates its file empty and sizes it a moment later; ``MultiProcessCollector`` reads every
    ``*.db`` file it finds and fails on an empty one (``struct.error``), and a file removed by
    ``mark_process_dead`` between listing and reading fails too. Either made ``/metrics`` drop the connection
    without an answer. Empty files are skipped (they hold no value yet) and a merge that met a file changing
    under it is tried again.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Any:
        for attempt in range(MERGE_ATTEMPTS):
            files = []
            for path in sorted(self._directory.glob("*.db")):
                try:
                    if path.stat().st_size > 0:
                        files.append(str(path))
                except FileNotFoundError:
                    continue
            try:
                return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except (FileNotFoundError, struct.error):
                if attempt == MERGE_ATTEMPTS - 1:
                    raise
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
