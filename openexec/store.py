"""Persistence of executions. The database, not Python, enforces exactly-once:
a unique ``(tenant, nonce)`` pair and a unique ``approval_id`` make reservation one INSERT.

SQLModel declares the tables and SQLAlchemy builds every statement and manages the pool, but
the statements of the request path are compiled once at startup and run on the driver's own
cursor: per request, SQLAlchemy's execution machinery cost more than the query itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import (
    Column,
    Engine,
    String,
    UniqueConstraint,
    and_,
    bindparam,
    create_engine,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql import Executable
from sqlmodel import Field, SQLModel

from openexec.settings import ConfigError, Settings

log = logging.getLogger("openexec.store")

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x6F70656E65786563  # pg_advisory_xact_lock key: "openexec"
NO_TENANT = ""  # (tenant, nonce) must be unique, and NULLs never collide in a unique index
WAL_AUTOCHECKPOINT_PAGES = 20_000  # a safety net: the Checkpointer normally runs long before
KEPT_READERS = 4  # threads that keep a SQLite read connection of their own; others use the pool
LOCK_WAIT_S = 30.0  # like SQLite's busy timeout: a writer waits this long for another's lock


class Execution(SQLModel, table=True):
    """One reserved nonce: what was asked, under which approval, and how it ended."""

    __tablename__ = "executions"
    __table_args__ = (UniqueConstraint("tenant", "nonce", name="uq_executions_tenant_nonce"),)

    id: str = Field(primary_key=True, max_length=36)
    tenant: str = Field(max_length=255)
    nonce: str = Field(max_length=255)
    action: str = Field(max_length=64)
    plugin_name: str = Field(max_length=255)
    plugin_version: str = Field(max_length=64)
    mode: str = Field(max_length=16)
    request_sha256: str = Field(max_length=64)
    payload: str
    approval_id: str | None = Field(default=None, sa_column=Column(String(255), unique=True))
    approval_format: str | None = Field(default=None, max_length=32)
    approval_sha256: str | None = Field(default=None, max_length=64)
    approval_key_id: str | None = Field(default=None, max_length=16)
    status: str = Field(max_length=16)
    result: str | None = None
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    started_at: str = Field(max_length=40)
    completed_at: str | None = Field(default=None, max_length=40)
    lease_expires_at: float
    receipt: str | None = Field(default=None, max_length=64)
    receipt_envelope: str | None = None
    response: str | None = None


class SchemaInfo(SQLModel, table=True):
    """The schema version this database was created with."""

    __tablename__ = "openexec_schema"

    version: int = Field(primary_key=True)


EXECUTIONS = Execution.__table__
StoredExecution = dict[str, Any]  # one executions row, keyed by column name
EMPTY_ROW: StoredExecution = dict.fromkeys(EXECUTIONS.columns.keys())

LOOKUP = select(EXECUTIONS).where(
    or_(
        and_(EXECUTIONS.c.tenant == bindparam("tenant"), EXECUTIONS.c.nonce == bindparam("nonce")),
        EXECUTIONS.c.approval_id == bindparam("approval_id"),
    )
)
GET = select(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("exec_id"))
FINISH = update(EXECUTIONS).where(
    EXECUTIONS.c.id == bindparam("target_id"), EXECUTIONS.c.status == "running"
)
EXPIRE = FINISH.where(EXECUTIONS.c.lease_expires_at < bindparam("now"))
OUTCOME_COLUMNS = (  # what FINISH and EXPIRE set
    "status",
    "result",
    "error_code",
    "error_message",
    "completed_at",
    "receipt",
    "receipt_envelope",
    "response",
)


class StoreUnavailable(Exception):
    """The database did not answer; nothing that depended on it happened."""


class Compiled:
    """A statement compiled once for the store's dialect and run on a driver cursor."""

    def __init__(
        self, statement: Executable, engine: Engine, set_columns: tuple[str, ...] = ()
    ) -> None:
        compiled = statement.compile(dialect=engine.dialect, column_keys=list(set_columns))
        self.sql = str(compiled)
        # The values the statement holds itself (``status = 'running'``), bound by name. Taken
        # once: SQLAlchemy's construct_params per execution cost the writer thread 15 µs.
        self._constants = {
            compiled.bind_names[bind]: bind.effective_value
            for bind in compiled.binds.values()
            if not bind.required
        }

    def run(self, cursor: Any, params: dict[str, Any]) -> Any:
        """Execute with ``params`` (one per bound column or ``bindparam``) and the constants."""
        return cursor.execute(self.sql, {**params, **self._constants})


