"""The integrator: one at a time, across workers and instances, it appends the final
executions to the ledger, writes the tiles, and signs checkpoints.

Every worker runs one, and one of them holds the integrator lock (SQLite: a ``flock`` on a
file beside the database; PostgreSQL: a session advisory lock). The kernel or the server
releases a lock whose holder died, and the next worker to try takes over.

A crash loses nothing at any point. An append is one transaction (indexes, tiles, size); the
executions it did not commit are still waiting, and the next integrator appends them. A
checkpoint is signed only after its append committed, from the committed tiles, so any
checkpoint it signs is of a tree every later one extends: the tree never changes once
committed, and the store commits an append only onto the size it was computed from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openexec.ledger.checkpoint import Checkpoint
from openexec.ledger.entries import entry_of_envelope
from openexec.ledger.merkle import TreeBuilder, leaf_hash, tree_root
from openexec.ledger.note import NoteSigner
from openexec.ledger.tiles import (
    TILE_WIDTH,
    decode_bundle,
    encode_bundle,
    entries_path,
    tile_path,
)
from openexec.store.ledger import LedgerConflict, LedgerStore, PendingEntry

log = logging.getLogger("openexec.ledger")

# Entries per append transaction. The transaction holds the database's write lock, which the
# workers' commits wait for: 64 entries hold it a few milliseconds, where the 500 that arrive
# in an interval under load held it 25 to 50 ms and doubled /execute's p99 (bench/ledger.py).
MAX_APPEND = 64
INTEGRATOR_LOCK = 0x6F656C6564676572  # pg_try_advisory_lock key: "oeledger"


class StoredTiles:
    """A ``TileReader`` over the store's tiles. A partial tile that is gone was superseded by
    its full tile, whose first hashes are the same."""

    def __init__(self, read: Callable[[str], bytes | None]) -> None:
        self._read = read

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        data = self._read(tile_path(level, index, width))
        if data is None and width < TILE_WIDTH:
            data = self._read(tile_path(level, index))
        if data is None or len(data) < width * 32:
            raise LookupError(f"tile {tile_path(level, index, width)} is missing")
        return data[: width * 32]

    def entries(self, index: int, width: int) -> list[bytes]:
        data = self._read(entries_path(index, width))
        if data is None and width < TILE_WIDTH:
            data = self._read(entries_path(index))
        if data is None:
            raise LookupError(f"entry bundle {entries_path(index, width)} is missing")
        return decode_bundle(data)[:width]


class IntegratorLock:
    """Whether this process is the integrator: taken without waiting, and kept."""

    def __init__(self, store: LedgerStore, sqlite_path: Path | None) -> None:
        self._store = store
        self._path = (
            None
            if sqlite_path is None
            else sqlite_path.with_name(sqlite_path.name + "-ledger-lock")
        )
        self._descriptor: int | None = None
        self._connection: Any = None  # PostgreSQL: the session that tries (and holds) the lock
        self._taken = False

    def held(self) -> bool:
        """Take the lock if it is free; True while this process holds it."""
        if self._path is not None:
            return self._held_file()
        return self._held_advisory()

    def _held_file(self) -> bool:
        if self._descriptor is None:
            descriptor = os.open(self._path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                return False
            self._descriptor = descriptor
        return True

    def _held_advisory(self) -> bool:
        """Try the advisory lock on this process's one session for it, kept whether or not
        the lock was free: trying again costs a query, not a new backend."""
        if self._connection is None:
            connection = self._store.engine.raw_connection()
            try:
                connection.driver_connection.autocommit = True
                connection.detach()  # its session holds the lock: never back into the pool
            except Exception:
                connection.close()
                raise
            self._connection = connection
        try:
            cursor = self._connection.cursor()
            if self._taken:  # still the same session: the lock is still ours
                cursor.execute("SELECT 1").fetchall()
                return True
            cursor.execute(f"SELECT pg_try_advisory_lock({INTEGRATOR_LOCK})")
            self._taken = bool(cursor.fetchone()[0])
        except Exception:
            self.release()  # a broken session lost the lock with it
            raise
        return self._taken

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection, self._taken = None, False


class Integrator:
    """Appends, tiles and signs, from its own thread, while this process holds the lock."""

    def __init__(
        self,
        store: LedgerStore,
        signer: NoteSigner,
        interval_s: float,
        lock: IntegratorLock,
        now: Callable[[], str],
    ) -> None:
        self.store = store
        self.signer = signer
        self.interval_s = interval_s
        self.lock = lock
        self._now = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_key = False
        self._unreadable: set[str] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="openexec-ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.lock.release()

    def _run(self) -> None:
        while True:
            try:
                if self.lock.held():
                    self.integrate()
            except Exception:  # the database is away, or a bug: the next round tries again
                log.exception("ledger integration failed; retrying")
            if self._stop.wait(self.interval_s):
                return

    def integrate(self) -> int:
        """Append what is waiting (for at most about one interval) and sign a checkpoint of
        the new size. Returns the number of entries appended."""
        head = self.store.head()
        if head is None or head.vkey != self.signer.vkey():
            if not self._warned_key:
                log.error(
                    "the ledger is signed by %s, not by this service's %s: not integrating "
                    "(give every instance the same OPENEXEC_LEDGER_KEY and origin)",
                    head.vkey if head else "no key",
                    self.signer.vkey(),
                )
                self._warned_key = True
            self.lock.release()  # another process, with the right key, may integrate
            return 0
        appended, size = 0, head.size
        deadline = time.monotonic() + self.interval_s
        while True:
            fetched = self.store.pending(MAX_APPEND)
            pending = self._readable(fetched)
            if not pending:
                break
            try:
                self._append(size, pending)
            except LedgerConflict as exc:  # another integrator moved it: start again from it
                log.warning("ledger append refused: %s", exc)
                return appended
            appended += len(pending)
            size += len(pending)
            if len(fetched) < MAX_APPEND or time.monotonic() > deadline:
                break
        latest = self.store.latest_checkpoint()
        if latest is None or latest[0] != size:
            self.sign(size)
        return appended

    def sign(self, size: int) -> str:
        """Sign and keep the checkpoint of ``size`` (committed tiles only)."""
        tiles = StoredTiles(self.store.tile)
        root = tree_root(tiles, size)
        note = self.signer.sign(Checkpoint(self.signer.name, size, root).text())
        self.store.add_checkpoint(size, note, self._now())
        return note

    def _readable(self, pending: list[PendingEntry]) -> list[tuple[PendingEntry, bytes]]:
        """The pending executions with their entries. A row whose envelope cannot be read
        (the store lost it) is left out, and said once: the rest must not wait behind it."""
        readable = []
        for row in pending:
            try:
                readable.append((row, entry_of_envelope(json.loads(row.receipt_envelope)).bytes()))
            except (TypeError, ValueError, RecursionError):
                if row.exec_id not in self._unreadable:
                    log.error(
                        "execution %s has no readable receipt: not in the ledger", row.exec_id
                    )
                    self._unreadable.add(row.exec_id)
        return readable

    def _append(self, size: int, pending: list[tuple[PendingEntry, bytes]]) -> None:
        entries = [entry for _, entry in pending]
        stored = StoredTiles(self.store.tile)
        builder = TreeBuilder(stored, size)
        level_tiles = builder.append([leaf_hash(entry) for entry in entries])
        tiles: dict[str, bytes] = {}
        superseded: list[str] = []
        for (level, index), data in level_tiles.items():
            width = len(data) // 32
            tiles[tile_path(level, index, width)] = data
            if width == TILE_WIDTH:
                superseded.append(tile_path(level, index) + ".p/")
        first = size // TILE_WIDTH
        bundle = stored.entries(first, size % TILE_WIDTH) if size % TILE_WIDTH else []
        bundle.extend(entries)
        for offset in range(0, len(bundle), TILE_WIDTH):
            chunk = bundle[offset : offset + TILE_WIDTH]
            index = first + offset // TILE_WIDTH
            tiles[entries_path(index, len(chunk))] = encode_bundle(chunk)
            if len(chunk) == TILE_WIDTH:
                superseded.append(entries_path(index) + ".p/")
        indexes = [(row.exec_id, size + i) for i, (row, _) in enumerate(pending)]
        self.store.append(size, indexes, tiles, superseded)
