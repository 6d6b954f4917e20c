"""Persistence of executions. The database, not Python, enforces exactly-once:
a unique ``(tenant, nonce)`` pair, a unique ``approval_id`` and a unique
``approval_signed_sha256`` (what the approval's signature covers) make reservation one INSERT.

SQLModel declares the tables and SQLAlchemy builds every statement and manages the pool, but
the statements of the request path are compiled once at startup and run on the driver's own
cursor: per request, SQLAlchemy's execution machinery cost more than the query itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
T = TypeVar("T")

SCHEMA_VERSION = 2  # 2 added approval_signed_sha256 and receipt_keys; upgrade_schema goes 1 -> 2
UPGRADE_COMMAND = "openexec db upgrade"
SCHEMA_LOCK = 0x6F70656E65786563  # pg_advisory_xact_lock key: "openexec"
NO_TENANT = ""  # (tenant, nonce) must be unique, and NULLs never collide in a unique index
WAL_AUTOCHECKPOINT_PAGES = 20_000  # a safety net: the Checkpointer normally runs long before
KEPT_READERS = 4  # threads that keep a SQLite read connection of their own; others use the pool
LOCK_WAIT_S = 30.0  # like SQLite's busy timeout: a writer waits this long for another's lock
# PostgreSQL's heap layout. A row is inserted "running" and updated soon after with its outcome.
# That update adds nothing to the table's indexes (a HOT update) only if the new version fits on
# the row's page, but under load a page fills with reservations before they finish. So pages
# keep 60% free for the outcomes to come. And once a row passes 2 KB, TOAST moves values out of
# line until it is under 1 KB, not 2 KB: both the response and the receipt envelope go, whatever
# a few bytes of nonce or payload add, and an outcome held in line stays near 530 bytes.
POSTGRES_STORAGE = {"fillfactor": 40, "toast_tuple_target": 1024}


class Execution(SQLModel, table=True):
    """One reserved nonce: what was asked, under which approval, and how it ended."""

    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("tenant", "nonce", name="uq_executions_tenant_nonce"),
        {"postgresql_with": POSTGRES_STORAGE},
    )

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
    # An approval is consumed under its id and under what its signature covers: a v1 artifact
    # can name other ids with the same signed bytes (openexec.approvals). A unique index, not a
    # constraint, so that ``upgrade`` can add it to an existing SQLite table.
    approval_signed_sha256: str | None = Field(
        default=None, sa_column=Column(String(64), unique=True, index=True)
    )
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


class ReceiptKeyRecord(SQLModel, table=True):
    """A receipt key the service started with, by key id: its receipts may be in the store, so
    it must stay among the trusted keys. Kept apart from the executions, so that checking it at
    startup reads a few rows, not every receipt."""

    __tablename__ = "receipt_keys"

    key_id: str = Field(primary_key=True, max_length=16)
    first_used_at: str = Field(max_length=40)


class SchemaInfo(SQLModel, table=True):
    """The schema version this database was created with."""

    __tablename__ = "openexec_schema"

    version: int = Field(primary_key=True)


EXECUTIONS = Execution.__table__
RECEIPT_KEYS = ReceiptKeyRecord.__table__
StoredExecution = dict[str, Any]  # one executions row, keyed by column name
EMPTY_ROW: StoredExecution = dict.fromkeys(EXECUTIONS.columns.keys())

# A lookup's row lacks the receipt envelope: the response holds it too, and only the receipt
# endpoints read it on its own (through GET). On PostgreSQL both are out of line, and a replay
# that read both would fetch twice what it needs.
LOOKUP = select(*(c for c in EXECUTIONS.columns if c.name != "receipt_envelope")).where(
    or_(
        and_(EXECUTIONS.c.tenant == bindparam("tenant"), EXECUTIONS.c.nonce == bindparam("nonce")),
        EXECUTIONS.c.approval_id == bindparam("approval_id"),
        EXECUTIONS.c.approval_signed_sha256 == bindparam("approval_signed_sha256"),
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

    Reads run where they cost least (``read``). Writes are submitted from one event loop at a
    time and committed in batches by a ``GroupCommitWriter``: one durable commit serves many
    executions, and the process's threads never contend for the database's write lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.kind = settings.database_kind
        self.engine = _create_engine(settings)
        self._safe_url = settings.safe_db_url
        self._errors = DriverErrors(self.engine)
        self._readers = threading.local()
        self._kept: list[Any] = []  # the readers' connections, closed by dispose()
        self._kept_lock = threading.Lock()
        self._connecting = 0  # readers opening a connection to keep, outside the lock
        self._kept_limit = KEPT_READERS if self.kind == "sqlite" else settings.db_pool_size
        self._reader_threads = (
            ThreadPoolExecutor(settings.db_pool_size, thread_name_prefix="openexec-store-reader")
            if self.kind == "postgresql"
            else None
        )
        self._closed = False  # dispose() began: no more kept read connections
        self._lookup = Compiled(LOOKUP, self.engine)
        self._get = Compiled(GET, self.engine)
        self._reserve = Compiled(_insert_if_absent(self.kind), self.engine, tuple(EMPTY_ROW))
        self._finish = Compiled(FINISH, self.engine, OUTCOME_COLUMNS)
        self._expire = Compiled(EXPIRE, self.engine, OUTCOME_COLUMNS)
        self._checkpointer = _open_checkpointer(settings, self._checkout)
        self._writer = GroupCommitWriter(
            self._checkout,
            connect=self._connect if self.kind == "sqlite" else None,
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
        with _schema_transaction(self.engine) as connection:
            version = _schema_version(connection)
            if version is None:
                SQLModel.metadata.create_all(connection)
                connection.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            elif version == 1:
                raise ConfigError(
                    "OPENEXEC_DB_URL",
                    f"the database schema is version {version}, this OpenExec uses version "
                    f"{SCHEMA_VERSION}: run `{UPGRADE_COMMAND}` (with the same settings) first",
                )
            elif version != SCHEMA_VERSION:
                raise _unknown_schema(version)

    def ping(self) -> None:
        """Whether the database answers a new connection (readiness)."""
        with self._checkout() as connection:
            connection.cursor().execute("SELECT 1").fetchall()

    async def read(self, query: Callable[..., T], *args: Any) -> T:
        """Run a read method (``lookup``, ``get``) for the event loop. On SQLite it runs right
        here: a point query on a local WAL file (where readers never wait for the writer) costs
        less than a hop to a worker thread and back. PostgreSQL's wait on the network, so they
        run on the store's reader threads, one per pooled connection, each keeping its own."""
        if self._reader_threads is None:
            return query(*args)
        try:
            reading = asyncio.get_running_loop().run_in_executor(self._reader_threads, query, *args)
        except RuntimeError as exc:  # the threads were shut down
            raise StoreUnavailable("the store is closed") from exc
        return await reading

    def lookup(
        self,
        tenant: str | None,
        nonce: str,
        approval_id: str | None,
        approval_signed_sha256: str | None = None,
    ) -> tuple[StoredExecution | None, bool]:
        """The row holding this nonce, if any, and whether the approval already backed one
        (under its id or its signed bytes): steps 3 and 4 of an execution in one query."""
        tenant = tenant or NO_TENANT
        params = {
            "tenant": tenant,
            "nonce": nonce,
            "approval_id": approval_id,
            "approval_signed_sha256": approval_signed_sha256,
        }
        rows = self._read(self._lookup, params)
        holder = next((r for r in rows if r["tenant"] == tenant and r["nonce"] == nonce), None)
        used = any(
            (approval_id is not None and r["approval_id"] == approval_id)
            or (
                approval_signed_sha256 is not None
                and r["approval_signed_sha256"] == approval_signed_sha256
            )
            for r in rows
        )
        return holder, used

    def receipt_key_ids(self) -> frozenset[str]:
        """Every receipt key this store's executions may have been signed with: read once at
        startup, so the service refuses to start without one of them (openexec.receipts)."""
        with self.engine.connect() as connection:
            return frozenset(connection.execute(select(ReceiptKeyRecord.key_id)).scalars())

    def record_receipt_key(self, key_id: str, now: str) -> None:
        """Note that this key signs receipts from now on (at startup, before it signs any)."""
        with self.engine.begin() as connection:
            connection.execute(
                _insert_statement(self.kind)(RECEIPT_KEYS)
                .values(key_id=key_id, first_used_at=now)
                .on_conflict_do_nothing()
            )

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
        """Close the store; a second call does nothing (its lock files' descriptors are closed
        once, never a number the process has since given to another file)."""
        with self._kept_lock:
            if self._closed:
                return
            self._closed = True
        self._writer.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._reader_threads is not None:
            self._reader_threads.shutdown(wait=True, cancel_futures=True)
        with self._kept_lock:
            for connection in self._kept:  # discarded, never pooled again: they autocommit
                if connection.is_valid:  # not already discarded after an error
                    with contextlib.suppress(Exception):
                        connection.invalidate()
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
        """Run a query. The first few threads to read keep a connection of their own (in the
        service, the event loop on SQLite, the reader threads on PostgreSQL), since a pool
        checkout costs more than the query: on PostgreSQL a ping, a transaction and its
        rollback, each a round trip. A kept connection is never inside a transaction between
        reads (PostgreSQL's autocommit). Other threads use the pool. A connection PostgreSQL
        dropped (a restart) is replaced once, as a read changes nothing; any other error is
        not retried. The kept path, the request path's one query, is written without context
        managers."""
        retry = self.kind == "postgresql"
        while True:
            connection = getattr(self._readers, "connection", None)
            if connection is None or not connection.is_valid:
                connection = self._readers.connection = self._keep_reader(connection)
            if connection is None:
                with self._checkout() as pooled:
                    return _dicts(statement.run(pooled.cursor(), params))
            try:
                return _dicts(statement.run(connection.cursor(), params))
            except self._errors.any as exc:
                dropped = self.engine.dialect.is_disconnect(exc, connection.dbapi_connection, None)
                if not (retry and dropped):
                    self._fail(connection, exc)
                connection.invalidate()
                retry = False

    def _keep_reader(self, broken: Any) -> Any:
        """A connection for this thread to keep, or None when enough threads keep one. It is
        opened outside the lock: in an outage, readers must not wait out each other's connect
        timeouts."""
        with self._kept_lock:
            if broken in self._kept:  # invalidated by an error, or by dispose()
                self._kept.remove(broken)
            if self._closed or len(self._kept) + self._connecting >= self._kept_limit:
                return None
            self._connecting += 1
        try:
            connection = self._open_reader()
        except BaseException:
            with self._kept_lock:
                self._connecting -= 1
            raise
        with self._kept_lock:
            self._connecting -= 1
            if not self._closed:
                self._kept.append(connection)
                return connection
        connection.invalidate()  # dispose() came first
        return None

    def _open_reader(self) -> Any:
        connection = self._connect()
        if self.kind == "postgresql":
            try:
                connection.driver_connection.autocommit = True
            except self._errors.any as exc:
                connection.invalidate()  # never back in the pool half set up
                raise StoreUnavailable(_first_line(exc)) from exc
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
    """Commits an event loop's writes in batches: whatever is submitted while one batch
    commits goes into the next transaction together (group commit).

    Each write resolves its future with its row count once the commit is durable, or with
    StoreUnavailable (or the driver's error for a refused value) when the database did not
    take it: then nothing of it happened. Batches form on the event loop, one at a time, and
    the commit, which waits for the disk, runs in the writer's one thread.

    On SQLite the event loop runs a batch's statements itself, on a connection the writer
    keeps, and hands the thread only the commit. The statements take microseconds, while a
    thread that ran them would need the GIL back after each call into the driver, and the
    event loop pays for every such hand-off. The loop never waits for a lock: the workers'
    lock (``ProcessWriteLock``, taken before SQLite's own) is tried on a timer, and SQLite's
    write lock held by another process, or any failing statement, sends the whole batch to the
    thread, which waits there or applies the writes one by one. That is also how PostgreSQL,
    whose statements wait on the network, always runs.
    """

    MAX_BATCH = 256

    def __init__(
        self,
        checkout: Callable[[], contextlib.AbstractContextManager[Any]],
        connect: Callable[[], Any] | None,
        lock: ProcessWriteLock | None,
        after_commit: Callable[[], None] | None,
    ) -> None:
        self._checkout = checkout
        self._connect = connect  # SQLite: opens the connection the event loop keeps
        self._lock = lock
        self._after_commit = after_commit
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="openexec-store-writer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Write] = []
        self._flushing = False  # a batch is committing, or the next one is scheduled
        self._kept: Any = None
        self._closed = False

    def submit(self, statement: Compiled, params: dict[str, Any]) -> asyncio.Future[int]:
        """Queue a write from the event loop's thread; batches start on that loop."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((statement, params, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # writes submitted in this turn of the loop join it
        return future

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writes come from one event loop at a time (a server has one; tests run several one
        after another). A loop that closed mid-batch left its batch to nobody: wait for the
        thread to finish it, then start afresh, without the lock."""
        if self._flushing:
            if self._loop is not None and not self._loop.is_closed():
                raise StoreUnavailable("the store's writes belong to another event loop")
            self._thread.submit(int).result()  # whatever the closed loop left in the thread
            self._pending, self._flushing = [], False
            self._discard_kept()
            if self._lock is not None:
                self._lock.release_unless(busy=False)
        self._loop = loop

    def close(self) -> None:
        """Wait for the batch being committed; writes submitted after this are refused."""
        self._closed = True
        self._thread.shutdown(wait=True)
        if self._kept is not None:
            with contextlib.suppress(Exception):
                self._kept.close()
            self._kept = None
        if self._lock is not None:
            self._lock.close()

    def _flush(self) -> None:
        """Start the next batch (on the event loop)."""
        batch = self._pending[: self.MAX_BATCH]
        del self._pending[: self.MAX_BATCH]
        if not batch:
            self._flushing = False
            return
        try:
            self._start(batch)
        except Exception as exc:  # a bug: fail this batch, never the writer
            log.exception("the store writer failed a batch of %d writes", len(batch))
            self._discard_kept()
            self._fail_all(batch, StoreUnavailable(f"the store writer failed: {exc!r}"))

    def _start(self, batch: list[_Write]) -> None:
        if self._closed:
            self._fail_all(batch, StoreUnavailable("the store is closed"))
            return
        try:
            if self._lock is not None and not self._lock.try_acquire():
                self._pending[:0] = batch  # try again soon, with whatever joined meanwhile
                asyncio.get_running_loop().call_later(self._lock.POLL_S, self._flush)
                return
            counts = self._run_on_loop(batch) if self._connect is not None else None
        except StoreUnavailable as exc:  # no connection, or the lock never came: fail at once
            self._fail_all(batch, exc)
            return
        if counts is None:
            work = functools.partial(self._apply, batch)
        else:
            work = functools.partial(self._commit_kept, counts)
        done = asyncio.get_running_loop().run_in_executor(self._thread, work)
        done.add_done_callback(functools.partial(self._committed, batch))

    def _run_on_loop(self, batch: list[_Write]) -> list[int | Exception] | None:
        """The batch's row counts, its statements run in a transaction on the kept connection
        and left to commit; or None to leave the whole batch to the thread."""
        if self._kept is None:
            self._kept = self._keep_connection()
        try:  # BEGIN IMMEDIATE fails at once if SQLite's write lock is taken
            return _run_batch(self._kept.cursor(), batch, begin_immediately=True)
        except Exception:  # a refused value, a busy database, a disk error: the thread decides
            try:
                self._kept.rollback()
            except Exception:  # a broken connection: the next batch opens another
                self._discard_kept()
            return None

    def _keep_connection(self) -> Any:
        connection = self._connect()
        connection.detach()  # its own from now on: closing it closes it
        try:
            connection.cursor().execute("PRAGMA busy_timeout=0")  # never wait on the loop
        except Exception as exc:
            connection.close()
            raise StoreUnavailable(_first_line(exc)) from exc
        return connection

    def _discard_kept(self) -> None:
        """Close the kept connection, which rolls back whatever it had begun."""
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(Exception):
                kept.close()

    def _committed(self, batch: list[_Write], done: asyncio.Future[list[int | Exception]]) -> None:
        """Resolve a committed batch and start the next (on the event loop)."""
        if (error := done.exception()) is not None:  # a bug in the thread
            log.error("the store writer failed a batch of %d writes", len(batch), exc_info=error)
            self._discard_kept()
            failure = StoreUnavailable(f"the store writer failed: {error!r}")
            outcomes: list[int | Exception] = [failure] * len(batch)
        else:
            outcomes = done.result()
        self._settle(batch, outcomes)

    def _fail_all(self, batch: list[_Write], exc: Exception) -> None:
        self._settle(batch, [exc] * len(batch))

    def _settle(self, batch: list[_Write], outcomes: list[int | Exception]) -> None:
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # cancelled: the caller stopped waiting
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._lock is not None and not self._closed:
            try:
                self._lock.release_unless(busy=bool(self._pending))
            except OSError:  # closing the lock file releases the lock anyway
                log.exception("releasing the workers' write lock")
        self._flush()

    # In the writer's thread.

    def _commit_kept(self, counts: list[int | Exception]) -> list[int | Exception]:
        """Commit what the event loop ran on the kept connection."""
        try:
            self._kept.commit()
        except Exception as exc:  # the disk or the database failed: nothing was committed
            log.warning("the store writer's commit failed: %s", _first_line(exc))
            self._discard_kept()
            return [StoreUnavailable(_first_line(exc))] * len(counts)
        self._committed_hook()
        return counts

    def _apply(self, batch: list[_Write]) -> list[int | Exception]:
        """Row counts, or for a write the database did not take, the reason."""
        try:
            with self._checkout() as connection:
                sqlite = self._connect is not None
                counts = _run_batch(connection.cursor(), batch, begin_immediately=sqlite)
                connection.commit()
        except StoreUnavailable as exc:  # an outage: the whole batch failed, at once
            return [exc] * len(batch)
        except Exception as exc:  # a value the database refused
            if len(batch) > 1:  # apply them one by one, so one bad write fails only itself
                return [self._apply([write])[0] for write in batch]
            return [exc]
        self._committed_hook()
        return counts

    def _committed_hook(self) -> None:
        if self._after_commit is not None:
            try:
                self._after_commit()
            except Exception:  # the batch is committed whatever happens here
                log.exception("after a commit")


