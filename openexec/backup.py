"""``openexec db backup``: a consistent copy of a live SQLite store, with its receipt and ledger
keys, that the service can be started on as it is.

The database is copied with SQLite's online backup API (``sqlite3.Connection.backup``) in one
step: one read transaction, so the copy is the store as of one moment, whatever the WAL holds,
while the service goes on writing (in WAL mode a reader blocks no writer). The ``sqlite3``
shell's ``.backup`` does the same, but that shell is often not installed where the service is.
The keys keep their default names, so the backup directory is itself a state directory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from openexec.keyfiles import read_private_key
from openexec.settings import DEFAULT_KEY_NAME, DEFAULT_LEDGER_KEY_NAME, Settings

T = TypeVar("T")
BUSY_TIMEOUT_S = 30  # as the service's own connections: wait out a checkpoint's brief lock


class BackupError(Exception):
    """A backup that cannot be taken; the message says why."""


@dataclass(frozen=True)
class Backup:
    """What a backup wrote: each copy with its source, and what the copied store holds."""

    copies: tuple[tuple[Path, Path], ...]  # (source, copy)
    executions: int
    ledger_size: int


def backup_sqlite(settings: Settings, destination: Path) -> Backup:
    """Copy the store of ``settings`` and its keys into ``destination``, each file mode 0600.

    ``destination`` is created 0700 if missing; a file already there is never replaced, so a
    second backup into the same directory fails instead of mixing two backups. A key that
    cannot be read stops the backup before anything is written: without it the copy could not
    be served (docs/operations.md).
    """
    source = settings.sqlite_path
    if source is None:
        raise BackupError(
            f"{settings.safe_db_url} is not a SQLite file: back up PostgreSQL with pg_dump "
            "(docs/operations.md)"
        )
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source.absolute()}")  # none is created
    keys = [(settings.receipt_key_file, DEFAULT_KEY_NAME, "OPENEXEC_RECEIPT_KEY", "receipt key")]
    if settings.ledger or settings.ledger_key_file.exists():
        keys.append(
            (settings.ledger_key_file, DEFAULT_LEDGER_KEY_NAME, "OPENEXEC_LEDGER_KEY", "ledger key")
        )
    key_files = []
    for path, name, variable, what in keys:
        read_private_key(path, variable, what)  # ConfigError, naming the key, if unusable
        key_files.append((path, name, path.read_bytes()))

    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy = destination / source.name
    for target in (copy, *(destination / name for _, name, _ in key_files)):
        if target.exists() or target.is_symlink():
            raise BackupError(f"{target} already exists; back up into a new directory")

    def copy_database(temporary: Path) -> tuple[int, int]:
        """Copy the store; return how many executions and ledger entries the copy holds."""
        # mode=rw: a database that vanished is an error, not a new empty file
        uri = f"{source.resolve().as_uri()}?mode=rw"
        with (
            contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)) as live,
            contextlib.closing(sqlite3.connect(temporary)) as target,
        ):
            live.backup(target)  # pages=-1: everything in one step, one snapshot
            try:
                executions = target.execute("SELECT count(*) FROM executions").fetchone()[0]
                ledger = target.execute("SELECT size FROM ledger_state WHERE id = 1").fetchone()
            except sqlite3.DatabaseError as exc:
                raise BackupError(f"{source} is not an OpenExec store: {exc}") from None
        return executions, ledger[0] if ledger else 0

    executions, ledger_size = _publish(copy, copy_database)
    copies = [(source, copy)]
    for path, name, content in key_files:
        _publish(
            destination / name, lambda temporary, content=content: temporary.write_bytes(content)
        )
        copies.append((path, destination / name))
    _fsync_directory(destination)
    return Backup(tuple(copies), executions, ledger_size)


def _publish(target: Path, write: Callable[[Path], T]) -> T:
    """Write ``target`` under a temporary name (0600) and link it into place once complete and
    on disk: a backup cut short leaves no file that looks whole, and nothing is overwritten."""
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(descriptor)
    temporary = Path(name)
    try:
        written = write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.link(temporary, target)
    finally:
        temporary.unlink()
    return written


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
