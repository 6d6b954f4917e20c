"""The schema's version, and ``openexec db upgrade`` from one version to the next."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Engine,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from openexec.settings import ConfigError, Settings
from openexec.store.connection import first_line, open_engine
from openexec.store.tables import EXECUTIONS, RECEIPT_KEYS, SchemaInfo

SCHEMA_VERSION = 2  # 2 added approval_signed_sha256 and receipt_keys; upgrade_schema goes 1 -> 2


UPGRADE_COMMAND = "openexec db upgrade"


SCHEMA_LOCK = 0x6F70656E65786563  # pg_advisory_xact_lock key: "openexec"


def upgrade_schema(settings: Settings) -> tuple[int | None, int]:
    """Bring the configured database to ``SCHEMA_VERSION`` in one transaction, under the same
    lock as schema creation, so running it beside a starting service or twice is safe. Returns
    the version found (None for an empty database, which is created) and the version now."""
    engine = open_engine(settings)
    try:
        with schema_transaction(engine) as connection:
            found = schema_version(connection)
            if found is None:
                SQLModel.metadata.create_all(connection)
                connection.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            elif found == 1:
                _upgrade_1_to_2(connection)
            elif found != SCHEMA_VERSION:
                raise unknown_schema(found)
        return found, SCHEMA_VERSION
    except SQLAlchemyError as exc:
        raise ConfigError(
            "OPENEXEC_DB_URL",
            f"cannot upgrade the database at {settings.safe_db_url}: {first_line(exc)}",
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
def schema_transaction(engine: Engine) -> Iterator[Any]:
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


def schema_version(connection: Any) -> int | None:
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


def unknown_schema(version: int) -> ConfigError:
    """A version this code cannot upgrade from: newer than it, or never released."""
    return ConfigError(
        "OPENEXEC_DB_URL",
        f"the database schema is version {version}, this OpenExec uses version "
        f"{SCHEMA_VERSION} and upgrades only from version 1; refusing to run against it",
    )