def _run_batch(cursor: Any, batch: list[_Write], begin_immediately: bool) -> list[int | Exception]:
    """Each write's row count, run in one transaction; SQLite takes its write lock up front."""
    if begin_immediately:
        cursor.execute("BEGIN IMMEDIATE")
    return [sql.run(cursor, params).rowcount for sql, params, _ in batch]


class Checkpointer:
    """Copies SQLite's write-ahead log into the database file from its own thread, one
    database's worth for all its workers. Left to itself, SQLite checkpoints inside the commit
    that crosses 1,000 WAL pages, and every request waiting on that batch waits for it too. A
    PASSIVE checkpoint never blocks the writer or the readers, but its fsync shares the disk
    with theirs. In a big store with random keys each commit's index pages are its own, so a
    checkpoint's size, and the wait of a commit beside it, grow with the interval: 20 a second
    kept the tail of a million-row store near an empty one's where 5 a second did not
    (bench/README.md).

    One worker checkpoints: the first whose writer commits takes an exclusive ``flock`` on
    ``<db>-checkpoint-lock`` and keeps it; the others try again after each of their commits,
    so a dead owner's place is taken at once. The owner checkpoints every ``INTERVAL_S`` while
    the WAL file changes, whichever worker wrote to it, and after its own commits."""

    INTERVAL_S = 0.05

    def __init__(self, checkout: Any, database: Path) -> None:
        self._checkout = checkout
        self._wal = database.with_name(database.name + "-wal")
        self._lock: int | None = _open_private(
            database.with_name(database.name + "-checkpoint-lock")
        )
        self._committed = threading.Event()
        self._closing = threading.Event()
        self._progress = threading.Condition()
        self.runs = 0  # checkpoints attempted so far
        self._thread = threading.Thread(
            target=self._run, name="openexec-wal-checkpoint", daemon=True
        )

    def poke(self) -> None:
        """Called by the writer after each commit (from its thread only)."""
        if self._thread.ident is None:
            if self._closing.is_set() or not _flock(self._lock, fcntl.LOCK_EX):
                return  # another worker checkpoints
            self._thread.start()
        self._committed.set()

    def wait_for_runs(self, runs: int, timeout: float) -> bool:
        """Wait until at least ``runs`` checkpoints have been attempted."""
        with self._progress:
            return self._progress.wait_for(lambda: self.runs >= runs, timeout)

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._lock is not None:
            os.close(self._lock)  # lets another worker's checkpointer take over
            self._lock = None

    def _run(self) -> None:
        seen = None
        while not self._closing.wait(self.INTERVAL_S):
            state = self._wal_state()
            if state == seen and not self._committed.is_set():
                continue
            self._committed.clear()
            seen = state
            try:
                with self._checkout() as connection:
                    connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception:  # the next round tries again; SQLite's own checkpoint remains
                log.warning("WAL checkpoint failed", exc_info=True)
            with self._progress:
                self.runs += 1
                self._progress.notify_all()

    def _wal_state(self) -> tuple[int, int] | None:
        try:
            stat = self._wal.stat()
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns


