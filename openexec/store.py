"""Persistence of executions. The database, not Python, enforces exactly-once:
a unique ``(tenant, nonce)`` pair and a unique ``approval_id`` make reservation one INSERT."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

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
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql import Executable
from sqlmodel import Field, SQLModel

from openexec.settings import ConfigError, Settings

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x6F70656E65786563  # pg_advisory_xact_lock key: "openexec"
NO_TENANT = ""  # (tenant, nonce) must be unique, and NULLs never collide in a unique index


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

# Statements are built once and executed with parameters, so SQLAlchemy compiles each once.
LOOKUP = select(EXECUTIONS).where(
    or_(
        and_(EXECUTIONS.c.tenant == bindparam("tenant"), EXECUTIONS.c.nonce == bindparam("nonce")),
        EXECUTIONS.c.approval_id == bindparam("approval_id"),
    )
)
GET = select(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("exec_id"))
# Executed with the columns to set as parameters (SQLAlchemy derives SET from them).
FINISH = update(EXECUTIONS).where(
    EXECUTIONS.c.id == bindparam("target_id"), EXECUTIONS.c.status == "running"
)
EXPIRE = FINISH.where(EXECUTIONS.c.lease_expires_at < bindparam("now"))


class StoreUnavailable(Exception):
    """The database did not answer; nothing that depended on it happened."""


class Store:
    """The only code that talks to the database.

    Reads run in the caller's thread. Writes go to one writer thread per process, which
    commits whatever is queued in a single transaction: one durable commit serves many
    executions, and the process's threads never contend for the database's write lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.kind = settings.database_kind
        self.engine = _create_engine(settings)
        self._safe_url = settings.safe_db_url
        self._writer = GroupCommitWriter(self.engine, begin_immediately=self.kind == "sqlite")
        self._insert = _insert_if_absent(self.kind)

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
        with self._connection() as connection:
            connection.execute(select(1))

    def lookup(
        self, tenant: str | None, nonce: str, approval_id: str | None
    ) -> tuple[StoredExecution | None, bool]:
        """The row holding this nonce, if any, and whether the approval already backed one:
        steps 3 and 4 of an execution in one query."""
        tenant = tenant or NO_TENANT
        params = {"tenant": tenant, "nonce": nonce, "approval_id": approval_id}
        with self._connection() as connection:
            rows = [row._asdict() for row in connection.execute(LOOKUP, params)]
        holder = next((r for r in rows if r["tenant"] == tenant and r["nonce"] == nonce), None)
        used = approval_id is not None and any(r["approval_id"] == approval_id for r in rows)
        return holder, used

    def get(self, exec_id: str) -> StoredExecution | None:
        with self._connection() as connection:
            row = connection.execute(GET, {"exec_id": exec_id}).first()
        return None if row is None else row._asdict()

    def reserve(self, row: StoredExecution) -> Future[int]:
        """Insert the running row: resolves to 1, or to 0 when a unique constraint (nonce or
        approval) already holds a row, decided by the database."""
        return self._writer.submit(self._insert, row)

    def finish(self, exec_id: str, fields: dict[str, Any]) -> Future[int]:
        """Record an outcome while the row is still running: resolves to 1, or 0 if it no
        longer was."""
        return self._writer.submit(FINISH, {"target_id": exec_id, **fields})

    def expire(self, exec_id: str, now: float, fields: dict[str, Any]) -> Future[int]:
        """Settle a running row whose lease has passed: 1, or 0 if it finished or was settled."""
        return self._writer.submit(EXPIRE, {"target_id": exec_id, "now": now, **fields})

    def dispose(self) -> None:
        self._writer.close()
        self.engine.dispose()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except (IntegrityError, DataError):  # the database refused a value: not an outage
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable(_first_line(exc)) from exc


_Write = tuple[Executable, dict[str, Any], Future[int]]


class GroupCommitWriter:
    """Applies writes in one thread, committing everything queued together (group commit).

    Each write resolves its future with its row count once the commit is durable, or with
    StoreUnavailable when the database did not take it (then nothing of it happened).
    """

    MAX_BATCH = 256

    def __init__(self, engine: Engine, begin_immediately: bool) -> None:
        self._engine = engine
        self._begin_immediately = begin_immediately  # SQLite: take the write lock up front
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, statement: Executable, params: dict[str, Any]) -> Future[int]:
        future: Future[int] = Future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="openexec-store-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put((statement, params, future))
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._apply(batch)
                    return
                batch.append(item)
            self._apply(batch)

    def _apply(self, batch: list[_Write]) -> None:
        try:
            with self._engine.connect() as connection:
                if self._begin_immediately:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                counts = [_affected(connection.execute(sql, params)) for sql, params, _ in batch]
                connection.commit()
        except SQLAlchemyError as exc:
            if len(batch) > 1:  # apply them one by one, so one bad write fails only itself
                for write in batch:
                    self._apply([write])
                return
            refused = isinstance(exc, IntegrityError | DataError)  # a value, not an outage
            batch[0][2].set_exception(exc if refused else StoreUnavailable(_first_line(exc)))
            return
        for (_, _, future), count in zip(batch, counts, strict=True):
            future.set_result(count)


def _insert_if_absent(kind: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: a taken nonce or approval inserts (and
    returns) nothing. RETURNING, because drivers differ in the rowcount they report here."""
    dialect_insert = postgresql_insert if kind == "postgresql" else sqlite_insert
    return dialect_insert(EXECUTIONS).on_conflict_do_nothing().returning(EXECUTIONS.c.id)


def _affected(result: Any) -> int:
    return len(result.all()) if result.returns_rows else result.rowcount


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
        settings.db_url, connect_args={"timeout": 30, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _durable_shared_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(
            "PRAGMA journal_mode=WAL"
        )  # readers and one writer at a time, across workers
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _first_line(exc: BaseException) -> str:
    """A short, password-free description of a database error."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
