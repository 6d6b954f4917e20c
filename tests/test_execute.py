"""Execution semantics through the ASGI app: run once, replay, conflicts, failures, receipts."""

from __future__ import annotations

import sqlite3
import threading
import time

import openexec_echo
import pytest
from sqlalchemy import event

from openexec.signing import canonical_json, sha256_hex
from tests.conftest import (
    PROBE,
    as_replay,
    execute,
    journal,
    reserve_rows,
    running_row,
    settings_of,
    stored_rows,
)
from tests.support import probe_pack


def test_quickstart_runs_once_and_replays_identically(client):
    first = execute(client, "echo", {"msg": "hello"}, nonce="unique-1")
    assert first.status_code == 200
    body = first.json()
    assert body["result"] == {"echo": {"msg": "hello"}}
    assert body["status"] == "succeeded" and body["error"] is None and body["approved"] is True
    assert body["replayed"] is False and body["nonce"] == "unique-1" and body["tenant_id"] is None
    expected_hash = sha256_hex(canonical_json({"action": "echo", "payload": {"msg": "hello"}}))
    assert body["request_sha256"] == expected_hash
    assert len(body["receipt"]) == 64 and body["receipt_envelope"]["signatures"]

    again = execute(client, "echo", {"msg": "hello"}, nonce="unique-1")
    assert again.status_code == 200
    assert as_replay(again.json()) == {**body, "replayed": True}
    assert len(stored_rows(client)) == 1


def test_replay_never_runs_the_handler_again(client):
    first = execute(client, "probe.bump", {"note": "once"}, nonce="side-effect")
    second = execute(client, "probe.bump", {"note": "once"}, nonce="side-effect")
    assert first.json()["result"] == {"runs": 1}
    assert second.json()["replayed"] is True and second.json()["result"] == {"runs": 1}
    assert len(journal(client)) == 1


def test_same_nonce_different_request_is_refused(client):
    execute(client, "echo", {"msg": "hello"}, nonce="unique-1")
    for action, payload in [("echo", {"msg": "bye"}), ("add", {"a": 1, "b": 2})]:
        response = execute(client, action, payload, nonce="unique-1")
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "nonce_reused"
    assert len(stored_rows(client)) == 1


def test_key_order_does_not_change_request_identity(client):
    first = client.post(
        "/execute",
        content=b'{"action":"echo","payload":{"a":1,"b":2},"nonce":"k"}',
        headers={"content-type": "application/json"},
    )
    second = client.post(
        "/execute",
        content=b'{"nonce":"k","payload":{"b":2,"a":1},"action":"echo"}',
        headers={"content-type": "application/json"},
    )
    assert second.json()["replayed"] is True
    assert second.json()["id"] == first.json()["id"]


def test_action_error_is_recorded_as_failed_with_receipt(client):
    response = execute(client, "probe.refuse", nonce="r-1")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed" and body["result"] is None
    assert body["error"] == {"code": "refused", "message": "The probe refuses politely."}
    verdict = client.post(
        "/receipts/verify", json={"exec_id": body["id"], "receipt": body["receipt"], "result": None}
    ).json()
    signed = {"exec_id": body["id"], "status": "failed", "mode": "demo", "approval": None}
    assert verdict == {"valid": True, "reason": None, **signed}
    assert stored_rows(client)[0]["error_code"] == "refused"


def test_unexpected_exception_is_a_recorded_failure_not_a_500(client, caplog):
    response = execute(client, "probe.crash", nonce="c-1")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed" and body["error"]["code"] == "internal_error"
    assert "secret internals" not in response.text  # the traceback stays in the log
    assert "secret internals" in caplog.text
    assert stored_rows(client)[0]["status"] == "failed"


@pytest.mark.parametrize("action", ["probe.bad_result", "probe.nan_result"])
def test_a_result_that_is_not_a_json_object_fails_the_execution(client, action):
    body = execute(client, action, nonce="bad-result").json()
    assert body["status"] == "failed" and body["error"]["code"] == "invalid_result"
    assert body["result"] is None


def test_sync_handler_over_its_time_limit_is_timed_out_and_late_outcome_logged(client, caplog):
    body = execute(client, "probe.sleep_sync", {"seconds": 3}, nonce="slow").json()
    assert journal(client) == []  # answered at the 0.5 s limit, while the handler still sleeps
    assert body["status"] == "timed_out" and body["error"]["code"] == "timed_out"
    assert body["result"] is None
    # The overrunning thread still finishes; its late outcome is logged, never silently lost,
    # and as a hash only: a result is never logged.
    deadline = time.monotonic() + 30
    while "finished later" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    late = sha256_hex(canonical_json({"slept": 3.0}))
    assert (
        f"was recorded timed_out; its handler finished later and returned a result of "
        f"SHA-256 {late}" in caplog.text
    )
    assert "slept" not in caplog.text
    assert stored_rows(client)[0]["status"] == "timed_out"


@pytest.mark.parametrize("action", ["probe.exit", "probe.cancel_itself"])
def test_base_exceptions_from_handlers_are_recorded_failures(client, action):
    response = execute(client, action, nonce="base-exception")
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"] == "internal_error"
    assert stored_rows(client)[0]["status"] == "failed"


