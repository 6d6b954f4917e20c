from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import openexec_echo
import pytest
from fastapi.testclient import TestClient

from openexec.plugins import InProcessPlugin
from tests.support import probe_pack

PROBE = InProcessPlugin(probe_pack, "probe-pack", "1.0")


@pytest.fixture
def make_client(openexec_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """A client for an app serving the echo pack and the probe pack."""

    def build(**overrides) -> TestClient:
        return openexec_client(openexec_echo, PROBE, **overrides)

    return build


@pytest.fixture
def client(make_client) -> TestClient:
    probe_pack.started.clear()
    probe_pack.release.clear()
    return make_client()


def settings_of(client: TestClient):
    return client.app.state.engine.settings


def stored_rows(client: TestClient) -> list[dict]:
    """Every execution row, read straight from the SQLite file."""
    path = settings_of(client).sqlite_path
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM executions")]


def journal(client: TestClient) -> list[str]:
    path: Path = probe_pack.journal_path(settings_of(client))
    return path.read_text().splitlines() if path.exists() else []


def execute(client: TestClient, action: str, payload: dict | None = None, nonce: str = "n-1", **extra):
    body = {"action": action, "payload": payload or {}, "nonce": nonce, **extra}
    return client.post("/execute", json=body)
