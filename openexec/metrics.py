"""``GET /metrics``: Prometheus metrics (prometheus-client) that one scrape of any worker
reports for every worker of the server.

Each worker counts into memory-mapped files in one directory, prometheus-client's
multiprocess mode, and a scrape merges them all. Values that are not a worker's own (the
ledger's size and lag, the packs' figures such as the exec pack's sessions) are read at scrape
time from where they live, by whichever worker serves the scrape, so no worker reports them
twice.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when the operator sets it (the operator then
empties it before each start, as prometheus-client asks). Otherwise it is made per server
run, ``<temp dir>/openexec-metrics-<uid>/<server pid>-<its start time>``, the server being
uvicorn's supervisor under ``--workers`` (the workers' parent) or the process itself: every
worker of one server finds the same directory, a new server run starts from zero (counters
reset, as Prometheus expects of a restarted target), and the directories of servers that have
ended are deleted when the next one starts. A worker that dies and is replaced keeps its counts
(its files stay); its live gauge is dropped at the next scrape (``mark_process_dead``).

Label values are bounded: actions come from the frozen registry, statuses and problem codes
from the code, never from a request (no ids, nonces or tenants).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from openexec.engine import ExecutionEvent
from openexec.plugins import Registry
from openexec.settings import ConfigError
from openexec.store.tables import EXECUTIONS, LedgerState

log = logging.getLogger("openexec.metrics")

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
STATUSES = ("succeeded", "failed", "timed_out", "indeterminate")
ANSWERS = ("executed", "replayed", "refused")  # the latency histogram's label
# /execute answers in a millisecond or two; a handler may take up to its time limit (30 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # the writer's MAX_BATCH is 256
SERVER_DIRECTORY = re.compile(r"^(\d+)-(\d*)$")
LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


class Series:
    """The metrics the workers count, one set per process (their values live in the
    multiprocess files, keyed by name and labels, so two sets in one process would overwrite
    each other's counts)."""

    def __init__(self) -> None:
        self.executions = Counter(
            "openexec_executions",
            "Executions this service ran, by action and final status, counted as each "
            "outcome is recorded.",
            ["action", "status"],
            registry=None,
        )
        self.replays = Counter(
            "openexec_replays",
            "Answers that replayed a stored execution, by action.",
            ["action"],
            registry=None,
        )
        self.refusals = Counter(
            "openexec_refusals",
            "POST /execute answers that refused the request, by problem code.",
            ["code"],
            registry=None,
        )
        self.execute_seconds = Histogram(
            "openexec_execute_duration_seconds",
            "Time POST /execute took to answer, by kind of answer.",
            ["answer"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.commit_seconds = Histogram(
            "openexec_store_commit_duration_seconds",
            "Time from a group commit's start to its writes being durable (or failed).",
            buckets=COMMIT_BUCKETS,
            registry=None,
        )
        self.batch_size = Histogram(
            "openexec_store_commit_batch_size",
            "Writes committed together in one group commit.",
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self.workers = Gauge(
            "openexec_workers",
            "Worker processes serving now.",
            multiprocess_mode="livesum",  # each live worker adds its 1; a dead one's is dropped
            registry=None,
        )


@cache
def series() -> Series:
    """This process's metrics, made once, after multiprocess mode is on."""
    _enable_multiprocess()
    return Series()


def metrics_directory() -> Path:
    """Where this server's workers keep their counts (module docstring)."""
    configured = os.environ.get(DIRECTORY_VARIABLE)
    if configured:
        directory = Path(configured)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory
    base = Path(tempfile.gettempdir()) / f"openexec-metrics-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    found = base.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigError(
            DIRECTORY_VARIABLE,
            f"{base} is not a directory private to this user (0700); remove it, or set "
            f"{DIRECTORY_VARIABLE} to a directory the service's workers share",
        )
    parent = multiprocessing.parent_process()  # uvicorn's supervisor spawns its workers
    server = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    directory = base / f"{server}-{_start_time(server)}"
    directory.mkdir(mode=0o700, exist_ok=True)
    _delete_ended_servers(base)
    return directory


def _start_time(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, /proc), which tells it from a later
    process given the same pid; empty when it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _delete_ended_servers(base: Path) -> None:
    for entry in base.iterdir():
        match = SERVER_DIRECTORY.match(entry.name)
        if match and _start_time(int(match[1])) != match[2]:
            shutil.rmtree(entry, ignore_errors=True)  # another worker may be deleting it too


def _enable_multiprocess() -> None:
    """Make every metric made from now on count into the multiprocess directory.

    prometheus-client picks its value class when it is imported, from the environment; the
    service decides the directory later, at startup, so it sets the variable and asks the
    library for its multiprocess value class again."""
    os.environ[DIRECTORY_VARIABLE] = str(metrics_directory())
    if not values.ValueClass._multiprocess:
        values.ValueClass = values.get_value_class()


class ServiceMetrics:
    """One app's view of the metrics: its actions' series bound once (so an answer costs
    dictionary lookups and memory-mapped writes, no label formatting), and the collectors a
    scrape runs."""

    def __init__(self, plugins: Registry) -> None:
        self.series = series()
        self.directory = Path(os.environ[DIRECTORY_VARIABLE])
        actions = sorted(plugins.allowed)
        self._executions = {
            (action, status): self.series.executions.labels(action, status)
            for action in actions
            for status in STATUSES
        }
        self._replays = {action: self.series.replays.labels(action) for action in actions}
        self._refusals: dict[str, Any] = {}
        self._latency = {answer: self.series.execute_seconds.labels(answer) for answer in ANSWERS}
        self.collectors = CollectorRegistry()
        MultiProcessCollector(self.collectors, path=str(self.directory))
        for collector in plugins.collectors():
            self.collectors.register(collector)

    def read_ledger(self, database: Engine) -> None:
        """Report the witness ledger's figures, read from the store's database."""
        self.collectors.register(LedgerCollector(database))

    def observe(self, event: ExecutionEvent) -> None:
        """Count one /execute answer."""
        if event.code is not None:
            refusals = self._refusals.get(event.code)
            if refusals is None:  # problem codes are the code's own: a bounded set
                refusals = self._refusals[event.code] = self.series.refusals.labels(event.code)
            refusals.inc()
            self._latency["refused"].observe(event.duration_s)
            return
        if event.replayed:
            self._replays[event.action].inc()
            self._latency["replayed"].observe(event.duration_s)
        else:
            self._latency["executed"].observe(event.duration_s)
        if not event.replayed or event.settled:
            self._executions[event.action, event.status].inc()

    def observe_commit(self, writes: int, seconds: float) -> None:
        """Count one group commit (the store's writer calls it as each batch settles)."""
        self.series.batch_size.observe(writes)
        self.series.commit_seconds.observe(seconds)

    def worker_started(self) -> None:
        self.series.workers.set(1)

    def worker_stopped(self) -> None:
        self.series.workers.set(0)

    def scrape(self, accept: str | None) -> Response:
        """Every worker's counts and the scrape-time collectors, in the format asked for."""
        self._forget_dead_workers()
        encode, content_type = choose_encoder(accept or "")
        return Response(encode(self.collectors), media_type=content_type)

    def _forget_dead_workers(self) -> None:
        """Drop the live gauges of workers that are gone (uvicorn has no hook that says)."""
        pids = {
            int(match[1])
            for name in os.listdir(self.directory)
            if (match := LIVE_GAUGE_FILE.match(name))
        }
        for pid in pids:
            if not _running(pid):
                mark_process_dead(pid, str(self.directory))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now: alive, not ours to judge
        return True
    return True


class LedgerCollector:
    """The ledger's size and integration lag, read from the database at scrape time (the
    integrator runs in one worker of one instance; every instance reads the same figures)."""

    SIZE = select(LedgerState.__table__.c.size).where(LedgerState.__table__.c.id == 1)
    # The integrator's queue, as its partial index holds it: the oldest start is one index read.
    OLDEST_PENDING = select(func.min(EXECUTIONS.c.started_at)).where(
        EXECUTIONS.c.ledger_index.is_(None), EXECUTIONS.c.status != "running"
    )

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        try:
            with self.engine.connect() as connection:
                size = connection.execute(self.SIZE).scalar_one_or_none()
                oldest = connection.execute(self.OLDEST_PENDING).scalar_one_or_none()
        except SQLAlchemyError as exc:  # the database is down: the scrape still answers
            log.warning("metrics: the ledger's figures are unavailable: %s", exc.__class__.__name__)
            return
        lag = 0.0
        if oldest is not None:
            started = datetime.fromisoformat(oldest)
            lag = max(0.0, (datetime.now(UTC) - started).total_seconds())
        yield GaugeMetricFamily(
            "openexec_ledger_size", "Entries in the witness ledger.", value=size or 0
        )
        yield GaugeMetricFamily(
            "openexec_ledger_integration_lag_seconds",
            "Seconds since the oldest final execution not yet in the ledger started (0 when "
            "none waits).",
            value=lag,
        )


def install_metrics_route(app: FastAPI, metrics: ServiceMetrics) -> None:
    """``GET /metrics``; a sync route, so the scrape-time reads run on a worker thread."""

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
    )
    def scrape(request: Request) -> Response:
        return metrics.scrape(request.headers.get("accept"))