def test_async_handler_ignoring_cancellation_is_still_timed_out(client, caplog):
    body = execute(client, "probe.stubborn", {"seconds": 2}, nonce="stubborn").json()
    assert journal(client) == []  # answered at the 0.3 s limit, while the handler still sleeps
    assert body["status"] == "timed_out"
    deadline = time.monotonic() + 30
    while "finished later" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    late = sha256_hex(canonical_json({"stubborn": True}))
    assert f"finished later and returned a result of SHA-256 {late}" in caplog.text


def test_async_handler_over_its_time_limit_is_cancelled(client):
    body = execute(client, "probe.sleep_async", {"seconds": 5}, nonce="slow-async").json()
    assert body["status"] == "timed_out"
    fast = execute(client, "probe.sleep_async", {"seconds": 0.01}, nonce="fast-async").json()
    assert fast["status"] == "succeeded" and fast["result"] == {"slept": 0.01}


def test_default_time_limit_comes_from_settings(make_client):
    client = make_client(action_timeout_s=0.2)
    body = execute(client, "probe.bump", {"hold_s": 1.0}, nonce="default-limit").json()
    assert body["status"] == "timed_out"


def test_handler_sees_its_context(client):
    body = execute(client, "probe.context", nonce="ctx-1").json()
    result = body["result"]
    assert result["exec_id"] == body["id"] and result["nonce"] == "ctx-1"
    assert result["action"] == "probe.context" and result["mode"] == "demo"
    assert result["tenant_id"] is None and result["started_at"].endswith("+00:00")


def test_same_nonce_while_running_gets_409_with_retry_after(client):
    results = {}

    def first_request():
        results["first"] = execute(client, "probe.hold", nonce="busy")

    worker = threading.Thread(target=first_request)
    worker.start()
    try:
        assert probe_pack.started.wait(10), "handler never started"
        second = execute(client, "probe.hold", nonce="busy")
        assert second.status_code == 409
        assert second.json()["code"] == "execution_in_progress"
        assert int(second.headers["retry-after"]) >= 1
    finally:
        probe_pack.release.set()
        worker.join(15)
    assert results["first"].json()["status"] == "succeeded"
    assert execute(client, "probe.hold", nonce="busy").json()["replayed"] is True
    assert len(journal(client)) == 1


def test_expired_lease_is_recorded_indeterminate_and_never_rerun(client):
    """A row left running by a process that died: the next request settles it, with a receipt."""
    payload = {"note": "lost"}
    orphan = running_row(
        "dead-worker-exec",
        "orphan",
        action="probe.bump",
        payload=payload,
        plugin=("probe-pack", "1.0"),
        lease_expires_at=time.time() - 1,
    )
    assert reserve_rows(client.app.state.engine.store, [orphan]) == [1]
    response = execute(client, "probe.bump", payload, nonce="orphan")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "indeterminate" and body["id"] == "dead-worker-exec"
    assert body["error"]["code"] == "indeterminate" and body["result"] is None
    assert journal(client) == []  # the handler did not run again
    verdict = client.post("/receipts/verify", json={"envelope": body["receipt_envelope"]}).json()
    assert verdict["valid"] is True and verdict["status"] == "indeterminate"
    again = execute(client, "probe.bump", payload, nonce="orphan").json()
    assert again["receipt"] == body["receipt"] and journal(client) == []


def test_unexpired_lease_of_another_process_is_in_progress(client):
    live = running_row("live-exec", "live", lease_expires_at=time.time() + 60)
    assert reserve_rows(client.app.state.engine.store, [live]) == [1]
    response = execute(client, "echo", {}, nonce="live")
    assert response.status_code == 409
    assert 55 <= int(response.headers["retry-after"]) <= 60


def test_refused_requests_consume_nothing(client):
    assert execute(client, "add", {"a": "x", "b": 1}, nonce="keep").status_code == 422
    assert execute(client, "nope", {}, nonce="keep").status_code == 404
    assert stored_rows(client) == []
    assert execute(client, "add", {"a": 2, "b": 1}, nonce="keep").json()["result"] == {"sum": 3}


def test_nonces_are_independent(client):
    ids = {execute(client, "probe.bump", {}, nonce=f"n-{i}").json()["id"] for i in range(5)}
    assert len(ids) == 5 and len(journal(client)) == 5


def test_a_store_that_reads_but_cannot_write_still_answers_retries(openexec_client):
    """The engine reserves a new request before looking it up. When that write fails (another
    program holds SQLite's write lock), a request the store can answer from what it holds gets
    that answer, as it would had the engine looked first; a new one gets 503 after one wait."""
    client = openexec_client(openexec_echo, PROBE)
    store = client.app.state.engine.store

    @event.listens_for(store.engine, "connect")
    def short_busy_timeout(dbapi_connection, _record):  # the service waits 30 s
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    store.engine.dispose()
    first = execute(client, "echo", {"x": 1}, nonce="held")
    assert first.status_code == 200
    other = sqlite3.connect(settings_of(client).sqlite_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        again = execute(client, "echo", {"x": 1}, nonce="held")
        assert again.status_code == 200
        assert as_replay(again.json()) == {**first.json(), "replayed": True}
        reused = execute(client, "echo", {"x": 2}, nonce="held")
        assert reused.status_code == 422 and reused.json()["code"] == "nonce_reused"
        new = execute(client, "echo", {"x": 1}, nonce="fresh")
        assert new.status_code == 503 and new.json()["code"] == "storage_unavailable"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [row["nonce"] for row in stored_rows(client)] == ["held"]
