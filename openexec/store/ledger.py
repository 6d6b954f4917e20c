"""The witness ledger's storage: its state row, tiles, checkpoints and cosignatures, and the
one transaction that appends entries.

The trust boundary is the database, as for nonces: an index is given to one execution by a
unique index, and an append commits only onto the size it was computed from, so two
integrators that somehow ran at once could never both extend the tree. Everything here runs
on pooled connections in the integrator's thread or in the ledger routes' threads, never on
the request path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from openexec.store.sqlite_locks import ThreadWriteLock
from openexec.store.tables import (
    EXECUTIONS,
    LedgerCheckpoint,
    LedgerCosignature,
    LedgerState,
    LedgerTile,
)

STATE = LedgerState.__table__
TILES = LedgerTile.__table__
CHECKPOINTS = LedgerCheckpoint.__table__
COSIGNATURES = LedgerCosignature.__table__


class LedgerConflict(Exception):
    """The ledger moved while an append was computed (another integrator appended first), or
    an execution was already in it: nothing of the append was committed."""


@dataclass(frozen=True)
class LedgerHead:
    """What the state row says: the tree size sequenced and tiled, and its origin and key."""

    size: int
    origin: str
    vkey: str


@dataclass(frozen=True)
class PendingEntry:
    """A final execution not yet in the ledger: what its entry is made of."""

    exec_id: str
    receipt: str
    receipt_envelope: str


@dataclass(frozen=True)
class LoggedReceipt:
    """An integrated execution, read back for the auditors' receipt bundles."""

    index: int
    exec_id: str
    receipt_envelope: str | None


