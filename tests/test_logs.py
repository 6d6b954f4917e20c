"""Logs: one ``execution`` event per answer of ``POST /execute``, the text and JSON formats for
OpenExec's and uvicorn's lines, no secrets in a full run's output, and hang-ups that are not
errors (real uvicorn processes where it matters)."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy.engine import make_url

from openexec.cli import main as cli
from openexec.logs import JsonFormatter, TextFormatter
from openexec.receipts import private_key_pem
from openexec.testing import Approver
from tests.conftest import execute, postgres_admin_url, settings_of
from tests.support.commands import stop_daemon, wait_until
from tests.support.processes import Uvicorn

RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_LINE = re.compile(rf"^{RFC3339} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ .+$")


def execution_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "openexec.execution"]


def as_json(record: logging.LogRecord) -> dict:
    return json.loads(JsonFormatter().format(record))


def test_every_answer_logs_one_execution_event_with_its_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="openexec")
    new = execute(client, "echo", {"m": 1}, nonce="e-1").json()
    execute(client, "echo", {"m": 1}, nonce="e-1")
    failed = execute(client, "probe.refuse", nonce="e-2").json()
    execute(client, "no.such", nonce="e-3")
    execute(client, "probe.bump", {"note": 5}, nonce="e-4")
    limit = settings_of(client).max_request_bytes
    client.post(
        "/execute", content=b" " * (limit + 1), headers={"content-type": "application/json"}
    )
    events = [as_json(record) for record in execution_events(caplog)]
    common = {"event": "execution", "logger": "openexec.execution", "pid": os.getpid()}
    assert [{k: e[k] for k in common} for e in events] == [common] * 6
    assert all(re.fullmatch(RFC3339, e["time"]) and e["message"] == "execution" for e in events)
    fields = [{k: v for k, v in e.items() if k not in {*common, "time", "message"}} for e in events]
    for event in fields:
        assert event.pop("duration_ms") >= 0
    nobody = {"tenant_id": None, "approval_id": None}
    assert fields == [
        {"level": "INFO", "exec_id": new["id"], "action": "echo", "status": "succeeded",
         "error_code": None, "replayed": False, **nobody},
        {"level": "INFO", "exec_id": new["id"], "action": "echo", "status": "succeeded",
         "error_code": None, "replayed": True, **nobody},
        {"level": "INFO", "exec_id": failed["id"], "action": "probe.refuse", "status": "failed",
         "error_code": "refused", "replayed": False, **nobody},
        {"level": "INFO", "exec_id": None, "action": "no.such", "code": "unknown_action",
         "http_status": 404, "replayed": False, **nobody},
        {"level": "INFO", "exec_id": None, "action": "probe.bump", "code": "payload_invalid",
         "http_status": 422, "replayed": False, **nobody},
        {"level": "INFO", "exec_id": None, "action": None, "code": "request_too_large",
         "http_status": 413, "replayed": False, **nobody},
    ]  # fmt: skip


def test_a_timed_out_execution_is_a_warning(client, caplog):
    caplog.set_level(logging.INFO, logger="openexec")
    assert execute(client, "probe.sleep_async", {"seconds": 5}, nonce="t").status_code == 200
    [event] = execution_events(caplog)
    assert event.levelname == "WARNING" and as_json(event)["status"] == "timed_out"


def test_approved_events_name_the_tenant_and_the_approval(make_client, approver, caplog):
    caplog.set_level(logging.INFO, logger="openexec")
    client = make_client(**approver.settings(tenant_id="acme"))
    artifact = approver.v2("echo", {"m": 1}, tenant_id="acme", nonce="a-1")
    body = {"action": "echo", "payload": {"m": 1}, "nonce": "a-1", "approval_artifact": artifact}
    assert client.post("/execute", json=body).status_code == 200
    stolen = {**body, "nonce": "a-2"}  # bound to a-1: refused after it verified
    assert client.post("/execute", json=stolen).json()["code"] == "approval_nonce_mismatch"
    approval = json.loads(base64.b64decode(artifact["payload"]))["approval_id"]
    ran, refused = (as_json(record) for record in execution_events(caplog))
    assert (ran["tenant_id"], ran["approval_id"], ran["status"]) == ("acme", approval, "succeeded")
    assert (refused["code"], refused["http_status"]) == ("approval_nonce_mismatch", 403)
    assert refused["approval_id"] is None  # it failed verification: nothing it names is trusted


def test_text_lines_are_time_level_logger_message_then_quoted_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="openexec")
    execute(client, 'no"such\naction', nonce="x")
    [record] = execution_events(caplog)
    line = TextFormatter().format(record)
    assert TEXT_LINE.match(line) and "\n" not in line  # a requested name cannot forge a line
    assert line.split(" ", 4)[1:4] == ["INFO", "openexec.execution", "execution"]
    assert ' action="no\\"such\\naction" code="unknown_action" http_status=404 ' in line


def test_a_traceback_stays_inside_its_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        failure = sys.exc_info()
    record = logging.LogRecord("openexec", logging.ERROR, __file__, 1, "failed %s", ("x",), failure)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line and entry["message"] == "failed x" and entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


class LoggingUvicorn(Uvicorn):
    """A server that logs at uvicorn's default level, info: the execution events show."""

    log_level = "info"