class Store:
    """The only code that talks to the database.

    Reads run in the caller's thread. Writes go to one writer thread per process, which
    commits whatever is queued in a single transaction: one durable commit serves many
    executions, and the process's threads never contend for the database's write lock.
    Writes are awaited from an event loop.
    """

    def __init__(self, settings: Settings) -> None:
        self.kind = settings.database_kind
        self.engine = _create_engine(settings)
        self._safe_url = settings.safe_db_url
        self._errors = DriverErrors(self.engine)
        self._readers = threading.local()
        self._kept: list[Any] = []  # the readers' connections, closed by dispose()
        self._kept_lock = threading.Lock()
        self._closed = False
        self._lookup = Compiled(LOOKUP, self.engine)
        self._get = Compiled(GET, self.engine)
        self._reserve = Compiled(_insert_if_absent(self.kind), self.engine, tuple(EMPTY_ROW))
        self._finish = Compiled(FINISH, self.engine, OUTCOME_COLUMNS)
        self._expire = Compiled(EXPIRE, self.engine, OUTCOME_COLUMNS)
        self._checkpointer = Checkpointer(self._checkout) if self.kind == "sqlite" else None
        self._writer = GroupCommitWriter(
            self._checkout,
            begin_immediately=self.kind == "sqlite",
            lock=_open_write_lock(settings),
            after_commit=self._checkpointer.poke if self._checkpointer else None,
        )

    def prepare(self) -> None:
        """Create the schema on a new database; refuse one whose schema version differs."""
        try:
            for attempt in range(3):
                try:
                    self._prepare_once()
                    return
                except (IntegrityError, SQLAlchemyError):
                    if attempt == 2:  # several workers creating the schema at once: retry
                        raise
        except SQLAlchemyError as exc:
            raise ConfigError(
                "OPENEXEC_DB_URL",
                f"cannot open the database at {self._safe_url}: {_first_line(exc)}",
            ) from None

    def _prepare_once(self) -> None:
        # Workers and instances starting together must create the schema once, atomically:
        # an advisory lock on PostgreSQL; on SQLite a write transaction taken up front (pysqlite
        # would otherwise commit each CREATE TABLE on its own).
        with self.engine.begin() as connection:
            if self.kind == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            existing = set(self.engine.dialect.get_table_names(connection))
            if "executions" in existing and "openexec_schema" not in existing:
                raise ConfigError(
                    "OPENEXEC_DB_URL",
                    "the database has an executions table without a schema version: "
                    "it was not created by OpenExec; use another database",
                )
            SQLModel.metadata.create_all(connection)
            versions = connection.execute(select(SchemaInfo.version)).scalars().all()
            if not versions:
                connection.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            elif versions != [SCHEMA_VERSION]:
                raise ConfigError(
                    "OPENEXEC_DB_URL",
                    f"the database schema is version {max(versions)}, this OpenExec "
                    f"uses version {SCHEMA_VERSION}; refusing to run against it",
                )

    def ping(self) -> None:
        """Whether the database answers a new connection (readiness)."""
        with self._checkout() as connection:
            connection.cursor().execute("SELECT 1").fetchall()

    def lookup(
        self, tenant: str | None, nonce: str, approval_id: str | None
    ) -> tuple[StoredExecution | None, bool]:
        """The row holding this nonce, if any, and whether the approval already backed one:
        steps 3 and 4 of an execution in one query."""
        tenant = tenant or NO_TENANT
        params = {"tenant": tenant, "nonce": nonce, "approval_id": approval_id}
        rows = self._read(self._lookup, params)
        holder = next((r for r in rows if r["tenant"] == tenant and r["nonce"] == nonce), None)
        used = approval_id is not None and any(r["approval_id"] == approval_id for r in rows)
        return holder, used

    def get(self, exec_id: str) -> StoredExecution | None:
        rows = self._read(self._get, {"exec_id": exec_id})
        return rows[0] if rows else None

    def reserve(self, row: StoredExecution) -> asyncio.Future[int]:
        """Insert the running row: resolves to 1, or to 0 when a unique constraint (nonce or
        approval) already holds a row, decided by the database."""
        return self._writer.submit(self._reserve, {**EMPTY_ROW, **row})

    def finish(self, exec_id: str, fields: dict[str, Any]) -> asyncio.Future[int]:
        """Record an outcome while the row is still running: resolves to 1, or 0 if it no
        longer was."""
        return self._writer.submit(self._finish, {"target_id": exec_id, **fields})

    def expire(self, exec_id: str, now: float, fields: dict[str, Any]) -> asyncio.Future[int]:
        """Settle a running row whose lease has passed: 1, or 0 if it finished or was settled."""
        return self._writer.submit(self._expire, {"target_id": exec_id, "now": now, **fields})

    def dispose(self) -> None:
        self._writer.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._kept_lock:
            self._closed = True
            for connection in self._kept:
                with contextlib.suppress(Exception):
                    connection.close()
            self._kept.clear()
        self.engine.dispose()

    @contextmanager
    def _checkout(self) -> Iterator[Any]:
        """A pooled driver connection, returned to the pool afterwards."""
        connection = self._connect()
        try:
            with self._driver_errors(connection):
                yield connection
        finally:
            connection.close()

    def _read(self, statement: Compiled, params: dict[str, Any]) -> list[StoredExecution]:
        """Run a query. On SQLite a few threads (in the service, the event loop's) keep a
        connection of their own, since a pool checkout and return cost more than the query; it
        is never inside a transaction between reads. Other threads, and PostgreSQL, use the
        pool. The kept connection's path, the request path's one query, is written without
        context managers."""
        connection = getattr(self._readers, "connection", None)
        if self.kind == "sqlite" and (connection is None or not connection.is_valid):
            connection = self._readers.connection = self._keep_reader(connection)
        if connection is None:
            with self._checkout() as pooled:
                return _dicts(statement.run(pooled.cursor(), params))
        try:
            return _dicts(statement.run(connection.cursor(), params))
        except self._errors.any as exc:
            self._fail(connection, exc)

    def _keep_reader(self, broken: Any) -> Any:
        with self._kept_lock:
            if broken in self._kept:  # invalidated by an error, or closed by dispose()
                self._kept.remove(broken)
            if self._closed or len(self._kept) >= KEPT_READERS:
                return None
            connection = self._connect()
            self._kept.append(connection)
            return connection

    def _connect(self) -> Any:
        try:
            return self.engine.raw_connection()
        except (SQLAlchemyError, self._errors.any) as exc:  # the pool wraps only some
            raise StoreUnavailable(_first_line(exc)) from exc

    @contextmanager
    def _driver_errors(self, connection: Any) -> Iterator[None]:
        try:
            yield
        except self._errors.any as exc:
            self._fail(connection, exc)

    def _fail(self, connection: Any, exc: Exception) -> NoReturn:
        """Raise what a driver error means. A refused value (a constraint, a bad type) stays
        the driver's error; any other is an outage, and the connection is discarded."""
        if isinstance(exc, self._errors.refused):
            with contextlib.suppress(self._errors.any):
                connection.rollback()
            raise exc
        connection.invalidate()  # possibly broken (a restarted server): never reuse it
        raise StoreUnavailable(_first_line(exc)) from exc


