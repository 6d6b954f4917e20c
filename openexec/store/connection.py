"""The engine, statements compiled once for it, and what the driver's errors mean."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.sql import Executable

from openexec.settings import Settings

WAL_AUTOCHECKPOINT_PAGES = 20_000  # a safety net: the Checkpointer normally runs long before


class StoreUnavailable(Exception):
    """The database did not answer; nothing that depended on it happened."""


class StoreConflict(StoreUnavailable):
    """PostgreSQL rolled a transaction back to break a deadlock with another's: nothing of it
    happened, and it may run again. Two workers' group commits whose rows claim the same nonces
    or approvals in opposite orders wait for each other this way."""


RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


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


class DriverErrors:
    """The driver's PEP 249 exception classes, which raw cursors raise."""

    def __init__(self, engine: Engine) -> None:
        dbapi = engine.dialect.loaded_dbapi
        self.refused: tuple[type[Exception], ...] = (dbapi.IntegrityError, dbapi.DataError)
        self.any: type[Exception] = dbapi.Error


def open_engine(settings: Settings) -> Engine:
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


def first_line(exc: BaseException) -> str:
    """A short, password-free description of a database error."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