class LedgerStore:
    """The ledger's reads and writes, on the service's database."""

    def __init__(self, engine: Engine, write_lock: ThreadWriteLock | None = None) -> None:
        self.engine = engine
        self._write_lock = write_lock
        self.kind = engine.dialect.name
        self._insert = postgresql_insert if self.kind == "postgresql" else sqlite_insert

    def head(self) -> LedgerHead | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(STATE).where(STATE.c.id == 1)).first()
        return None if row is None else LedgerHead(row.size, row.origin, row.vkey)

    def open_ledger(self, origin: str, vkey: str) -> LedgerHead:
        """The state row, created for an empty ledger on first start. Its origin and key
        are the ones the ledger's checkpoints are signed with from then on."""
        with self._transaction() as connection:
            connection.execute(
                self._insert(STATE)
                .values(id=1, size=0, origin=origin, vkey=vkey)
                .on_conflict_do_nothing()
            )
            row = connection.execute(select(STATE).where(STATE.c.id == 1)).one()
            if row.size == 0 and (row.origin, row.vkey) != (origin, vkey):
                # nothing is logged, and no checkpoint of an empty log binds anyone
                connection.execute(update(STATE).values(origin=origin, vkey=vkey))
                connection.execute(delete(CHECKPOINTS))
                connection.execute(delete(COSIGNATURES))
                return LedgerHead(0, origin, vkey)
        return LedgerHead(row.size, row.origin, row.vkey)

    def pending(self, limit: int) -> list[PendingEntry]:
        """Final executions not yet in the ledger, oldest start first."""
        query = (
            select(EXECUTIONS.c.id, EXECUTIONS.c.receipt, EXECUTIONS.c.receipt_envelope)
            .where(*_PENDING)
            .order_by(EXECUTIONS.c.started_at, EXECUTIONS.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [PendingEntry(*row) for row in connection.execute(query)]

    def tile(self, path: str) -> bytes | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(TILES.c.data).where(TILES.c.path == path)
            ).scalar_one_or_none()

    def tiles(self) -> Iterator[tuple[str, bytes]]:
        """Every stored tile and entry bundle, for an export."""
        query = select(TILES.c.path, TILES.c.data).order_by(TILES.c.path)
        with self.engine.connect() as connection:
            yield from connection.execution_options(yield_per=256).execute(query)

    def append(
        self,
        size: int,
        indexes: Sequence[tuple[str, int]],
        tiles: dict[str, bytes],
        superseded: Sequence[str],
    ) -> None:
        """In one transaction: give each execution its index, write the tiles, delete the
        partial tiles whose full tile is now written (``superseded`` path prefixes), and move
        the size on from ``size``. Raises LedgerConflict, committing nothing, if the ledger
        is no longer at ``size`` or an execution already has an index."""
        new_size = size + len(indexes)
        with self._transaction() as connection:
            moved = connection.execute(
                update(STATE).where(STATE.c.id == 1, STATE.c.size == size).values(size=new_size)
            ).rowcount
            if moved != 1:
                raise LedgerConflict(f"the ledger is no longer at size {size}")
            given = connection.execute(
                update(EXECUTIONS)
                .where(
                    EXECUTIONS.c.id == bindparam("exec_id"),
                    EXECUTIONS.c.ledger_index.is_(None),
                )
                .values(ledger_index=bindparam("index")),
                [{"exec_id": exec_id, "index": index} for exec_id, index in indexes],
            ).rowcount
            if given != len(indexes):
                raise LedgerConflict("an execution was already in the ledger")
            for prefix in superseded:
                connection.execute(delete(TILES).where(TILES.c.path.startswith(prefix)))
            connection.execute(
                insert(TILES), [{"path": path, "data": data} for path, data in tiles.items()]
            )

    def add_checkpoint(self, size: int, note: str, signed_at: str) -> None:
        """Keep a signed checkpoint; one of a size already kept is left as it was (a second
        signature over the same tree changes nothing)."""
        with self._transaction() as connection:
            connection.execute(
                self._insert(CHECKPOINTS)
                .values(size=size, note=note, signed_at=signed_at)
                .on_conflict_do_nothing()
            )

    def latest_checkpoint(self) -> tuple[int, str] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.note)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
        return None if row is None else (row.size, row.note)

    def checkpoint(self, size: int) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(CHECKPOINTS.c.note).where(CHECKPOINTS.c.size == size)
            ).scalar_one_or_none()

    def add_cosignature(self, size: int, witness: str, line: str, timestamp: int) -> None:
        """Keep a witness's cosignature of the checkpoint of ``size``: its latest one."""
        statement = self._insert(COSIGNATURES).values(
            size=size, witness=witness, line=line, timestamp=timestamp
        )
        statement = statement.on_conflict_do_update(
            index_elements=[COSIGNATURES.c.size, COSIGNATURES.c.witness],
            set_={"line": statement.excluded.line, "timestamp": statement.excluded.timestamp},
            where=COSIGNATURES.c.timestamp < statement.excluded.timestamp,
        )
        with self._transaction() as connection:
            connection.execute(statement)

    def cosignatures(self, size: int) -> list[str]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(COSIGNATURES.c.line)
                    .where(COSIGNATURES.c.size == size)
                    .order_by(COSIGNATURES.c.witness)
                ).scalars()
            )

    def ledger_index(self, exec_id: str) -> tuple[bool, int | None]:
        """Whether the execution exists, and its index once integrated."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(EXECUTIONS.c.ledger_index).where(EXECUTIONS.c.id == exec_id)
            ).first()
        return (False, None) if row is None else (True, row.ledger_index)

    def logged_receipts(self, start: int, end: int) -> list[LoggedReceipt]:
        """The executions at indexes [start, end), in index order, as stored now."""
        query = (
            select(EXECUTIONS.c.ledger_index, EXECUTIONS.c.id, EXECUTIONS.c.receipt_envelope)
            .where(
                EXECUTIONS.c.ledger_index.is_not(None),
                EXECUTIONS.c.ledger_index >= start,
                EXECUTIONS.c.ledger_index < end,
            )
            .order_by(EXECUTIONS.c.ledger_index)
        )
        with self.engine.connect() as connection:
            return [LoggedReceipt(*row) for row in connection.execute(query)]

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A write transaction; SQLite's write lock is taken up front, so that a read inside
        it can never need an upgrade another writer holds, after the workers' write lock
        when the service runs (``write_lock``)."""
        turn = self._write_lock.held() if self._write_lock else contextlib.nullcontext()
        with turn, self.engine.begin() as connection:
            if self.kind == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            yield connection


_PENDING = (EXECUTIONS.c.ledger_index.is_(None), EXECUTIONS.c.status != "running")
