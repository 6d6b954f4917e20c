"""Several instances on one PostgreSQL database: exactly-once across them, crashes, outages.

Every test here starts real uvicorn processes against the real PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.receipts import private_key_pem
from tests.support.processes import Uvicorn

SERVER = "tests.support.server:app"


@pytest.fixture
def deployment(tmp_path: Path, postgres_database):
    """Shared configuration for instances of one deployment: one database, one receipt key,
    one files root. Yields a function that starts an instance; all are stopped afterwards."""
    key = tmp_path / "receipt-key.pem"
    key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    env = {
        "OPENEXEC_DB_URL": postgres_database(),
        "OPENEXEC_RECEIPT_KEY": str(key),
        "OPENEXEC_PROBE_DIR": str(tmp_path / "files"),
    }
    started: list[Uvicorn] = []

    def start(workers: int = 2, **extra: str) -> Uvicorn:
        log = tmp_path / f"instance-{len(started)}.log"
        instance = Uvicorn(SERVER, {**env, **extra}, workers=workers, log=log)
        started.append(instance)
        return instance

    start.env = env
    yield start
    for instance in started:
        instance.stop()


def rows(db_url: str) -> list[dict]:
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    with (
        psycopg.connect(url) as connection,
        connection.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        return cur.execute("SELECT * FROM executions").fetchall()


def journal(env: dict) -> list[str]:
    path = Path(env["OPENEXEC_PROBE_DIR"]) / "journal.txt"
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition, timeout: float = 30, what: str = "condition") -> None:
    """Poll an observable state change (a server answering differently), bounded in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_two_instances_keep_exactly_once_and_single_use(deployment, approver):
    first = deployment(CLAWSHIELD_PUBLIC_KEY=approver.public_key_pem, OPENEXEC_MODE="clawshield")
    second = deployment(CLAWSHIELD_PUBLIC_KEY=approver.public_key_pem, OPENEXEC_MODE="clawshield")
    requests = []
    for i in range(20):
        payload = {"note": f"n{i}", "hold_s": 0.05}
        artifact = approver.v1("probe.bump", payload)
        for k in range(10):
            nonce = f"nonce-{i}" if k < 8 else f"thief-{i}-{k}"  # two try the approval elsewhere
            body = {
                "action": "probe.bump",
                "payload": payload,
                "nonce": nonce,
                "approval_artifact": artifact,
            }
            requests.append((first if k % 2 else second, body))

    limits = httpx.Limits(max_connections=len(requests))
    with (
        httpx.Client(timeout=60, limits=limits) as client,
        ThreadPoolExecutor(len(requests)) as pool,
    ):
        responses = list(
            pool.map(lambda r: client.post(f"{r[0].url}/execute", json=r[1]), requests)
        )

    assert len(requests) >= 200
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 403, 409}, codes
    assert {r.json()["code"] for r in responses if r.status_code == 403} <= {
        "approval_already_used"
    }
    stored = rows(deployment.env["OPENEXEC_DB_URL"])
    assert len(stored) == 20  # one execution per approval
    assert Counter(row["approval_id"] for row in stored).most_common(1)[0][1] == 1
    assert len(journal(deployment.env)) == 20  # each side effect exactly once
    by_nonce = {row["nonce"]: row for row in stored}
    for (_, body), response in zip(requests, responses, strict=True):
        if response.status_code == 200:  # every answer agrees with the stored row
            answer = response.json()
            row = by_nonce[body["nonce"]]
            assert (answer["id"], answer["status"], answer["receipt"]) == (
                row["id"],
                row["status"],
                row["receipt"],
            )
    # The instances share a receipt key: each verifies what the other signed.
    some = next(r.json() for r in responses if r.status_code == 200)
    for instance in (first, second):
        verdict = httpx.post(
            f"{instance.url}/receipts/verify", json={"envelope": some["receipt_envelope"]}
        )
        assert verdict.json()["valid"] is True