class DriverErrors:
    """The driver's PEP 249 exception classes, which raw cursors raise."""

    def __init__(self, engine: Engine) -> None:
        dbapi = engine.dialect.loaded_dbapi
        self.refused: tuple[type[Exception], ...] = (dbapi.IntegrityError, dbapi.DataError)
        self.any: type[Exception] = dbapi.Error


_Write = tuple[Compiled, dict[str, Any], asyncio.Future[int]]


class GroupCommitWriter:
    """Applies writes in one thread, committing everything queued together (group commit).

    Each write resolves its future with its row count once the commit is durable, or with
    StoreUnavailable (or the driver's error for a refused value) when the database did not
    take it: then nothing of it happened. A batch's futures are resolved with one wake-up of
    their event loop, and the thread makes as few calls that release the GIL as it can: each
    costs a wait for the event loop's thread to hand the GIL back.

    On SQLite, the writers of several worker processes take a ``ProcessWriteLock`` before
    SQLite's own write lock, which they then never wait for.
    """

    MAX_BATCH = 256

    def __init__(
        self,
        checkout: Any,
        begin_immediately: bool,
        lock: ProcessWriteLock | None,
        after_commit: Callable[[], None] | None,
    ) -> None:
        self._checkout = checkout
        self._begin_immediately = begin_immediately  # SQLite: take the write lock up front
        self._lock = lock
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def submit(self, statement: Compiled, params: dict[str, Any]) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with self._start_lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="openexec-store-writer", daemon=True
                )
                self._thread.start()
        self._queue.put((statement, params, future))
        return future

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
        if self._lock is not None:
            self._lock.close()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, last = [first], False
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    last = True
                    break
                batch.append(item)
            try:
                outcomes = self._commit(batch)
            except BaseException as exc:  # a bug: fail this batch, never the thread
                log.exception("the store writer failed a batch of %d writes", len(batch))
                outcomes = [StoreUnavailable(f"the store writer failed: {exc!r}")] * len(batch)
            _settle(batch, outcomes)
            if last:
                return

    def _commit(self, batch: list[_Write]) -> list[int | Exception]:
        if self._lock is None:
            return self._apply(batch)
        try:
            self._lock.acquire()
        except StoreUnavailable as exc:
            return [exc] * len(batch)
        try:
            return self._apply(batch)
        finally:
            self._lock.release_unless(busy=not self._queue.empty())

    def _apply(self, batch: list[_Write]) -> list[int | Exception]:
        """Row counts, or for a write the database did not take, the reason."""
        try:
            with self._checkout() as connection:
                cursor = connection.cursor()
                if self._begin_immediately:
                    cursor.execute("BEGIN IMMEDIATE")
                counts = [sql.run(cursor, params).rowcount for sql, params, _ in batch]
                connection.commit()
        except StoreUnavailable as exc:  # an outage: the whole batch failed, at once
            return [exc] * len(batch)
        except Exception as exc:  # a value the database refused
            if len(batch) > 1:  # apply them one by one, so one bad write fails only itself
                return [self._apply([write])[0] for write in batch]
            return [exc]
        if self._after_commit is not None:
            try:
                self._after_commit()
            except Exception:  # the batch is committed whatever happens here
                log.exception("after a commit")
        return counts


