"""The informational endpoints: /, /health, /ready, /version, /actions, /receipts/keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import create_engine

from openexec import __version__
from tests.conftest import execute, journal


def test_root(client):
    assert client.get("/").json() == {
        "service": "OpenExec",
        "status": "running",
        "version": __version__,
    }


def test_health_in_open_demo_mode(client, backend):
    health = client.get("/health").json()
    assert health["exec_mode"] == "demo" and health["signature_verification"] == "disabled"
    assert health["restriction"] == "open" and "allow_list" not in health
    assert health["warning"] == "No execution allow-list configured"
    plugins = {p["name"]: p for p in health["plugins"]}
    assert plugins["openexec-echo"]["actions"] == ["echo", "add"]
    assert plugins["probe-pack"]["version"] == "1.0"
    assert health["receipt_key_id"] == client.get("/receipts/keys").json()[0]["key_id"]
    assert health["database"] == backend
    assert "sqlite:" not in str(health) and "postgresql:" not in str(health)
    assert "openexec-test" not in str(health)  # no URL, no password


def test_health_when_restricted(make_client):
    health = make_client(allowed_actions=("echo", "probe.*")).get("/health").json()
    assert health["restriction"] == "restricted" and health["allow_list"] == ["echo", "probe.*"]
    assert "warning" not in health


def test_ready_and_unready(client, backend):
    assert client.get("/ready").json() == {"ready": True}
    store = client.app.state.engine.store
    unreachable = (
        "sqlite:////nonexistent-directory/openexec.db"
        if backend == "sqlite"
        else store.engine.url.set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    )
    store.engine = create_engine(unreachable, pool_pre_ping=True)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["ready"] is False and response.json()["reason"].startswith(
        "store unavailable"
    )
    refused = execute(client, "probe.bump", {}, nonce="during-outage")
    assert refused.status_code == 503 and refused.json()["code"] == "storage_unavailable"
    assert journal(client) == []  # nothing ran


def test_version(client):
    body = client.get("/version").json()
    assert body["version"] == __version__
    assert datetime.fromisoformat(body["timestamp"])
    assert body["plugins"] == {"openexec-echo": "0.1.0", "probe-pack": "1.0"}


def test_actions_list_only_allowed_with_schemas(make_client):
    listed = make_client(allowed_actions=("add", "probe.bump")).get("/actions").json()
    assert [a["name"] for a in listed] == ["add", "probe.bump"]
    bump = listed[1]
    assert bump["plugin"] == "probe-pack" and bump["plugin_version"] == "1.0"
    assert bump["description"] == "Append a line to the journal."
    assert set(bump["input_schema"]["properties"]) == {"note", "hold_s"}


def test_openapi_documents_the_execute_body(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/execute"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["required"] == ["action", "nonce"]
