"""Exactly-once under real concurrency: many identical requests against a multi-worker uvicorn."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.processes import Uvicorn

REQUESTS = 60


@pytest.fixture
def server(tmp_path: Path):
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "files"),
    }
    process = Uvicorn("tests.support.server:app", env, workers=2, log=tmp_path / "uvicorn.log")
    yield process, tmp_path
    process.stop()


def fire(url: str, body: dict, count: int) -> list[httpx.Response]:
    """Send ``count`` requests at once from as many threads, released together."""
    limits = httpx.Limits(max_connections=count)
    with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: client.post(f"{url}/execute", json=body), range(count)))


def test_concurrent_identical_requests_run_once_across_workers(server):
    process, directory = server
    body = {"action": "probe.bump", "payload": {"note": "once", "hold_s": 0.3}, "nonce": "stampede"}
    responses = fire(process.url, body, REQUESTS)

    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 409}, [
        r.text for r in responses if r.status_code not in (200, 409)
    ]
    successes = [r.json() for r in responses if r.status_code == 200]
    conflicts = [r.json() for r in responses if r.status_code == 409]
    assert successes, "no request succeeded"
    assert all(c["code"] == "execution_in_progress" for c in conflicts)
    assert {s["id"] for s in successes} == {successes[0]["id"]}
    assert {s["result"]["runs"] for s in successes} == {1}
    assert sum(not s["replayed"] for s in successes) <= 1

    journal = (directory / "files" / "journal.txt").read_text().splitlines()
    assert len(journal) == 1  # the side effect happened exactly once
    with sqlite3.connect(directory / "openexec.db") as connection:
        rows = connection.execute("SELECT id, status FROM executions").fetchall()
    assert rows == [(successes[0]["id"], "succeeded")]

    replay = httpx.post(f"{process.url}/execute", json=body, timeout=30).json()
    assert replay["replayed"] is True and replay["id"] == successes[0]["id"]


def test_concurrent_distinct_nonces_each_run_once(server):
    process, directory = server
    bodies = [
        {"action": "probe.bump", "payload": {"note": f"n{i % 10}"}, "nonce": f"nonce-{i % 10}"}
        for i in range(REQUESTS)
    ]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(REQUESTS) as pool:
        responses = list(pool.map(lambda b: client.post(f"{process.url}/execute", json=b), bodies))
    assert {r.status_code for r in responses} <= {200, 409}
    journal = (directory / "files" / "journal.txt").read_text().splitlines()
    assert sorted(line.split()[1] for line in journal) == [f"n{i}" for i in range(10)]
    with sqlite3.connect(directory / "openexec.db") as connection:
        assert connection.execute("SELECT count(*) FROM executions").fetchone() == (10,)