def test_a_client_hanging_up_is_not_an_error(tmp_path):
    """Text format: every line of a single-worker server (uvicorn's too) is ``<time> <level>
    <logger> <message>``, and hang-ups, before the body and while the action runs, log no
    error and no traceback."""
    log = tmp_path / "uvicorn.log"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
    }
    server = LoggingUvicorn("tests.support.server:app", env, workers=1, log=log)
    try:
        body = json.dumps({"action": "probe.bump", "payload": {"hold_s": 0.5}, "nonce": "gone"})
        head = "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for request in (
            f"{head}Content-Length: {len(body) + 100}\r\n\r\n{body}",  # the body never ends
            f"{head}Content-Length: {len(body)}\r\n\r\n{body}",  # gone before the answer
        ):
            with socket.create_connection(("127.0.0.1", server.port)) as connection:
                connection.sendall(request.encode())
        wait_until(lambda: log.read_text().count("openexec.execution") == 2)
        assert httpx.get(f"{server.url}/ready").status_code == 200  # still serving
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    assert all(TEXT_LINE.match(line) for line in lines), lines
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line]
    events = [line for line in lines if " openexec.execution " in line]
    assert 'code="client_disconnected"' in events[0]
    assert 'status="succeeded"' in events[1]  # it ran to its end and was recorded
    assert any(" uvicorn.access " in line and '"GET /ready HTTP/1.1" 200' in line for line in lines)


