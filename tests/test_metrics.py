"""``GET /metrics``: the operations series through the ASGI app, the packs' collectors, and
a real two-worker uvicorn whose every scrape counts both workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.config import STARTUP_FAILURE

from openexec import hookimpl
from openexec.app import create_app
from openexec.plugins import InProcessPlugin, PluginError
from openexec.settings import Settings
from tests.conftest import execute, settings_of
from tests.support.commands import wait_until
from tests.support.processes import ROOT, Uvicorn, clean_environment

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# Every label the service's series carry: none takes a value from a request.
LABELS = {"action", "status", "code", "answer", "le", "state"}


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_counts_executions_replays_refusals_latency_and_commits(client):
    before = scrape(client)
    first = execute(client, "echo", {"m": 1}, nonce="m-1")
    assert first.status_code == 200
    assert execute(client, "echo", {"m": 1}, nonce="m-1").json()["replayed"] is True
    assert execute(client, "probe.refuse", nonce="m-2").json()["status"] == "failed"
    assert execute(client, "no.such", nonce="m-3").status_code == 404
    assert execute(client, "echo", {"m": 2}, nonce="m-1").json()["code"] == "nonce_reused"
    limit = settings_of(client).max_request_bytes
    too_large = client.post(
        "/execute", content=b" " * (limit + 1), headers={"content-type": "application/json"}
    )
    assert too_large.status_code == 413
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    executions = "openexec_executions_total"
    assert grew(executions, action="echo", status="succeeded") == 1  # the replay is not one
    assert grew(executions, action="probe.refuse", status="failed") == 1
    assert grew("openexec_replays_total", action="echo") == 1
    for code in ("unknown_action", "nonce_reused", "request_too_large"):
        assert grew("openexec_refusals_total", code=code) == 1, code
    latency = "openexec_execute_duration_seconds_count"
    assert [grew(latency, answer=kind) for kind in ("executed", "replayed", "refused")] == [
        2,
        1,
        3,
    ]
    assert grew("openexec_execute_duration_seconds_sum", answer="executed") > 0
    # Two executions each reserved and finished: at least four writes, in at least one batch.
    assert grew("openexec_store_commit_batch_size_sum") >= 4
    batches = grew("openexec_store_commit_batch_size_count")
    assert batches >= 1 and grew("openexec_store_commit_duration_seconds_count") == batches
    assert value(after, "openexec_workers") == 1
    # Series exist for every allowed action and status before anything ran.
    assert (executions, (("action", "add"), ("status", "timed_out"))) in after

    labels = {name for _, pairs in after for name, _ in pairs}
    assert labels <= LABELS, labels - LABELS
    actions = {label for _, pairs in after for name, label in pairs if name == "action"}
    assert set(client.app.state.engine.registry.allowed) <= actions  # bound at startup
    values = {label for _, pairs in after for _, label in pairs}
    assert not values & {"m-1", "m-2", "m-3", first.json()["id"], "no.such"}


def test_openmetrics_is_served_when_the_scraper_asks_for_it(client):
    accept = {"accept": "application/openmetrics-text; version=1.0.0"}
    answer = client.get("/metrics", headers=accept)
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert "openexec_executions_total" in answer.text and answer.text.endswith("# EOF\n")


def test_the_ledger_size_and_lag_are_read_from_the_store_at_scrape_time(make_client):
    client = make_client(ledger_interval_s=3600.0)
    client.app.state.ledger.runner.stop()  # after its first round, on the empty store
    for number in range(3):
        assert execute(client, "echo", {"n": number}, nonce=f"l-{number}").status_code == 200
    waiting = scrape(client)
    assert value(waiting, "openexec_ledger_size") == 0
    assert 0 < value(waiting, "openexec_ledger_integration_lag_seconds") < 60
    assert client.app.state.ledger.integrator.integrate() == 3
    integrated = scrape(client)
    assert value(integrated, "openexec_ledger_size") == 3
    assert value(integrated, "openexec_ledger_integration_lag_seconds") == 0


def test_without_the_ledger_there_are_no_ledger_series(make_client):
    samples = scrape(make_client(ledger=False))
    assert not any(name.startswith("openexec_ledger") for name, _ in samples)


def test_metrics_off_removes_the_endpoint(make_client):
    assert "/metrics" in make_client().get("/openapi.json").json()["paths"]
    client = make_client(metrics=False)
    answer = client.get("/metrics")
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert execute(client, "echo", nonce="off").status_code == 200  # and nothing else changes


class QueueDepth:
    """A pack's collector: read at each scrape."""

    def __init__(self) -> None:
        self.depth = 0

    def collect(self):
        yield GaugeMetricFamily("openexec_queue_depth", "A pack's queue.", value=self.depth)


class CollectingPack:
    def __init__(self, collectors) -> None:
        self.collectors = collectors
        self.calls = 0

    @hookimpl
    def register_collectors(self):
        self.calls += 1
        if isinstance(self.collectors, Exception):
            raise self.collectors
        return self.collectors


def app_with(tmp_path: Path, pack: CollectingPack, **settings) -> TestClient:
    database = f"sqlite:///{tmp_path / 'pack.db'}"
    plugin = InProcessPlugin(pack, "collecting-pack")
    return TestClient(create_app(Settings(db_url=database, **settings), [plugin]))