class ProcessWriteLock:
    """An exclusive ``flock`` the writers of all worker processes take turns on (SQLite).

    Taken before SQLite's own write lock, which a writer then never waits for. It is never
    waited for either: the writer tries it without blocking and, while another worker holds
    it, tries again every ``POLL_S`` from its event loop, where SQLite's busy handler would
    sleep up to 100 ms at a time. After ``LOCK_WAIT_S`` (SQLite's busy timeout) the batch fails
    with StoreUnavailable. The lock is kept from one batch to the next while writes are queued
    and given up when the queue runs dry or after ``HOLD_S``.

    A writer that has to wait says so with a shared ``flock`` on a second file, until it has
    the lock or gives up. A writer that lets the lock go while another is marked waiting does
    not take it again while any writer is: otherwise it takes the lock back microseconds after
    letting it go, and the others' tries hardly ever find it free.
    """

    HOLD_S = 0.01
    POLL_S = 0.001

    def __init__(self, path: Path, waiting_path: Path) -> None:
        self._descriptor = _open_private(path)
        self._waiting = _open_private(waiting_path)
        self._held_since: float | None = None
        self._wanted_since: float | None = None  # since when tries have failed
        self._marked_waiting = False
        self._yielding = False  # let the lock go while others waited: they go first

    def try_acquire(self) -> bool:
        """Take the lock if it is free and not owed to a waiting writer; True if this process
        holds it. Raises StoreUnavailable once tries have failed for ``LOCK_WAIT_S``."""
        if self._held_since is not None:
            return True
        now = time.monotonic()
        if self._yielding:
            self._yielding = self._others_waiting()
        if not self._yielding and _flock(self._descriptor, fcntl.LOCK_EX):
            self._held_since, self._wanted_since = now, None
            self._unmark_waiting()
            return True
        if self._wanted_since is None:
            self._wanted_since = now
        elif now - self._wanted_since > LOCK_WAIT_S:
            self._wanted_since = None
            self._unmark_waiting()  # giving up: nobody should yield to this writer now
            raise StoreUnavailable(f"another worker held the write lock for {LOCK_WAIT_S:g} s")
        if not self._yielding and not self._marked_waiting:
            self._marked_waiting = _flock(self._waiting, fcntl.LOCK_SH)
        return False

    def release_unless(self, busy: bool) -> None:
        held_since = self._held_since
        if held_since is not None and (not busy or time.monotonic() - held_since > self.HOLD_S):
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            self._held_since = None
            self._yielding = self._others_waiting()

    def close(self) -> None:
        """Closing the files releases both locks; a batch that finishes later finds nothing
        held, and no descriptor of another file under the old numbers."""
        self._held_since, self._marked_waiting = None, False
        os.close(self._descriptor)
        os.close(self._waiting)

    def _unmark_waiting(self) -> None:
        if self._marked_waiting:
            fcntl.flock(self._waiting, fcntl.LOCK_UN)
            self._marked_waiting = False

    def _others_waiting(self) -> bool:
        if not _flock(self._waiting, fcntl.LOCK_EX):
            return True
        fcntl.flock(self._waiting, fcntl.LOCK_UN)
        return False


