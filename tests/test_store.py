"""The store's SQLite machinery: checkpoints off the request path, the workers' write lock."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from openexec.settings import Settings
from openexec.store import WAL_AUTOCHECKPOINT_PAGES, Store


@pytest.fixture
def store(tmp_path: Path):
    store = Store(Settings(db_url=f"sqlite:///{tmp_path / 'store.db'}"))
    store.prepare()
    yield store
    store.dispose()


def running_row(number: int) -> dict:
    return {
        "id": f"exec-{number}",
        "tenant": "",
        "nonce": f"nonce-{number}",
        "action": "echo",
        "plugin_name": "openexec-echo",
        "plugin_version": "0.1.0",
        "mode": "demo",
        "request_sha256": "0" * 64,
        "payload": "{}",
        "status": "running",
        "started_at": "2026-01-01T00:00:00.000000Z",
        "lease_expires_at": 0.0,
    }


def reserve_all(store: Store, rows: list[dict]) -> list[int]:
    async def reserve() -> list[int]:
        return list(await asyncio.gather(*(store.reserve(row) for row in rows)))

    return asyncio.run(reserve())


def rows_in_main_file(path: Path) -> int:
    """Rows in the database file itself: an immutable open never reads the write-ahead log."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM executions").fetchone()[0]


def test_commits_reach_the_database_file_through_the_background_checkpointer(store, tmp_path):
    database = tmp_path / "store.db"
    with store.engine.connect() as connection:  # SQLite's own checkpoint is only a safety net
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == WAL_AUTOCHECKPOINT_PAGES
    assert reserve_all(store, [running_row(n) for n in range(40)]) == [1] * 40
    checkpointer = store._checkpointer
    done = checkpointer.runs
    checkpointer.poke()  # as the writer does after a commit
    assert checkpointer.wait_for_runs(done + 1, timeout=30)
    assert rows_in_main_file(database) == 40


def test_the_workers_write_lock_is_private_and_free_when_no_write_is_queued(store, tmp_path):
    assert reserve_all(store, [running_row(n) for n in range(5)]) == [1] * 5
    lock_file = tmp_path / "store.db-writer-lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    descriptor = os.open(lock_file, os.O_RDWR)
    try:  # another worker can take it now: the idle writer let it go
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def test_a_taken_nonce_reserves_nothing_and_says_so(store):
    first, again = running_row(1), {**running_row(2), "nonce": "nonce-1"}
    assert reserve_all(store, [first]) == [1]
    assert reserve_all(store, [again]) == [0]
    holder, _ = store.lookup(None, "nonce-1", None)
    assert holder is not None and holder["id"] == "exec-1"