def test_a_packs_collectors_are_read_at_each_scrape(tmp_path):
    depth = QueueDepth()
    pack = CollectingPack([depth])
    with app_with(tmp_path, pack) as client:
        assert value(scrape(client), "openexec_queue_depth") == 0
        depth.depth = 7
        assert value(scrape(client), "openexec_queue_depth") == 7
    assert pack.calls == 1  # once, when the app was built


@pytest.mark.parametrize(
    "collectors, message",
    [
        (RuntimeError("no queue here"), "failed in register_collectors: RuntimeError"),
        ([object()], "must return a list of collectors"),
    ],
)
def test_a_pack_whose_collectors_fail_stops_startup_naming_it(tmp_path, collectors, message):
    with pytest.raises(PluginError, match=message) as error:
        app_with(tmp_path, CollectingPack(collectors))
    assert "'collecting-pack'" in str(error.value)
    # With metrics off the hook is never called.
    with app_with(tmp_path, CollectingPack(collectors), metrics=False) as client:
        assert client.get("/metrics").status_code == 404


def test_a_metrics_directory_others_can_write_stops_startup(tmp_path):
    """Another user could plant counts in a shared one: the service's own must be 0700."""
    temporary = tmp_path / "tmp"
    (temporary / f"openexec-metrics-{os.getuid()}").mkdir(mode=0o777, parents=True)
    (temporary / f"openexec-metrics-{os.getuid()}").chmod(0o777)
    env = {"OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "TMPDIR": str(temporary)}
    finished = subprocess.run(
        [sys.executable, "-c", "import main"],
        cwd=ROOT,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == STARTUP_FAILURE, finished.stderr
    [line] = [line for line in finished.stderr.splitlines() if "startup failed" in line]
    assert line.startswith("openexec: startup failed: PROMETHEUS_MULTIPROC_DIR: ")
    assert "is not a directory private to this user" in line


class InfoUvicorn(Uvicorn):
    """A server whose execution events (INFO) are logged: they name the worker's pid."""

    log_level = "info"


def events(log: Path, kind: str) -> list[dict]:
    """The JSON lines of ``log`` that are ``execution`` events (``kind``) or access lines to
    ``kind`` (a path)."""
    found = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):  # the supervisor's own lines keep uvicorn's format
            continue
        entry = json.loads(line)
        if entry.get("event") == kind or entry.get("path") == kind:
            found.append(entry)
    return found


EXECUTIONS = "openexec_executions_total"
BUMPED = {"action": "probe.bump", "status": "succeeded"}


def serving(server: Uvicorn, workers: int) -> Samples | None:
    """A scrape, once it reports ``workers`` live workers."""
    samples = parse(httpx.get(f"{server.url}/metrics", timeout=30).text)
    return samples if value(samples, "openexec_workers") == workers else None


def test_every_scrape_of_a_two_worker_server_counts_both_workers(tmp_path):
    temporary = tmp_path / "tmp"  # where the service makes its metrics directory
    temporary.mkdir()
    log = tmp_path / "uvicorn.log"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        "OPENEXEC_LOG_FORMAT": "json",
        "TMPDIR": str(temporary),
    }
    server = InfoUvicorn("tests.support.server:app", env, workers=2, log=log)
    try:
        # Requests on connections of their own, until both workers have run some.
        sent = 0
        deadline = time.monotonic() + 60
        while len({event["pid"] for event in events(log, "execution")}) < 2:
            assert time.monotonic() < deadline, "every request landed on one worker"
            body = {"action": "probe.bump", "payload": {"note": "w"}, "nonce": f"w-{sent}"}
            assert httpx.post(f"{server.url}/execute", json=body, timeout=30).status_code == 200
            sent += 1
        wait_until(lambda: len(events(log, "execution")) == sent)
        workers = {event["pid"] for event in events(log, "execution")}

        # Scrapes on fresh connections, until each worker has answered one: all count all.
        counted = []
        while {entry["pid"] for entry in events(log, "/metrics")} != workers:
            assert time.monotonic() < deadline, "every scrape landed on one worker"
            counted.append(parse(httpx.get(f"{server.url}/metrics", timeout=30).text))
        for samples in counted:
            assert value(samples, EXECUTIONS, **BUMPED) == sent
            assert value(samples, "openexec_workers") == 2

        # A worker killed and replaced: its counts stay, its live gauge goes.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)

        def replaced() -> bool:
            started = [line for line in log.read_text().splitlines() if "Started server" in line]
            return len(started) == 3

        wait_until(replaced, timeout=60)
        after = wait_until(lambda: serving(server, workers=2), timeout=60)
        assert value(after, EXECUTIONS, **BUMPED) == sent
    finally:
        server.stop()
    metrics_home = temporary / f"openexec-metrics-{os.getuid()}"
    [first_run] = metrics_home.iterdir()

    # The next server run starts from zero, and deletes the ended run's directory.
    again = InfoUvicorn("tests.support.server:app", env, workers=2, log=tmp_path / "again.log")
    try:
        fresh = wait_until(lambda: serving(again, workers=2), timeout=60)
        assert value(fresh, EXECUTIONS, **BUMPED) == 0
        [second_run] = metrics_home.iterdir()
        assert second_run != first_run
    finally:
        again.stop()
