"""Fresh databases per scenario, the exactly-once check read straight from them, and seeding
for the growth benchmark (bulk inserts that bypass the service, which is not what is measured)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.server import REPO, BenchFailure
from openexec.engine import execution_id
from openexec.settings import Settings
from openexec.store import Store

SEED_BATCH = 20_000


@dataclass(frozen=True)
class Database:
    """One scenario's database: a SQLite file or a PostgreSQL database on the test cluster."""

    kind: str
    url: str
    path: Path | None = None  # SQLite only
    admin_url: str | None = None  # PostgreSQL only
    name: str | None = None  # PostgreSQL only

    def query(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.path)) as connection:
                return connection.execute(text, args).fetchall()
        with psycopg.connect(self.url) as connection:
            return connection.execute(text.replace("?", "%s"), args).fetchall()

    def status_counts(self) -> dict[str, int]:
        rows = self.query("SELECT status, COUNT(*) FROM executions GROUP BY status")
        return dict(rows)

    def succeeded_nonces(self) -> set[str]:
        return {
            row[0]
            for row in self.query("SELECT nonce FROM executions WHERE status = ?", "succeeded")
        }

    def prepare(self) -> None:
        """Create the schema the way the service does, without starting it."""
        store = Store(Settings.from_env({"OPENEXEC_DB_URL": self.url}))
        try:
            store.prepare()
        finally:
            store.dispose()

    def durability(self) -> dict[str, str]:
        """The SQLite pragmas the service's own connections run with (durable commits)."""
        store = Store(Settings.from_env({"OPENEXEC_DB_URL": self.url}))
        try:
            with store.engine.connect() as connection:
                synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
                journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        finally:
            store.dispose()
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return {"synchronous": names.get(synchronous, str(synchronous)), "journal_mode": journal}

    def seed(self, count: int, template: dict[str, Any], sample: int) -> tuple[float, list[str]]:
        """Insert ``count`` finished executions shaped like ``template`` (a real row), each with
        its own id, nonce and approval; return the seconds it took and ``sample`` of the nonces,
        spread evenly over the insertion order."""
        started = time.monotonic()
        nonces: list[str] = []
        every = max(count // sample, 1)
        rows = _seed_rows(count, template, every, nonces)
        if self.kind == "sqlite":
            self._seed_sqlite(list(template), rows)
        else:
            self._seed_postgres(list(template), rows)
        return time.monotonic() - started, nonces

    def template_row(self) -> dict[str, Any]:
        """One succeeded execution as a column → value mapping, the model for seeded rows."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.path)) as connection:
                cursor = connection.execute(
                    "SELECT * FROM executions WHERE status = 'succeeded' LIMIT 1"
                )
                names = [column[0] for column in cursor.description]
                row = cursor.fetchone()
        else:
            with psycopg.connect(self.url) as connection:
                cursor = connection.execute(
                    "SELECT * FROM executions WHERE status = 'succeeded' LIMIT 1"
                )
                names = [column.name for column in cursor.description]
                row = cursor.fetchone()
        if row is None:
            raise BenchFailure("no succeeded execution to model seeded rows on")
        return dict(zip(names, row, strict=True))

    def _seed_sqlite(self, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
        insert = (
            f"INSERT INTO executions ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        with closing(sqlite3.connect(self.path)) as connection:
            # Seeding is setup, not measurement: durability is relaxed only here, and only for
            # this connection; the service opens its own connections with synchronous=FULL.
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA cache_size=-1000000")
            while batch := list(islice(rows, SEED_BATCH)):
                with connection:
                    connection.executemany(insert, batch)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # On disk before the service starts: left to the kernel, gigabytes of seeded pages are
        # written back during the measurement, and every durable commit waits behind them.
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _seed_postgres(self, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
        copy = sql.SQL("COPY executions ({}) FROM STDIN").format(
            sql.SQL(", ").join(sql.Identifier(column) for column in columns)
        )
        with (
            psycopg.connect(self.url) as connection,
            connection.cursor() as cursor,
            cursor.copy(copy) as writer,
        ):
            for row in rows:
                writer.write_row(row)
        # Settled before the service starts, as a store that grew over months is: vacuumed (or
        # autovacuum's pass for new rows reads and marks the whole table during the
        # measurement) and checkpointed (or the checkpoint writes gigabytes of seeded pages,
        # spread over minutes, beside every durable commit).
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE) executions")
            connection.execute("CHECKPOINT")

    def drop(self) -> None:
        if self.kind == "postgresql":
            with psycopg.connect(self.admin_url, autocommit=True) as connection:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.name)
                    )
                )


def sqlite_database(directory: Path) -> Database:
    path = directory / "openexec.db"
    return Database("sqlite", f"sqlite:///{path}", path=path)


class Postgres:
    """The test cluster from scripts/postgres.sh, with one fresh database per scenario."""

    def __init__(self) -> None:
        script = REPO / "scripts" / "postgres.sh"
        finished = subprocess.run([str(script)], capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise BenchFailure(f"scripts/postgres.sh failed:\n{finished.stderr}")
        self.admin_url = finished.stdout.strip().splitlines()[-1]

    def database(self, label: str) -> Database:
        name = f"openexec_bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = self.admin_url.rsplit("/", 1)[0] + "/" + name
        return Database("postgresql", url, admin_url=self.admin_url, name=name)


def _seed_rows(
    count: int, template: dict[str, Any], every: int, sampled: list[str]
) -> Iterator[tuple[Any, ...]]:
    """Copies of the template with fresh keys shaped like the service's: ids as the engine makes
    them, started 10 ms apart up to now; nonces and approval ids random, spread over the same
    key space as the measured requests' (bench/bodies.py), so a new row's index entries land
    among the old ones as a real store's do. Every ``every``-th nonce is kept."""
    first_start = time.time() - count / 100
    for number in range(count):
        nonce = f"{uuid.uuid4().hex[:12]}-seed-{number}"
        if number % every == 0:
            sampled.append(nonce)
        fresh = {
            "id": execution_id(datetime.fromtimestamp(first_start + number / 100, UTC)),
            "nonce": nonce,
            "approval_id": str(uuid.uuid4()),
        }
        yield tuple(fresh.get(name, value) for name, value in template.items())
