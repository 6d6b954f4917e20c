"""Persistence of executions. The database, not Python, enforces exactly-once:
a unique ``(tenant, nonce)`` pair and a unique ``approval_id`` make reservation one INSERT."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    String,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
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


class StoreUnavailable(Exception):
    """The database did not answer; nothing that depended on it happened."""


class ReservationConflict(Exception):
    """The nonce or the approval was taken by a concurrent reservation."""


class Store:
    """The only code that talks to the database."""

    def __init__(self, settings: Settings) -> None:
        self.kind = settings.database_kind
        self.engine = _create_engine(settings)
        self._safe_url = settings.safe_db_url

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

    def find(self, tenant: str | None, nonce: str) -> Execution | None:
        query = select(EXECUTIONS).where(
            EXECUTIONS.c.tenant == (tenant or NO_TENANT), EXECUTIONS.c.nonce == nonce
        )
        return self._one(query)

    def get(self, exec_id: str) -> Execution | None:
        return self._one(select(EXECUTIONS).where(EXECUTIONS.c.id == exec_id))

    def approval_used(self, approval_id: str) -> bool:
        query = select(EXECUTIONS.c.id).where(EXECUTIONS.c.approval_id == approval_id)
        with self._connection() as connection:
            return connection.execute(query).first() is not None

    def reserve(self, execution: Execution) -> None:
        """Insert the running row; a unique-constraint violation means someone else won."""
        try:
            with self._connection() as connection, connection.begin():
                connection.execute(insert(EXECUTIONS).values(**execution.model_dump()))
        except IntegrityError:
            raise ReservationConflict from None

    def finish(self, exec_id: str, fields: dict[str, Any]) -> bool:
        """Record an outcome, only while the row is still running; False if it no longer was."""
        query = (
            update(EXECUTIONS)
            .where(EXECUTIONS.c.id == exec_id, EXECUTIONS.c.status == "running")
            .values(**fields)
        )
        with self._connection() as connection, connection.begin():
            return connection.execute(query).rowcount == 1

    def expire(self, exec_id: str, now: float, fields: dict[str, Any]) -> bool:
        """Mark a running row whose lease has passed; False if it finished or was marked first."""
        query = (
            update(EXECUTIONS)
            .where(
                EXECUTIONS.c.id == exec_id,
                EXECUTIONS.c.status == "running",
                EXECUTIONS.c.lease_expires_at < now,
            )
            .values(**fields)
        )
        with self._connection() as connection, connection.begin():
            return connection.execute(query).rowcount == 1

    def dispose(self) -> None:
        self.engine.dispose()

    def _one(self, query: Any) -> Execution | None:
        with self._connection() as connection:
            row = connection.execute(query).first()
        return None if row is None else Execution(**row._mapping)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except (IntegrityError, DataError):  # the database refused a value: not an outage
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable(_first_line(exc)) from exc


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
