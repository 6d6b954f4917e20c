"""Shared fixtures: apps on SQLite and on a real PostgreSQL server, and ways to look inside."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import openexec_echo
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url

from openexec.plugins import InProcessPlugin
from openexec.signing import request_sha256
from openexec.store import EXECUTIONS, Store
from tests.support import probe_pack

PROBE = InProcessPlugin(probe_pack, "probe-pack", "1.0")
PG_VARIABLE = "OPENEXEC_TEST_PG_URL"


def postgres_admin_url() -> str:
    """The PostgreSQL server the test script started. Missing is a failure, never a skip."""
    url = os.environ.get(PG_VARIABLE)
    if not url:
        pytest.fail(
            f"{PG_VARIABLE} is not set: run the tests with scripts/test.sh, which starts PostgreSQL"
        )
    return url


@pytest.fixture
def postgres_database() -> Iterator[Callable[[], str]]:
    """Factory for fresh, empty PostgreSQL databases; each is dropped after the test."""
    admin = postgres_admin_url()
    created: list[str] = []

    def create() -> str:
        name = f"openexec_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return make_url(admin).set(database=name).render_as_string(hide_password=False)

    yield create
    with psycopg.connect(admin, autocommit=True) as connection:
        for name in created:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_client(openexec_client, backend, request, tmp_path) -> Callable[..., TestClient]:
    """A client for an app serving the echo and probe packs, on the parametrised backend."""

    count = 0

    def build(settings: dict[str, str] | None = None, **overrides) -> TestClient:
        nonlocal count
        count += 1
        if backend == "postgresql" and "db_url" not in overrides:
            overrides["db_url"] = request.getfixturevalue("postgres_database")()
        probe = {"OPENEXEC_PROBE_DIR": str(tmp_path / f"probe-{count}")}
        return openexec_client(
            openexec_echo, PROBE, settings={**probe, **(settings or {})}, **overrides
        )

    return build


@pytest.fixture
def client(make_client) -> TestClient:
    probe_pack.started.clear()
    probe_pack.release.clear()
    return make_client()


def settings_of(client: TestClient):
    return client.app.state.engine.settings


def stored_rows(client: TestClient) -> list[dict]:
    """Every execution row, read straight from the database."""
    with client.app.state.engine.store.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(select(EXECUTIONS))]


def journal(client: TestClient) -> list[str]:
    path: Path = probe_pack.journal_path(client.app.state.engine.registry)
    return path.read_text().splitlines() if path.exists() else []


def execute(
    client: TestClient, action: str, payload: dict | None = None, nonce: str = "n-1", **extra
):
    body = {"action": action, "payload": payload or {}, "nonce": nonce, **extra}
    return client.post("/execute", json=body)


def running_row(
    exec_id: str,
    nonce: str,
    *,
    action: str = "echo",
    payload: dict | None = None,
    plugin: tuple[str, str] = ("openexec-echo", "0.1.0"),
    lease_expires_at: float = 0.0,
) -> dict:
    """An executions row as a process that reserved it and has not finished would leave it."""
    payload = {} if payload is None else payload
    return {
        "id": exec_id,
        "tenant": "",
        "nonce": nonce,
        "action": action,
        "plugin_name": plugin[0],
        "plugin_version": plugin[1],
        "mode": "demo",
        "request_sha256": request_sha256(action, payload),
        "payload": json.dumps(payload),
        "status": "running",
        "started_at": "2026-01-01T00:00:00.000000Z",
        "lease_expires_at": lease_expires_at,
    }


def reserve_rows(store: Store, rows: list[dict]) -> list[int]:
    """Reserve rows through the store's own writer, as another process would have."""

    async def reserve() -> list[int]:
        return list(await asyncio.gather(*(store.reserve(row) for row in rows)))

    return asyncio.run(reserve())


def as_replay(answer: dict) -> dict:
    """A replayed answer as the first answer would read: the ledger may have integrated the
    execution in between (``ledger_index`` is null in every first answer)."""
    assert answer["replayed"] is True
    return {**answer, "ledger_index": None}
