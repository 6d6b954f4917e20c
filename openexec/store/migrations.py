"""The schema's revisions: what startup accepts, and ``openexec db upgrade``.

Schema changes are Alembic revisions, in ``alembic/versions`` (``v1``, ``v2``, ... the n-th
schema is revision ``vn``). Stores written before Alembic record their version in the
``openexec_schema`` table instead; version n is revision ``vn``, stamped as such on upgrade.
A new database is not migrated but created at the head from the tables' declarations and
stamped: one ``create_all``, as before Alembic, where replaying every revision costs a new
SQLite database three times as much, and tests create hundreds. A test checks that the
migrated schema and the declared one do not differ.

Alembic is imported where it is used: importing it costs a process 0.1 to 0.2 s (it loads
Mako), and neither a service starting on a database at the head revision nor a CLI command
that never touches the schema needs it. So the revision is read with one SELECT.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from openexec.settings import ConfigError, Settings
from openexec.store import tables  # noqa: F401  (declares the head schema in SQLModel.metadata)
from openexec.store.connection import first_line, open_engine

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCHEMA_VERSION = "v3"  # the head revision (a test checks it is the scripts' only head)

UPGRADE_COMMAND = "openexec db upgrade"

SCHEMA_LOCK = 0x6F70656E65786563  # pg_advisory_xact_lock key: "openexec"

SCRIPTS = Path(__file__).parent / "alembic"

LEGACY_REVISIONS = {1: "v1", 2: "v2"}  # openexec_schema's versions, as revisions


@dataclass(frozen=True)
class Upgrade:
    """What ``upgrade_schema`` found and left: the revision found (None for an empty database,
    then created), the revision now, and how many executions are not in the witness ledger
    yet (the service's integrator appends them, in start order)."""

    found: str | None
    head: str
    unledgered: int


def prepare_schema(engine: Engine, safe_url: str) -> None:
    """At startup: create the schema on a new database; refuse one at another revision, an
    older one with the command that upgrades it. Never changes an existing schema: that is
    the operator's decision (``openexec db upgrade``), taken with a backup at hand."""
    try:
        for attempt in range(3):
            try:
                with schema_transaction(engine) as connection:
                    found = schema_revision(connection)
                    if found is None:
                        _create(connection)
                    elif found != SCHEMA_VERSION:
                        raise _unknown(found) if found not in _revisions() else _older(found)
                return
            except SQLAlchemyError:
                if attempt == 2:  # several workers creating the schema at once: retry
                    raise
    except SQLAlchemyError as exc:
        raise ConfigError(
            "OPENEXEC_DB_URL", f"cannot open the database at {safe_url}: {first_line(exc)}"
        ) from None


def upgrade_schema(settings: Settings) -> Upgrade:
    """Bring the configured database to ``SCHEMA_VERSION`` in one transaction, under the same
    lock as schema creation, so running it beside a starting service or twice is safe. A store
    from before Alembic is stamped with the revision of its version first."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = open_engine(settings)
    try:
        with schema_transaction(engine) as connection:
            found = schema_revision(connection)
            if found is None:
                _create(connection)
            elif found != SCHEMA_VERSION:
                if found not in _revisions():
                    raise _unknown(found)
                context = MigrationContext.configure(connection)
                if not context.get_current_heads():
                    context.stamp(_scripts(), found)
                command.upgrade(alembic_config(connection), SCHEMA_VERSION)
            unledgered = connection.execute(
                text("SELECT count(*) FROM executions WHERE ledger_index IS NULL")
            ).scalar_one()
        return Upgrade(found, SCHEMA_VERSION, unledgered)
    except SQLAlchemyError as exc:
        raise ConfigError(
            "OPENEXEC_DB_URL",
            f"cannot upgrade the database at {settings.safe_db_url}: {first_line(exc)}",
        ) from None
    finally:
        engine.dispose()


@contextmanager
def schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that holds the schema for itself. Workers and instances starting
    together must create (or upgrade) the schema once, atomically: an advisory lock on
    PostgreSQL; on SQLite a write transaction taken up front (pysqlite would otherwise commit
    each CREATE TABLE on its own). Alembic runs inside it, on the same connection."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield connection


def schema_revision(connection: Connection) -> str | None:
    """The revision of an OpenExec database (a store from before Alembic: its version's), or
    None for one with no OpenExec tables."""
    existing = set(connection.dialect.get_table_names(connection))
    if "alembic_version" in existing:
        heads = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(heads) > 1:
            raise ConfigError(
                "OPENEXEC_DB_URL", f"the database is at several schema revisions {heads}"
            )
        if heads:
            return heads[0]
    if "openexec_schema" in existing:
        return _legacy_revision(connection)
    if "executions" in existing:
        raise ConfigError(
            "OPENEXEC_DB_URL",
            "the database has an executions table without a schema version: "
            "it was not created by OpenExec; use another database",
        )
    return None


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, built here rather than read from an alembic.ini: the revisions
    ship in the package, and run on ``connection`` (see ``alembic/env.py``)."""
    from alembic.config import Config

    config = Config(attributes={"connection": connection})
    # A ConfigParser value: a % in the installation's path must be escaped
    config.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    return config


def _legacy_revision(connection: Connection) -> str:
    """The revision of a store from before Alembic, read from its ``openexec_schema``."""
    versions = connection.execute(text("SELECT version FROM openexec_schema")).scalars().all()
    if len(versions) != 1:
        raise ConfigError(
            "OPENEXEC_DB_URL", f"the database holds schema versions {versions}, not one"
        )
    if versions[0] not in LEGACY_REVISIONS:
        raise ConfigError(
            "OPENEXEC_DB_URL",
            f"the database schema is version {versions[0]}, which no OpenExec wrote before "
            f"schema revisions; this OpenExec uses revision {SCHEMA_VERSION}, refusing to run "
            "against it",
        )
    return LEGACY_REVISIONS[versions[0]]


def _create(connection: Connection) -> None:
    """A new database, at the head revision at once."""
    from alembic.runtime.migration import MigrationContext

    SQLModel.metadata.create_all(connection)
    MigrationContext.configure(connection).stamp(_scripts(), SCHEMA_VERSION)


@cache
def _scripts() -> ScriptDirectory:
    """The revisions, read once per process: each start of a new database stamps the head."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(SCRIPTS))


@cache
def _revisions() -> frozenset[str]:
    """Every revision this code knows: any other was written by a newer OpenExec."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _older(revision: str) -> ConfigError:
    return ConfigError(
        "OPENEXEC_DB_URL",
        f"the database schema is revision {revision}, this OpenExec uses revision "
        f"{SCHEMA_VERSION}: run `{UPGRADE_COMMAND}` (with the same settings) first",
    )


def _unknown(revision: str) -> ConfigError:
    """A revision this code does not know: a newer OpenExec's, or no OpenExec's."""
    return ConfigError(
        "OPENEXEC_DB_URL",
        f"the database schema is revision {revision}, which this OpenExec (revision "
        f"{SCHEMA_VERSION}) does not know: a newer OpenExec wrote it, or none did; refusing to "
        "run against it",
    )
