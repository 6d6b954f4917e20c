"""``Store``: the readers, and the writes handed to the group commit writer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from openexec.settings import Settings
from openexec.store.connection import (
    RETRYABLE_SQLSTATES,
    Compiled,
    DriverErrors,
    StoreConflict,
    StoreUnavailable,
    first_line,
    open_engine,
)
from openexec.store.migrations import prepare_schema
from openexec.store.sqlite_locks import open_checkpointer, open_write_lock
from openexec.store.tables import (
    EMPTY_ROW,
    EXECUTIONS,
    EXPIRE,
    FINISH,
    GET,
    LOOKUP,
    NO_TENANT,
    OUTCOME_COLUMNS,
    RECEIPT_KEYS,
    ReceiptKeyRecord,
    StoredExecution,
)
from openexec.store.writer import BatchObserver, GroupCommitWriter

T = TypeVar("T")


KEPT_READERS = 4  # threads that keep a SQLite read connection of their own; others use the pool


class Store:
    """The only code that talks to the database.

    Reads run where they cost least (``read``). Writes are submitted from one event loop at a
    time and committed in batches by a ``GroupCommitWriter``: one durable commit serves many
    executions, and the process's threads never contend for the database's write lock.
    """

    def __init__(self, settings: Settings, observe_commits: BatchObserver | None = None) -> None:
        """``observe_commits`` is told of each group commit (openexec.metrics)."""
        self.kind = settings.database_kind
        self.engine = open_engine(settings)
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
        self._checkpointer = open_checkpointer(settings, self._checkout)
        self._writer = GroupCommitWriter(
            self._checkout,
            connect=self._connect if self.kind == "sqlite" else None,
            lock=open_write_lock(settings),
            after_commit=self._checkpointer.poke if self._checkpointer else None,
            observe=observe_commits,
        )

    def prepare(self) -> None:
        """Create the schema on a new database; refuse one at another revision (migrations)."""
        prepare_schema(self.engine, self._safe_url)

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
                raise StoreUnavailable(first_line(exc)) from exc
        return connection

    def _connect(self) -> Any:
        try:
            return self.engine.raw_connection()
        except (SQLAlchemyError, self._errors.any) as exc:  # the pool wraps only some
            raise StoreUnavailable(first_line(exc)) from exc

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
        if getattr(exc, "sqlstate", None) in RETRYABLE_SQLSTATES:
            with contextlib.suppress(self._errors.any):
                connection.rollback()  # the connection is sound; only its transaction went
            raise StoreConflict(first_line(exc)) from exc
        connection.invalidate()  # possibly broken (a restarted server): never reuse it
        raise StoreUnavailable(first_line(exc)) from exc


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
