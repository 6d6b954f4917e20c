"""The store's machinery: SQLite's checkpoints off the request path, the workers' write lock,
the writer thread's failure paths, kept read connections; PostgreSQL's reader threads."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import sqlite3
import stat
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import openexec_echo
import psycopg
import psycopg.rows
import pytest
from sqlalchemy import event

import openexec.store.sqlite_locks as store_locks
from openexec.settings import ConfigError, Settings
from openexec.store import (
    KEPT_READERS,
    OUTCOME_COLUMNS,
    WAL_AUTOCHECKPOINT_PAGES,
    Store,
    StoreUnavailable,
)
from tests.conftest import execute, reserve_rows, running_row, stored_rows
from tests.support.commands import wait_until


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
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
        if ("executions",) not in tables:  # the schema itself is still in the WAL only
            return 0
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


def until_checkpointed(checkpointer, database: Path, rows: int) -> int:
    """Rows in the database file once it holds ``rows``, checkpoint by checkpoint (bounded)."""
    for _ in range(200):
        if rows_in_main_file(database) >= rows:
            break
        assert checkpointer.wait_for_runs(checkpointer.runs + 1, timeout=30)
    return rows_in_main_file(database)


def test_one_worker_checkpoints_for_all_and_another_takes_over_when_it_stops(tmp_path):
    database = tmp_path / "store.db"
    first, second = (Store(Settings(db_url=f"sqlite:///{database}")) for _ in range(2))
    first.prepare()
    try:
        assert reserve_rows(first, [row(0)]) == [1]  # the first to commit owns checkpointing
        assert until_checkpointed(first._checkpointer, database, 1) == 1
        assert reserve_rows(second, [row(n) for n in range(1, 31)]) == [1] * 30
        assert second._checkpointer._thread.ident is None  # it never started its own
        # The owner follows the write-ahead log, whoever wrote to it.
        assert until_checkpointed(first._checkpointer, database, 31) == 31
        first.dispose()
        assert reserve_rows(second, [row(31)]) == [1]
        assert until_checkpointed(second._checkpointer, database, 32) == 32
    finally:
        first.dispose()  # a second dispose changes nothing
        second.dispose()
    assert stat.S_IMODE((tmp_path / "store.db-checkpoint-lock").stat().st_mode) == 0o600


def test_the_workers_write_lock_is_private_and_free_when_no_write_is_queued(store, tmp_path):
    assert reserve_rows(store, [row(n) for n in range(5)]) == [1] * 5
    lock_file = tmp_path / "store.db-writer-lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "store.db-writer-wait").stat().st_mode) == 0o600
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


@pytest.mark.parametrize("step", ["_run_on_loop", "_commit_kept"])
def test_an_unexpected_writer_error_fails_its_batch_and_the_writer_goes_on(store, step):
    """A bug on the event loop's side of a batch, or in the writer's thread before the commit:
    the batch fails with 503, none of it is stored, and the next batch is written."""
    writer = store._writer
    original = getattr(writer, step)
    failures = []

    def fails_once(*args):
        if not failures:
            failures.append(args)
            raise KeyError("a bug")
        return original(*args)

    setattr(writer, step, fails_once)
    with pytest.raises(StoreUnavailable, match="store writer failed"):
        reserve_rows(store, [row(1)])
    assert failures
    assert reserve_rows(store, [row(2)]) == [1]  # the writer is alive and writing
    assert store.lookup(None, "nonce-1", None)[0] is None
    assert store.lookup(None, "nonce-2", None)[0]["id"] == "exec-2"


def test_a_value_the_database_refuses_fails_only_its_own_write(store):
    """The batch fails on the event loop, goes to the writer's thread, and is applied there one
    write at a time."""
    refused_row = {**row(2), "nonce": None}  # NOT NULL

    async def reserve() -> list:
        pending = [store.reserve(candidate) for candidate in (row(1), refused_row, row(3))]
        return await asyncio.gather(*pending, return_exceptions=True)

    first, refused, third = asyncio.run(reserve())
    assert (first, third) == (1, 1)
    assert isinstance(refused, sqlite3.IntegrityError)
    assert store.lookup(None, "nonce-3", None)[0]["id"] == "exec-3"
    assert store.get("exec-2") is None


def test_a_batch_that_finds_the_write_lock_taken_waits_without_blocking_the_loop(store, tmp_path):
    """While another worker holds the lock, the event loop goes on: the writer marks itself
    waiting and tries again on a timer, and once the lock is let go the write lands."""
    holder = os.open(tmp_path / "store.db-writer-lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as another worker's writer would

    async def wait_for_the_lock() -> int:
        pending = store.reserve(row(1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # This coroutine sees the mark only if the loop goes on while the writer waits: a
        # writer that blocked the loop would have failed the write after LOCK_WAIT_S.
        while not waiting_is_marked(tmp_path) and loop.time() < deadline:
            await asyncio.sleep(0)
        assert waiting_is_marked(tmp_path) and not pending.done()
        fcntl.flock(holder, fcntl.LOCK_UN)
        return await pending

    try:
        assert asyncio.run(wait_for_the_lock()) == 1
    finally:
        os.close(holder)
    assert not waiting_is_marked(tmp_path)  # the mark went once the lock was taken


def waiting_is_marked(tmp_path: Path) -> bool:
    """Whether a writer holds its shared "waiting" flock."""
    probe = os.open(tmp_path / "store.db-writer-wait", os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(probe)


def test_another_process_holding_sqlites_write_lock_never_blocks_the_loop(store, tmp_path):
    """A writer that takes no flock (another program, the sqlite3 shell) holds SQLite's own
    write lock: the loop's BEGIN IMMEDIATE fails at once (its connection has no busy timeout),
    the batch goes to the writer's thread, which waits with SQLite's busy timeout, and the
    write lands once the other transaction commits."""
    writer = store._writer
    in_thread = threading.Event()
    apply = writer._apply

    def observed(batch):
        in_thread.set()
        return apply(batch)

    writer._apply = observed
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    def commit_once_the_thread_waits() -> None:
        in_thread.wait(30)
        other.execute("COMMIT")

    committer = threading.Thread(target=commit_once_the_thread_waits)
    committer.start()
    try:
        assert reserve_rows(store, [row(1)]) == [1]
    finally:
        committer.join(60)
        other.close()
    assert in_thread.is_set()
    assert store.lookup(None, "nonce-1", None)[0]["id"] == "exec-1"


def test_only_the_event_loops_write_connection_has_no_busy_timeout(store):
    assert reserve_rows(store, [row(1)]) == [1]
    kept = store._writer._kept.cursor().execute("PRAGMA busy_timeout").fetchone()[0]
    with store.engine.connect() as pooled:
        pooled_timeout = pooled.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert (kept, pooled_timeout) == (0, 30000)


def test_a_loop_that_closed_mid_batch_leaves_the_writer_working(store):
    async def leave_a_write_behind() -> None:
        store.reserve(row(1))  # never awaited: the loop closes with the batch in flight

    async def write_again() -> int:
        return await asyncio.wait_for(store.reserve(row(2)), timeout=30)  # not wedged

    asyncio.run(leave_a_write_behind())
    assert asyncio.run(write_again()) == 1


def test_a_busy_writer_lets_a_waiting_worker_have_the_lock(tmp_path):
    """Two stores on one file, as two workers. While one writes without a pause, the other's
    write waits for the lock only until the busy one's turn ends (10 ms of batches), not until
    the busy one runs out of writes: the busy writer takes the lock back within microseconds,
    and the waiting one's 1 ms polls would hardly ever find it free."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    busy, waiting = Store(Settings(db_url=url)), Store(Settings(db_url=url))
    busy.prepare()
    written = [0]  # by the busy store, counted on its event loop
    started, stop = threading.Event(), threading.Event()

    async def keep_writing() -> None:
        """Writes queued all the time, as under load: a new one as soon as one is answered."""
        in_flight: set[asyncio.Future[int]] = set()
        names = (f"busy-{number}" for number in itertools.count())
        while not stop.is_set() and written[0] < 100_000:
            name = next(names)
            in_flight.add(busy.reserve(running_row(name, name)))
            if len(in_flight) >= 32:
                done, in_flight = await asyncio.wait(in_flight, return_when="FIRST_COMPLETED")
                assert [future.result() for future in done] == [1] * len(done)
                written[0] += len(done)
                if written[0] >= 64:
                    started.set()
            else:
                await asyncio.sleep(0)
        await asyncio.gather(*in_flight)

    busy_thread = threading.Thread(target=asyncio.run, args=(keep_writing(),))
    busy_thread.start()
    try:
        assert started.wait(30)
        before = written[0]
        assert reserve_rows(waiting, [row(1)]) == [1]
        during = written[0] - before
    finally:
        stop.set()
        busy_thread.join(60)
        busy.dispose()
        waiting.dispose()
    assert during < 1_000, f"the busy store wrote {during} rows while the other waited"