@pytest.fixture
def password_database() -> Iterator[str]:
    """A PostgreSQL database owned by a role of its own with a password, so the URL the
    service is given carries a secret; both are dropped afterwards."""
    admin = postgres_admin_url()
    name = f"openexec_logs_{uuid.uuid4().hex[:12]}"
    password = f"pw-{secrets.token_hex(12)}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        connection.execute(f'CREATE DATABASE "{name}" OWNER {name}')
    url = make_url(admin).set(username=name, password=password, database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """The exec pack's workspace: under /tmp, passable by ``nobody`` (who runs commands when
    the service runs as root)."""
    directory = Path(tempfile.mkdtemp(prefix="openexec-logs-test-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def key_material(pem: bytes) -> list[str]:
    """What of a private key must never be logged: each base64 line of its PEM, and its raw
    bytes in hex and base64."""
    raw = load_pem_private_key(pem, None).private_bytes_raw()
    lines = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    return [*lines, raw.hex(), base64.b64encode(raw).decode(), base64.b64encode(raw[:24]).decode()]


def test_a_full_run_logs_no_secret_payload_or_result(
    tmp_path, password_database, shared_tmp
) -> None:
    """Clawshield mode on PostgreSQL with the echo, files and exec packs, JSON logs: new and
    replayed executions, an ActionError, refusals of every kind, and a receipt check. Every
    line is one JSON object, and none holds a payload, a result, a key, the database password
    or an approval's signature."""
    approver = Approver()
    receipt_key, ledger_key = tmp_path / "receipt-key.pem", tmp_path / "ledger-key.pem"
    assert cli(["keygen", "--out", str(receipt_key)]) == 0
    assert cli(["keygen", "--out", str(ledger_key)]) == 0
    state = tmp_path / "exec-state"
    env = {
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": approver.public_key_pem,
        "CLAWSHIELD_TENANT_ID": "acme",
        "OPENEXEC_SERVICE_ID": "svc-logs",
        "OPENEXEC_DB_URL": password_database,
        "OPENEXEC_RECEIPT_KEY": str(receipt_key),
        "OPENEXEC_LEDGER_KEY": str(ledger_key),
        "OPENEXEC_LEDGER_INTERVAL_MS": "50",
        "OPENEXEC_PLUGINS": "openexec-echo,openexec-files,openexec-exec",
        "OPENEXEC_FILES_ROOT": str(tmp_path / "files"),
        "OPENEXEC_FILES_STATE": str(tmp_path / "files-state"),
        "OPENEXEC_EXEC_WORKSPACE": str(shared_tmp / "workspace"),
        "OPENEXEC_EXEC_STATE": str(state),
        "OPENEXEC_LOG_FORMAT": "json",
    }
    secret = {name: f"{name}-{secrets.token_hex(8)}" for name in ("echoed", "written", "refused")}
    printed = (f"printed-{secrets.token_hex(4)}-", secrets.token_hex(4))  # joined only in stdout
    signatures: list[str] = []
    log = tmp_path / "uvicorn.log"
    server = LoggingUvicorn("main:app", env, workers=2, log=log)

    def approval(action: str, payload: dict, nonce: str) -> dict:
        artifact = approver.v2(action, payload, tenant_id="acme", nonce=nonce, aud="svc-logs")
        signatures.append(artifact["signatures"][0]["sig"])
        return artifact

    def approved(
        action: str, payload: dict, nonce: str, artifact: dict | None = None
    ) -> httpx.Response:
        """Execute with ``artifact``, or with a new approval of exactly this request."""
        artifact = artifact or approval(action, payload, nonce)
        body = {"action": action, "payload": payload, "nonce": nonce, "approval_artifact": artifact}
        return httpx.post(f"{server.url}/execute", json=body, timeout=60)

    def post(body: object, content_type: str = "application/json") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": content_type}
        return httpx.post(f"{server.url}/execute", content=content, headers=headers, timeout=60)

    answers: list[int] = []
    try:
        echo = {"secret": secret["echoed"]}
        echo_approval = approval("echo", echo, "r-echo")
        ran = approved("echo", echo, "r-echo", echo_approval)
        assert ran.json()["status"] == "succeeded", ran.text
        assert approved("echo", echo, "r-echo", echo_approval).json()["replayed"] is True
        written = approved(
            "files.write", {"path": "notes.txt", "content": secret["written"]}, "r-w"
        )
        assert written.json()["status"] == "succeeded", written.text
        read = approved("files.read", {"path": "notes.txt"}, "r-read").json()
        assert read["result"]["content"] == secret["written"]
        missing = approved("files.read", {"path": f"{secret['refused']}.txt"}, "r-missing")
        assert missing.json()["status"] == "failed"  # an ActionError
        command = {"argv": ["printf", "%s%s", *printed]}
        stdout = approved("exec.run", command, "r-exec").json()
        assert stdout["result"]["stdout"] == "".join(printed), stdout
        refused = {"secret": secret["refused"]}
        answers += [
            post({"action": "echo", "payload": refused, "nonce": "f-1"}).status_code,
            approved("echo", {"x": 1}, "f-2", approval("echo", refused, "f-2")).status_code,
            approved("echo", refused, "r-echo").status_code,  # nonce_reused
            approved("files.write", {"path": secret["refused"]}, "f-3").status_code,
            approved("exec.run", {"argv": ["rm", secret["refused"]]}, "f-4").status_code,
            post(b'{"action": "echo", "payload": {"x": "' + secret["refused"].encode()).status_code,
            post({"action": "echo", "payload": refused}, "text/plain").status_code,
            post({"action": "echo", "payload": {"x": secret["refused"] * 60000}}).status_code,
        ]
        forged = approver.v1("echo", refused, tenant_id="acme")
        signatures.append(forged["signature"])
        forged["signature"] = base64.b64encode(b"\0" * 64).decode()
        answers.append(
            post(
                {"action": "echo", "payload": refused, "nonce": "f-5", "approval_artifact": forged}
            ).status_code
        )
        first = ran.json()
        check = {"exec_id": first["id"], "receipt": first["receipt"], "result": {"echo": echo}}
        assert httpx.post(f"{server.url}/receipts/verify", json=check).json()["valid"] is True
        wait_until(lambda: log.read_text().count('"event": "execution"') == 6 + len(answers))
    finally:
        server.stop()
        stop_daemon(state)
    assert answers == [403, 403, 422, 422, 422, 422, 415, 413, 403]

    output = log.read_text()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    supervisor = [line for line in output.splitlines() if not line.startswith("{")]
    assert all(line.startswith("INFO:") for line in supervisor), supervisor  # uvicorn's parent
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message", "pid"} <= entry.keys() for entry in entries)
    assert {entry["pid"] for entry in entries if entry.get("event")} <= {
        entry["pid"] for entry in entries if "Started server process" in entry["message"]
    }
    assert any(entry["logger"] == "uvicorn.access" for entry in entries)
    forbidden = {
        **secret,
        "printed": "".join(printed),
        "password": make_url(password_database).password,
        **{f"signature {n}": sig for n, sig in enumerate(signatures)},
    }
    keys = {
        "approver": private_key_pem(approver.private_key),
        "receipt": receipt_key.read_bytes(),
        "ledger": ledger_key.read_bytes(),
    }
    for name, pem in keys.items():
        forbidden.update({f"{name} key {n}": part for n, part in enumerate(key_material(pem))})
    leaked = [name for name, text in forbidden.items() if text in output]  # every line
    assert not leaked, leaked