def _flock(descriptor: int, operation: int) -> bool:
    """Take a ``flock`` without waiting; False if another process holds a conflicting one."""
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_private(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)


def _open_write_lock(settings: Settings) -> ProcessWriteLock | None:
    """The SQLite workers' lock files beside the database; opened at startup, so that one this
    process cannot use stops the service with a clear message instead of failing writes."""
    path = settings.sqlite_path
    if path is None:
        return None
    lock_path = path.with_name(path.name + "-writer-lock")
    try:
        return ProcessWriteLock(lock_path, path.with_name(path.name + "-writer-wait"))
    except OSError as exc:
        raise _unusable_lock_file(exc) from None


def _open_checkpointer(settings: Settings, checkout: Any) -> Checkpointer | None:
    """A SQLite file's checkpointer (an in-memory database has no write-ahead log)."""
    path = settings.sqlite_path
    if path is None:
        return None
    try:
        return Checkpointer(checkout, path)
    except OSError as exc:
        raise _unusable_lock_file(exc) from None


def upgrade_schema(settings: Settings) -> tuple[int | None, int]:
    """Bring the configured database to ``SCHEMA_VERSION`` in one transaction, under the same
    lock as schema creation, so running it beside a starting service or twice is safe. Returns
    the version found (None for an empty database, which is created) and the version now."""
    engine = _create_engine(settings)
    try:
        with _schema_transaction(engine) as connection:
            found = _schema_version(connection)
            if found is None:
                SQLModel.metadata.create_all(connection)
                connection.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            elif found == 1:
                _upgrade_1_to_2(connection)
            elif found != SCHEMA_VERSION:
                raise _unknown_schema(found)
        return found, SCHEMA_VERSION
    except SQLAlchemyError as exc:
        raise ConfigError(
            "OPENEXEC_DB_URL",
            f"cannot upgrade the database at {settings.safe_db_url}: {_first_line(exc)}",
        ) from None
    finally:
        engine.dispose()