def test_killed_instance_leaves_an_indeterminate_execution_that_never_reruns(deployment):
    # Long enough that the kill always lands before the time limit could record an outcome.
    short_lease = {"OPENEXEC_ACTION_TIMEOUT_S": "10", "OPENEXEC_LEASE_GRACE_S": "1"}
    doomed = deployment(workers=1, **short_lease)
    survivor = deployment(workers=1, **short_lease)
    body = {"action": "probe.bump", "payload": {"note": "doomed", "hold_s": 30}, "nonce": "crash-1"}

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the instance dies under this request
            httpx.post(f"{doomed.url}/execute", json=body, timeout=60)

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: len(journal(deployment.env)) == 1, what="the handler to start")
    doomed.kill()
    sender.join()
    [row] = rows(deployment.env["OPENEXEC_DB_URL"])
    assert row["status"] == "running"

    # The other instance answers 409 until the lease passes, then settles the execution.
    while True:
        response = httpx.post(f"{survivor.url}/execute", json=body, timeout=30)
        if response.status_code != 409:
            break
        assert response.json()["code"] == "execution_in_progress"
        time.sleep(float(response.headers["Retry-After"]))  # as the API asks a client to
    assert response.status_code == 200
    settled = response.json()
    assert settled["status"] == "indeterminate" and settled["replayed"] is True
    assert settled["error"]["code"] == "indeterminate"
    verdict = httpx.post(
        f"{survivor.url}/receipts/verify", json={"envelope": settled["receipt_envelope"]}
    )
    assert verdict.json() == {
        "valid": True,
        "reason": None,
        "exec_id": row["id"],
        "status": "indeterminate",
        "mode": "demo",
        "approval": None,
    }

    restarted = deployment(workers=1, **short_lease)
    again = httpx.post(f"{restarted.url}/execute", json=body, timeout=30).json()
    assert again["receipt"] == settled["receipt"] and again["status"] == "indeterminate"
    assert journal(deployment.env) == [f"{row['id']} doomed"]  # the handler never ran again


def pg_ctl(command: str) -> None:
    version, cluster = os.environ["OPENEXEC_TEST_PG_CLUSTER"].split()
    subprocess.run(
        [
            "pg_ctlcluster",
            version,
            cluster,
            command,
            *(["-m", "fast"] if command == "stop" else []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_database_outage_refuses_work_and_recovers_without_restart(deployment):
    instance = deployment(workers=1)
    responses: dict[str, httpx.Response] = {}
    failures: list[Exception] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:
            for i in itertools.count():
                if stop.is_set():
                    return
                nonce = f"flow-{i}"
                body = {"action": "probe.bump", "payload": {"note": nonce}, "nonce": nonce}
                try:
                    responses[nonce] = client.post(f"{instance.url}/execute", json=body)
                except httpx.HTTPError as exc:  # the service must answer, outage or not
                    failures.append(exc)
                    return

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: failures or len(responses) >= 20, what="traffic to flow")
        pg_ctl("stop")
        try:
            wait_for(
                lambda: httpx.get(f"{instance.url}/ready").status_code == 503, what="/ready 503"
            )
            assert httpx.get(f"{instance.url}/ready").json()["ready"] is False
            body = {"action": "probe.bump", "payload": {"note": "outage"}, "nonce": "during-outage"}
            refused = httpx.post(f"{instance.url}/execute", json=body, timeout=30)
            assert refused.status_code == 503 and refused.json()["code"] == "storage_unavailable"
            wait_for(
                lambda: failures or any(r.status_code == 503 for r in list(responses.values())),
                what="the flowing traffic to meet the outage",
            )
            served_before = len(responses)
        finally:
            pg_ctl("start")
        wait_for(lambda: httpx.get(f"{instance.url}/ready").status_code == 200, what="/ready 200")
        recovered = lambda: sum(  # noqa: E731
            1
            for n, r in list(responses.items())
            if int(n.split("-")[1]) >= served_before and r.status_code == 200
        )
        wait_for(lambda: failures or recovered() >= 20, what="executions to succeed again")
    finally:
        stop.set()
        sender.join()
    assert failures == []

    stored = {row["nonce"]: row for row in rows(deployment.env["OPENEXEC_DB_URL"])}
    ran = {line.split()[1] for line in journal(deployment.env)}
    assert "during-outage" not in ran and "during-outage" not in stored
    assert ran <= set(stored)  # no execution that took effect is missing from the store
    codes = Counter()
    for nonce, response in responses.items():
        codes[response.status_code] += 1
        if response.status_code == 200:
            assert stored[nonce]["status"] == response.json()["status"] == "succeeded"
            assert stored[nonce]["id"] == response.json()["id"]
        else:
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "storage_unavailable"
            if "outcome" not in response.json():  # refused before reservation: nothing ran
                assert nonce not in ran
    assert codes[200] >= 40 and codes[503] >= 1, codes  # traffic ran through the outage