def test_an_outage_fails_a_whole_batch_at_once(store):
    """One connection attempt per batch, not one more per write: each costs a full timeout."""
    writer = store._writer
    attempts = []

    def unreachable():
        attempts.append(1)
        raise StoreUnavailable("connection refused")

    @contextmanager
    def unreachable_pool():
        unreachable()
        yield

    writer._connect, writer._checkout = unreachable, unreachable_pool

    async def reserve() -> list:
        pending = [store.reserve(row(n)) for n in range(6)]
        return await asyncio.gather(*pending, return_exceptions=True)

    outcomes = asyncio.run(reserve())
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert len(attempts) == 1  # the six writes of one turn of the loop are one batch


def test_a_worker_holding_the_write_lock_too_long_makes_writes_unavailable(
    store, tmp_path, monkeypatch
):
    monkeypatch.setattr(store_locks, "LOCK_WAIT_S", 0.05)
    descriptor = os.open(tmp_path / "store.db-writer-lock", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # as a stuck worker would
        with pytest.raises(StoreUnavailable, match="held the write lock"):
            reserve_rows(store, [row(1)])
        assert not waiting_is_marked(tmp_path)  # or the other workers would yield to it
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


# --- PostgreSQL's reader threads ---------------------------------------------------------------


@pytest.fixture
def pg_store(postgres_database):
    url = postgres_database()
    store = Store(Settings(db_url=url, db_pool_size=2))
    store.prepare()
    yield store, url.replace("postgresql+psycopg://", "postgresql://")
    store.dispose()


def sessions(url: str) -> list[tuple[int, str]]:
    """The other sessions on the store's database: (process id, state)."""
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(
            "SELECT pid, state FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()


def read_all(store: Store, count: int) -> list[tuple[int, tuple]]:
    """``count`` lookups at once from an event loop, of nonce-0, nonce-1, nonce-2, nonce-0, ...:
    each answer with the thread that read it."""

    def lookup(nonce: str) -> tuple[int, tuple]:
        return threading.get_ident(), store.lookup(None, nonce, None)

    async def read() -> list[tuple[int, tuple]]:
        lookups = (store.read(lookup, f"nonce-{n % 3}") for n in range(count))
        return list(await asyncio.gather(*lookups))

    return asyncio.run(read())


def test_postgres_reads_run_on_as_many_threads_as_the_pool_keeps_each_out_of_transactions(
    pg_store,
):
    store, url = pg_store
    assert reserve_rows(store, [row(1)]) == [1]
    threads, found = zip(*read_all(store, 40), strict=True)
    assert [holder["id"] if holder else None for holder, _ in found[:3]] == [None, "exec-1", None]
    assert len(set(threads)) <= 2 and threading.get_ident() not in threads  # db_pool_size
    assert len(store._kept) == len(set(threads))  # one connection per reader thread, kept
    before = sessions(url)
    assert len(before) <= 2 * 2
    assert {state for _, state in before} == {"idle"}  # autocommit: no snapshot held
    read_all(store, 40)
    assert sessions(url) == before  # the same connections again, none opened or closed


def test_a_postgres_reader_whose_connection_was_dropped_reads_again(pg_store):
    store, url = pg_store
    assert reserve_rows(store, [row(1)]) == [1]
    read_all(store, 10)
    with psycopg.connect(url, autocommit=True) as connection:  # as a server restart would
        ended = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    assert len(ended) >= len(store._kept) >= 1  # the readers' (and any the pool holds)
    found = [holder for _, (holder, _) in read_all(store, 6)]
    assert [holder["id"] for holder in found[1::3]] == ["exec-1", "exec-1"]


def test_a_postgres_read_that_fails_on_a_live_connection_is_not_retried(pg_store):
    store, url = pg_store
    read_all(store, 1)
    opened = []
    event.listen(store.engine, "connect", lambda *_: opened.append(1))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("ALTER TABLE executions RENAME TO moved")
    with pytest.raises(StoreUnavailable, match="executions"):
        read_all(store, 1)
    assert opened == []  # an error that is not a dropped connection is answered, not retried


def test_postgres_reads_after_dispose_are_refused_as_an_outage(pg_store):
    store, _ = pg_store
    store.dispose()
    with pytest.raises(StoreUnavailable, match="closed"):
        read_all(store, 1)


def pages(url: str) -> dict[str, int]:
    """Each row's heap page."""
    with psycopg.connect(url, autocommit=True) as connection:
        found = connection.execute("SELECT id, (ctid::text::point)[0] FROM executions")
        return {exec_id: int(page) for exec_id, page in found.fetchall()}


def test_a_postgres_row_finishes_on_its_own_page_adding_nothing_to_its_indexes(
    openexec_client, approver, postgres_database
):
    # Rows reserved together, as under load, fill their pages before any of them finishes; each
    # outcome must still fit beside its row. A row that stays on its page with no indexed
    # column changed is a HOT update: no new entry in the table's indexes. The rows and the
    # outcome are copies of a real clawshield execution's.
    url = postgres_database()
    client = openexec_client(openexec_echo, db_url=url, **approver.settings())
    artifact = approver.v1("echo", {"msg": "hello"})
    answer = execute(client, "echo", {"msg": "hello"}, "model", approval_artifact=artifact)
    assert answer.status_code == 200
    [model] = stored_rows(client)
    outcome = {column: model[column] for column in OUTCOME_COLUMNS}
    store = client.app.state.engine.store
    rows = [
        model
        | dict.fromkeys(OUTCOME_COLUMNS)
        | {"id": str(uuid.uuid4()), "nonce": f"n-{n}", "approval_id": str(uuid.uuid4())}
        | {"approval_signed_sha256": uuid.uuid4().hex * 2, "status": "running"}
        for n in range(60)
    ]
    assert reserve_rows(store, rows) == [1] * len(rows)
    before = pages(url)
    assert len(set(before.values())) >= 3  # several pages, each filled by reservations

    async def finish() -> list[int]:
        return list(await asyncio.gather(*(store.finish(row["id"], outcome) for row in rows)))

    assert asyncio.run(finish()) == [1] * len(rows)
    assert pages(url) == before


def test_a_batch_postgres_rolls_back_to_break_a_deadlock_is_applied_again(pg_store):
    """Two workers' group commits that claim the same nonces in opposite orders deadlock, and
    PostgreSQL rolls one back: its writes must be applied again, not answered 503 (a batch of
    concurrent requests did, in a two-instance test under load)."""
    store, url = pg_store
    columns = list(running_row("t-x", "nonce-x"))
    insert = (
        f"INSERT INTO executions ({', '.join(columns)}) "
        f"VALUES ({', '.join(f'%({name})s' for name in columns)})"
    )
    outcome: list = []

    def batch() -> None:  # nonce-y, then nonce-x, which the other session holds uncommitted
        async def reserve() -> list:
            rows = (running_row("b-y", "nonce-y"), running_row("b-x", "nonce-x"))
            writes = [store.reserve(row) for row in rows]  # submitted together: one batch
            return await asyncio.gather(*writes, return_exceptions=True)

        outcome.extend(asyncio.run(reserve()))

    with psycopg.connect(url) as other:  # one transaction, held open
        other.execute(insert, running_row("t-x", "nonce-x"))
        writer = threading.Thread(target=batch)
        writer.start()
        wait_until(lambda: ("Lock",) in waits(url))  # the batch waits for nonce-x
        try:  # nonce-y: each now waits for the other, until PostgreSQL breaks the cycle
            other.execute(insert, running_row("t-y", "nonce-y"))
        except psycopg.errors.DeadlockDetected:  # this side was chosen: the batch went on
            other.rollback()
        other.commit()
        writer.join(timeout=60)
    assert not any(isinstance(result, Exception) for result in outcome), outcome
    nonces = sorted(row["nonce"] for row in rows_of(url))
    assert nonces == ["nonce-x", "nonce-y"]  # each claimed once, by one side or the other


def waits(url: str) -> list[tuple[str]]:
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(
            "SELECT wait_event_type FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()


def rows_of(url: str) -> list[dict]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as connection:
        return connection.execute("SELECT id, nonce FROM executions").fetchall()