def _settle(batch: list[_Write], outcomes: list[int | Exception]) -> None:
    """Resolve each event loop's futures of a batch in one callback on that loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
    for (_, _, future), outcome in zip(batch, outcomes, strict=True):
        by_loop[future.get_loop()].append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[int], int | Exception]]) -> None:
    for future, outcome in settled:
        if future.done():  # cancelled: the caller stopped waiting
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Checkpointer:
    """Copies SQLite's write-ahead log into the database file from its own thread, at most
    five times a second while there are commits. Left to itself, SQLite checkpoints inside the
    commit that crosses 1,000 WAL pages, and every request waiting on that batch waits for it
    too. A PASSIVE checkpoint never blocks the writer or the readers, but its fsync shares the
    disk with theirs: in a store of a million rows, checkpoints a second apart copied up to
    20,000 pages each, and commits beside them waited up to 117 ms (bench/README.md)."""

    INTERVAL_S = 0.2

    def __init__(self, checkout: Any) -> None:
        self._checkout = checkout
        self._committed = threading.Event()
        self._closing = threading.Event()
        self._progress = threading.Condition()
        self.runs = 0  # checkpoints attempted so far
        self._thread = threading.Thread(
            target=self._run, name="openexec-wal-checkpoint", daemon=True
        )

    def poke(self) -> None:
        """Called by the writer after each commit (from its thread only)."""
        if self._thread.ident is None and not self._closing.is_set():
            self._thread.start()
        self._committed.set()

    def wait_for_runs(self, runs: int, timeout: float) -> bool:
        """Wait until at least ``runs`` checkpoints have been attempted."""
        with self._progress:
            return self._progress.wait_for(lambda: self.runs >= runs, timeout)

    def close(self) -> None:
        self._closing.set()
        self._committed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while self._committed.wait() and not self._closing.is_set():
            self._committed.clear()
            try:
                with self._checkout() as connection:
                    connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception:  # the next commit tries again; SQLite's own checkpoint remains
                log.warning("WAL checkpoint failed", exc_info=True)
            with self._progress:
                self.runs += 1
                self._progress.notify_all()
            self._closing.wait(self.INTERVAL_S)


class ProcessWriteLock:
    """An exclusive ``flock`` the writers of all worker processes queue on (SQLite).

    SQLite's busy handler makes a writer that finds the database locked sleep, backing off to
    100 ms at a time; a writer polls this lock every millisecond instead, for up to
    ``LOCK_WAIT_S`` (then the batch fails with StoreUnavailable, as SQLite's busy timeout would).
    It is kept from one batch to the next while writes are queued, since each take and release
    costs the writer thread a hand-off of the GIL, and given up when the queue runs dry or
    after ``HOLD_S``, so that the other workers' writers get their turns.
    """

    HOLD_S = 0.01
    POLL_S = 0.001

    def __init__(self, path: Path) -> None:
        self._descriptor = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        self._held_since: float | None = None

    def acquire(self) -> None:
        if self._held_since is not None:
            return
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"another worker held the write lock for {LOCK_WAIT_S:g} s"
                    ) from None
                time.sleep(self.POLL_S)
        self._held_since = time.monotonic()

    def release_unless(self, busy: bool) -> None:
        held_since = self._held_since
        if held_since is not None and (not busy or time.monotonic() - held_since > self.HOLD_S):
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            self._held_since = None

    def close(self) -> None:
        os.close(self._descriptor)  # releases the lock too


def _open_write_lock(settings: Settings) -> ProcessWriteLock | None:
    """The SQLite workers' lock file beside the database; opened at startup, so that one this
    process cannot use stops the service with a clear message instead of failing writes."""
    path = settings.sqlite_path
    if path is None:
        return None
    lock_path = path.with_name(path.name + "-writer-lock")
    try:
        return ProcessWriteLock(lock_path)
    except OSError as exc:
        raise ConfigError(
            "OPENEXEC_DB_URL", f"cannot open the workers' lock file {lock_path}: {exc.strerror}"
        ) from None


def _dicts(cursor: Any) -> list[StoredExecution]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _insert_if_absent(kind: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a taken nonce or approval inserts nothing, and the
    driver's rowcount (SQLite's changes(), PostgreSQL's command tag) says 0."""
    dialect_insert = postgresql_insert if kind == "postgresql" else sqlite_insert
    return dialect_insert(EXECUTIONS).on_conflict_do_nothing()


def _create_engine(settings: Settings) -> Engine:
    if settings.database_kind == "postgresql":
        # Each worker process has its own pool: instances x workers x 2 x pool size must stay
        # below the server's max_connections. pre_ping replaces connections a restart broke.
        return create_engine(
            settings.db_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=True,
            pool_timeout=10,
            connect_args={"connect_timeout": 5},
        )
    path = settings.sqlite_path
    if path is not None:  # created private: it holds every payload and result
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    engine = create_engine(
        settings.db_url,
        paramstyle="named",  # like psycopg's, so compiled statements take a dict of parameters
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _durable_shared_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(
            "PRAGMA journal_mode=WAL"
        )  # readers and one writer at a time, across workers
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    return engine


def _first_line(exc: BaseException) -> str:
    """A short, password-free description of a database error."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