def _upgrade_1_to_2(connection: Any) -> None:
    """Version 2 consumes approvals under their signed bytes too, and records the receipt keys.
    Rows written before hold NULL in approval_signed_sha256: they stay consumed under their
    approval_id, as they always were. The keys that signed the store's receipts so far are
    read from the envelopes themselves, once."""
    column = EXECUTIONS.c.approval_signed_sha256
    column_type = column.type.compile(dialect=connection.dialect)
    connection.exec_driver_sql(f"ALTER TABLE executions ADD COLUMN {column.name} {column_type}")
    for index in EXECUTIONS.indexes:
        if column in index.columns.values():
            index.create(connection)
    RECEIPT_KEYS.create(connection)
    key_id = (
        "receipt_envelope::json -> 'signatures' -> 0 ->> 'keyid'"
        if connection.dialect.name == "postgresql"
        else "json_extract(receipt_envelope, '$.signatures[0].keyid')"
    )
    connection.exec_driver_sql(
        f"INSERT INTO receipt_keys (key_id, first_used_at) SELECT {key_id}, MIN(completed_at) "
        "FROM executions WHERE receipt_envelope IS NOT NULL GROUP BY 1"
    )
    connection.execute(update(SchemaInfo).values(version=2))


@contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Any]:
    """One transaction that holds the schema for itself. Workers and instances starting
    together must create (or upgrade) the schema once, atomically: an advisory lock on
    PostgreSQL; on SQLite a write transaction taken up front (pysqlite would otherwise commit
    each CREATE TABLE on its own)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield connection


def _schema_version(connection: Any) -> int | None:
    """The schema version of an OpenExec database, or None for one with no OpenExec tables."""
    existing = set(connection.dialect.get_table_names(connection))
    if "openexec_schema" not in existing:
        if "executions" in existing:
            raise ConfigError(
                "OPENEXEC_DB_URL",
                "the database has an executions table without a schema version: "
                "it was not created by OpenExec; use another database",
            )
        return None
    versions = connection.execute(select(SchemaInfo.version)).scalars().all()
    if len(versions) != 1:
        raise ConfigError(
            "OPENEXEC_DB_URL", f"the database holds schema versions {versions}, not one"
        )
    return versions[0]


def _unknown_schema(version: int) -> ConfigError:
    """A version this code cannot upgrade from: newer than it, or never released."""
    return ConfigError(
        "OPENEXEC_DB_URL",
        f"the database schema is version {version}, this OpenExec uses version "
        f"{SCHEMA_VERSION} and upgrades only from version 1; refusing to run against it",
    )


def _unusable_lock_file(exc: OSError) -> ConfigError:
    return ConfigError(
        "OPENEXEC_DB_URL", f"cannot open the workers' lock file {exc.filename}: {exc.strerror}"
    )


def _dicts(cursor: Any) -> list[StoredExecution]:
    rows = cursor.fetchall()
    if not rows:  # most lookups: a new nonce; the description is built on demand, a tuple a column
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _insert_if_absent(kind: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a taken nonce or approval inserts nothing, and the
    driver's rowcount (SQLite's changes(), PostgreSQL's command tag) says 0."""
    return _insert_statement(kind)(EXECUTIONS).on_conflict_do_nothing()


def _insert_statement(kind: str) -> Any:
    """The dialect's INSERT, which has ON CONFLICT."""
    return postgresql_insert if kind == "postgresql" else sqlite_insert


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
