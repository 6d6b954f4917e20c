"""Persistence of executions. The database, not Python, enforces exactly-once:
a unique ``(tenant, nonce)`` pair, a unique ``approval_id`` and a unique
``approval_signed_sha256`` (what the approval's signature covers) make reservation one INSERT.

SQLModel declares the tables and SQLAlchemy builds every statement and manages the pool, but
the statements of the request path are compiled once at startup and run on the driver's own
cursor: per request, SQLAlchemy's execution machinery cost more than the query itself.

The parts, each in its own file, with data flowing down the list:

* ``store``: ``Store``, the only code the engine talks to: its readers and its writes;
* ``writer``: the group commit writer, which commits an event loop's writes in batches;
* ``sqlite_locks``: SQLite's write lock across worker processes, and its checkpointer;
* ``migrations``: the schema's revisions (Alembic, in ``alembic/``) and ``openexec db upgrade``;
* ``tables``: the tables and the request path's statements;
* ``connection``: the engine, compiled statements, and the driver's errors.
"""

from openexec.store.connection import WAL_AUTOCHECKPOINT_PAGES, StoreUnavailable
from openexec.store.migrations import SCHEMA_VERSION, Upgrade, upgrade_schema
from openexec.store.store import KEPT_READERS, Store
from openexec.store.tables import EXECUTIONS, OUTCOME_COLUMNS, StoredExecution

__all__ = [
    "EXECUTIONS",
    "KEPT_READERS",
    "OUTCOME_COLUMNS",
    "SCHEMA_VERSION",
    "WAL_AUTOCHECKPOINT_PAGES",
    "Store",
    "StoreUnavailable",
    "StoredExecution",
    "Upgrade",
    "upgrade_schema",
]
