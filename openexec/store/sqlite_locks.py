"""SQLite's write lock across worker processes, and its checkpointer."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openexec.settings import ConfigError, Settings
from openexec.store.connection import StoreUnavailable

log = logging.getLogger("openexec.store")

LOCK_WAIT_S = 30.0  # like SQLite's busy timeout: a writer waits this long for another's lock


class Checkpointer:
    """Copies SQLite's write-ahead log into the database file from its own thread, one
    database's worth for all its workers. Left to itself, SQLite checkpoints inside the commit
    that crosses 1,000 WAL pages, and every request waiting on that batch waits for it too. A
    PASSIVE checkpoint never blocks the writer or the readers, but its fsync shares the disk
    with theirs. In a big store with random keys each commit's index pages are its own, so a
    checkpoint's size, and the wait of a commit beside it, grow with the interval: 20 a second
    kept the tail of a million-row store near an empty one's where 5 a second did not
    (docs/performance.md).

    One worker checkpoints: the first whose writer commits takes an exclusive ``flock`` on
    ``<db>-checkpoint-lock`` and keeps it; the others try again after each of their commits,
    so a dead owner's place is taken at once. The owner checkpoints every ``INTERVAL_S`` while
    the WAL file changes, whichever worker wrote to it, and after its own commits."""

    INTERVAL_S = 0.05

    def __init__(self, checkout: Any, database: Path) -> None:
        self._checkout = checkout
        self._wal = database.with_name(database.name + "-wal")
        self._lock: int | None = _open_private(
            database.with_name(database.name + "-checkpoint-lock")
        )
        self._committed = threading.Event()
        self._closing = threading.Event()
        self._progress = threading.Condition()
        self.runs = 0  # checkpoints attempted so far
        self._thread = threading.Thread(
            target=self._run, name="openexec-wal-checkpoint", daemon=True
        )

    def poke(self) -> None:
        """Called by the writer after each commit (from its thread only)."""
        if self._thread.ident is None:
            if self._closing.is_set() or not _flock(self._lock, fcntl.LOCK_EX):
                return  # another worker checkpoints
            self._thread.start()
        self._committed.set()

    def wait_for_runs(self, runs: int, timeout: float) -> bool:
        """Wait until at least ``runs`` checkpoints have been attempted."""
        with self._progress:
            return self._progress.wait_for(lambda: self.runs >= runs, timeout)

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._lock is not None:
            os.close(self._lock)  # lets another worker's checkpointer take over
            self._lock = None

    def _run(self) -> None:
        seen = None
        while not self._closing.wait(self.INTERVAL_S):
            state = self._wal_state()
            if state == seen and not self._committed.is_set():
                continue
            self._committed.clear()
            seen = state
            try:
                with self._checkout() as connection:
                    connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception:  # the next round tries again; SQLite's own checkpoint remains
                log.warning("WAL checkpoint failed", exc_info=True)
            with self._progress:
                self.runs += 1
                self._progress.notify_all()

    def _wal_state(self) -> tuple[int, int] | None:
        try:
            stat = self._wal.stat()
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns


class ProcessWriteLock:
    """An exclusive ``flock`` the writers of all worker processes take turns on (SQLite).

    Taken before SQLite's own write lock, which a writer then never waits for. It is never
    waited for either: the writer tries it without blocking and, while another worker holds
    it, tries again every ``POLL_S`` from its event loop, where SQLite's busy handler would
    sleep up to 100 ms at a time. After ``LOCK_WAIT_S`` (SQLite's busy timeout) the batch fails
    with StoreUnavailable. The lock is kept from one batch to the next while writes are queued
    and given up when the queue runs dry or after ``HOLD_S``.

    A writer that has to wait says so with a shared ``flock`` on a second file, until it has
    the lock or gives up. A writer that lets the lock go while another is marked waiting does
    not take it again while any writer is: otherwise it takes the lock back microseconds after
    letting it go, and the others' tries hardly ever find it free.
    """

    HOLD_S = 0.01
    POLL_S = 0.001

    def __init__(self, path: Path, waiting_path: Path) -> None:
        self._descriptor = _open_private(path)
        self._waiting = _open_private(waiting_path)
        self._held_since: float | None = None
        self._wanted_since: float | None = None  # since when tries have failed
        self._marked_waiting = False
        self._yielding = False  # let the lock go while others waited: they go first

    def try_acquire(self) -> bool:
        """Take the lock if it is free and not owed to a waiting writer; True if this process
        holds it. Raises StoreUnavailable once tries have failed for ``LOCK_WAIT_S``."""
        if self._held_since is not None:
            return True
        now = time.monotonic()
        if self._yielding:
            self._yielding = self._others_waiting()
        if not self._yielding and _flock(self._descriptor, fcntl.LOCK_EX):
            self._held_since, self._wanted_since = now, None
            self._unmark_waiting()
            return True
        if self._wanted_since is None:
            self._wanted_since = now
        elif now - self._wanted_since > LOCK_WAIT_S:
            self._wanted_since = None
            self._unmark_waiting()  # giving up: nobody should yield to this writer now
            raise StoreUnavailable(f"another worker held the write lock for {LOCK_WAIT_S:g} s")
        if not self._yielding and not self._marked_waiting:
            self._marked_waiting = _flock(self._waiting, fcntl.LOCK_SH)
        return False

    def release_unless(self, busy: bool) -> None:
        held_since = self._held_since
        if held_since is not None and (not busy or time.monotonic() - held_since > self.HOLD_S):
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            self._held_since = None
            self._yielding = self._others_waiting()

    def close(self) -> None:
        """Closing the files releases both locks; a batch that finishes later finds nothing
        held, and no descriptor of another file under the old numbers."""
        self._held_since, self._marked_waiting = None, False
        os.close(self._descriptor)
        os.close(self._waiting)

    def _unmark_waiting(self) -> None:
        if self._marked_waiting:
            fcntl.flock(self._waiting, fcntl.LOCK_UN)
            self._marked_waiting = False

    def _others_waiting(self) -> bool:
        if not _flock(self._waiting, fcntl.LOCK_EX):
            return True
        fcntl.flock(self._waiting, fcntl.LOCK_UN)
        return False


class ThreadWriteLock:
    """The workers' write lock for a writer that is not an event loop's: the ledger's
    integrator, whose appends run in its own thread. Without it such a transaction took
    SQLite's write lock behind the workers' backs, their next batch found it taken and fell
    to a connection whose busy handler sleeps up to 100 ms at a time: the p99 of ``/execute``
    doubled (bench/ledger.py).

    It waits in its thread, marked as waiting with a shared ``flock`` on the second file, so
    that a worker's writer lets the lock go after ``ProcessWriteLock.HOLD_S`` and does not take
    it back before this one had its turn; it holds the lock for one transaction only."""

    def __init__(self, path: Path, waiting_path: Path) -> None:
        self._path, self._waiting_path = path, waiting_path

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block; raises StoreUnavailable after ``LOCK_WAIT_S``."""
        descriptor = _open_private(self._path)
        waiting = _open_private(self._waiting_path)
        try:
            fcntl.flock(waiting, fcntl.LOCK_SH)
            deadline = time.monotonic() + LOCK_WAIT_S
            while not _flock(descriptor, fcntl.LOCK_EX):
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"another worker held the write lock for {LOCK_WAIT_S:g} s"
                    )
                time.sleep(ProcessWriteLock.POLL_S)
            fcntl.flock(waiting, fcntl.LOCK_UN)
            yield
        finally:  # closing the files releases both locks
            os.close(descriptor)
            os.close(waiting)


