"""The store's SQLite machinery: checkpoints off the request path, the workers' write lock,
the writer thread's failure paths, kept read connections."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

import openexec.store as store_module
from openexec.settings import ConfigError, Settings
from openexec.store import KEPT_READERS, WAL_AUTOCHECKPOINT_PAGES, Store, StoreUnavailable
from tests.conftest import reserve_rows, running_row


@pytest.fixture
def store(tmp_path: Path):
    store = Store(Settings(db_url=f"sqlite:///{tmp_path / 'store.db'}"))
    store.prepare()
    yield store
    store.dispose()


def row(number: int) -> dict:
    return running_row(f"exec-{number}", f"nonce-{number}")


def rows_in_main_file(path: Path) -> int:
    """Rows in the database file itself: an immutable open never reads the write-ahead log."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM executions").fetchone()[0]


def test_commits_reach_the_database_file_through_the_background_checkpointer(store, tmp_path):
    database = tmp_path / "store.db"
    with store.engine.connect() as connection:  # SQLite's own checkpoint is only a safety net
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == WAL_AUTOCHECKPOINT_PAGES
    assert reserve_rows(store, [row(n) for n in range(40)]) == [1] * 40
    checkpointer = store._checkpointer
    done = checkpointer.runs
    checkpointer.poke()  # as the writer does after a commit
    assert checkpointer.wait_for_runs(done + 1, timeout=30)
    assert rows_in_main_file(database) == 40


def test_the_workers_write_lock_is_private_and_free_when_no_write_is_queued(store, tmp_path):
    assert reserve_rows(store, [row(n) for n in range(5)]) == [1] * 5
    lock_file = tmp_path / "store.db-writer-lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    descriptor = os.open(lock_file, os.O_RDWR)
    try:  # another worker can take it now: the idle writer let it go
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def test_a_taken_nonce_reserves_nothing_and_says_so(store):
    first, again = row(1), {**row(2), "nonce": "nonce-1"}
    assert reserve_rows(store, [first]) == [1]
    assert reserve_rows(store, [again]) == [0]
    holder, _ = store.lookup(None, "nonce-1", None)
    assert holder is not None and holder["id"] == "exec-1"


def test_a_failing_after_commit_hook_never_applies_a_committed_batch_twice(store):
    def broken_hook() -> None:
        raise RuntimeError("checkpointer gone")

    store._writer._after_commit = broken_hook
    assert reserve_rows(store, [row(n) for n in range(3)]) == [1, 1, 1]
    assert reserve_rows(store, [row(3)]) == [1]


def test_an_unexpected_writer_error_fails_its_batch_and_the_writer_goes_on(store):
    writer = store._writer
    commit = writer._commit
    failures = []

    def fails_once(batch):
        if not failures:
            failures.append(len(batch))
            raise KeyError("a bug")
        return commit(batch)

    writer._commit = fails_once
    with pytest.raises(StoreUnavailable, match="store writer failed"):
        reserve_rows(store, [row(1)])
    assert reserve_rows(store, [row(2)]) == [1]  # the thread is alive and writing


def test_an_outage_fails_a_whole_batch_at_once(store):
    """One connection attempt per batch, not one more per write: each costs a full timeout."""
    writer = store._writer
    everything_queued = threading.Event()
    attempts = []

    @contextmanager
    def unreachable():
        attempts.append(1)
        if len(attempts) == 1:  # hold the first batch until every write is queued
            everything_queued.wait(30)
        raise StoreUnavailable("connection refused")
        yield

    writer._checkout = unreachable

    async def reserve() -> list:
        pending = [store.reserve(row(n)) for n in range(6)]
        everything_queued.set()
        return await asyncio.gather(*pending, return_exceptions=True)

    outcomes = asyncio.run(reserve())
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    # One batch of six, or the first write alone and five queued behind it; retrying the
    # writes one by one would make it seven.
    assert len(attempts) <= 2


def test_a_worker_holding_the_write_lock_too_long_makes_writes_unavailable(
    store, tmp_path, monkeypatch
):
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 0.05)
    descriptor = os.open(tmp_path / "store.db-writer-lock", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # as a stuck worker would
        with pytest.raises(StoreUnavailable, match="held the write lock"):
            reserve_rows(store, [row(1)])
    finally:
        os.close(descriptor)
    assert reserve_rows(store, [row(1)]) == [1]  # nothing of it happened


def test_an_unusable_lock_file_stops_startup(tmp_path):
    (tmp_path / "store.db-writer-lock").mkdir()
    with pytest.raises(ConfigError, match="lock file"):
        Store(Settings(db_url=f"sqlite:///{tmp_path / 'store.db'}"))


def test_only_a_few_threads_keep_a_read_connection(store):
    results = []

    def read() -> None:
        results.append(store.lookup(None, "nonce-none", None))

    threads = [threading.Thread(target=read) for _ in range(KEPT_READERS + 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [(None, False)] * len(threads)
    assert len(store._kept) <= KEPT_READERS
    assert reserve_rows(store, [row(1)]) == [1]  # the pool still serves the writer
    store.dispose()
    assert store.lookup(None, "nonce-1", None)[0]["id"] == "exec-1"  # read after dispose: pool