def _flock(descriptor: int, operation: int) -> bool:
    """Take a ``flock`` without waiting; False if another process holds a conflicting one."""
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_private(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)


def open_write_lock(settings: Settings) -> ProcessWriteLock | None:
    """The SQLite workers' lock files beside the database; opened at startup, so that one this
    process cannot use stops the service with a clear message instead of failing writes."""
    path = settings.sqlite_path
    if path is None:
        return None
    lock_path = path.with_name(path.name + "-writer-lock")
    try:
        return ProcessWriteLock(lock_path, path.with_name(path.name + "-writer-wait"))
    except OSError as exc:
        raise _unusable_lock_file(exc) from None


def thread_write_lock(settings: Settings) -> ThreadWriteLock | None:
    """The workers' write lock for a thread's transactions (SQLite files only)."""
    path = settings.sqlite_path
    if path is None:
        return None
    return ThreadWriteLock(
        path.with_name(path.name + "-writer-lock"), path.with_name(path.name + "-writer-wait")
    )


def open_checkpointer(settings: Settings, checkout: Any) -> Checkpointer | None:
    """A SQLite file's checkpointer (an in-memory database has no write-ahead log)."""
    path = settings.sqlite_path
    if path is None:
        return None
    try:
        return Checkpointer(checkout, path)
    except OSError as exc:
        raise _unusable_lock_file(exc) from None


def _unusable_lock_file(exc: OSError) -> ConfigError:
    return ConfigError(
        "OPENEXEC_DB_URL", f"cannot open the workers' lock file {exc.filename}: {exc.strerror}"
    )
