"""Group commit: an event loop's writes committed in batches by one thread."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openexec.store.connection import Compiled, StoreConflict, StoreUnavailable, first_line
from openexec.store.sqlite_locks import ProcessWriteLock

log = logging.getLogger("openexec.store")

Write = tuple[Compiled, dict[str, Any], asyncio.Future[int]]
# Told of every batch that went to the database: how many writes, and the seconds from its
# start on the event loop to its outcome (openexec.metrics).
BatchObserver = Callable[[int, float], None]


class GroupCommitWriter:
    """Commits an event loop's writes in batches: whatever is submitted while one batch
    commits goes into the next transaction together (group commit).

    Each write resolves its future with its row count once the commit is durable, or with
    StoreUnavailable (or the driver's error for a refused value) when the database did not
    take it: then nothing of it happened. Batches form on the event loop, one at a time, and
    the commit, which waits for the disk, runs in the writer's one thread.

    On SQLite the event loop runs a batch's statements itself, on a connection the writer
    keeps, and hands the thread only the commit. The statements take microseconds, while a
    thread that ran them would need the GIL back after each call into the driver, and the
    event loop pays for every such hand-off. The loop never waits for a lock: the workers'
    lock (``ProcessWriteLock``, taken before SQLite's own) is tried on a timer, and SQLite's
    write lock held by another process, or any failing statement, sends the whole batch to the
    thread, which waits there or applies the writes one by one. That is also how PostgreSQL,
    whose statements wait on the network, always runs.
    """

    MAX_BATCH = 256
    CONFLICT_RETRIES = 3  # a lone write the database rolled back to break a deadlock

    def __init__(
        self,
        checkout: Callable[[], contextlib.AbstractContextManager[Any]],
        connect: Callable[[], Any] | None,
        lock: ProcessWriteLock | None,
        after_commit: Callable[[], None] | None,
        observe: BatchObserver | None = None,
    ) -> None:
        self._checkout = checkout
        self._connect = connect  # SQLite: opens the connection the event loop keeps
        self._lock = lock
        self._after_commit = after_commit
        self._observe = observe
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="openexec-store-writer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Write] = []
        self._flushing = False  # a batch is committing, or the next one is scheduled
        self._kept: Any = None
        self._closed = False

    def submit(self, statement: Compiled, params: dict[str, Any]) -> asyncio.Future[int]:
        """Queue a write from the event loop's thread; batches start on that loop."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((statement, params, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # writes submitted in this turn of the loop join it
        return future

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writes come from one event loop at a time (a server has one; tests run several one
        after another). A loop that closed mid-batch left its batch to nobody: wait for the
        thread to finish it, then start afresh, without the lock."""
        if self._flushing:
            if self._loop is not None and not self._loop.is_closed():
                raise StoreUnavailable("the store's writes belong to another event loop")
            self._thread.submit(int).result()  # whatever the closed loop left in the thread
            self._pending, self._flushing = [], False
            self._discard_kept()
            if self._lock is not None:
                self._lock.release_unless(busy=False)
        self._loop = loop

    def close(self) -> None:
        """Wait for the batch being committed; writes submitted after this are refused."""
        self._closed = True
        self._thread.shutdown(wait=True)
        if self._kept is not None:
            with contextlib.suppress(Exception):
                self._kept.close()
            self._kept = None
        if self._lock is not None:
            self._lock.close()

    def _flush(self) -> None:
        """Start the next batch (on the event loop)."""
        batch = self._pending[: self.MAX_BATCH]
        del self._pending[: self.MAX_BATCH]
        if not batch:
            self._flushing = False
            return
        try:
            self._start(batch)
        except Exception as exc:  # a bug: fail this batch, never the writer
            log.exception("the store writer failed a batch of %d writes", len(batch))
            self._discard_kept()
            self._fail_all(batch, StoreUnavailable(f"the store writer failed: {exc!r}"))

    def _start(self, batch: list[Write]) -> None:
        started = time.perf_counter()
        if self._closed:
            self._fail_all(batch, StoreUnavailable("the store is closed"))
            return
        try:
            if self._lock is not None and not self._lock.try_acquire():
                self._pending[:0] = batch  # try again soon, with whatever joined meanwhile
                asyncio.get_running_loop().call_later(self._lock.POLL_S, self._flush)
                return
            counts = self._run_on_loop(batch) if self._connect is not None else None
        except StoreUnavailable as exc:  # no connection, or the lock never came: fail at once
            self._fail_all(batch, exc)
            return
        if counts is None:
            work = functools.partial(self._apply, batch)
        else:
            work = functools.partial(self._commit_kept, counts)
        done = asyncio.get_running_loop().run_in_executor(self._thread, work)
        done.add_done_callback(functools.partial(self._committed, batch, started))

    def _run_on_loop(self, batch: list[Write]) -> list[int | Exception] | None:
        """The batch's row counts, its statements run in a transaction on the kept connection
        and left to commit; or None to leave the whole batch to the thread."""
        if self._kept is None:
            self._kept = self._keep_connection()
        try:  # BEGIN IMMEDIATE fails at once if SQLite's write lock is taken
            return _run_batch(self._kept.cursor(), batch, begin_immediately=True)
        except Exception:  # a refused value, a busy database, a disk error: the thread decides
            try:
                self._kept.rollback()
            except Exception:  # a broken connection: the next batch opens another
                self._discard_kept()
            return None

    def _keep_connection(self) -> Any:
        connection = self._connect()
        connection.detach()  # its own from now on: closing it closes it
        try:
            connection.cursor().execute("PRAGMA busy_timeout=0")  # never wait on the loop
        except Exception as exc:
            connection.close()
            raise StoreUnavailable(first_line(exc)) from exc
        return connection

    def _discard_kept(self) -> None:
        """Close the kept connection, which rolls back whatever it had begun."""
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(Exception):
                kept.close()

    def _committed(
        self, batch: list[Write], started: float, done: asyncio.Future[list[int | Exception]]
    ) -> None:
        """Resolve a committed batch and start the next (on the event loop)."""
        if self._observe is not None:
            self._observe(len(batch), time.perf_counter() - started)
        if (error := done.exception()) is not None:  # a bug in the thread
            log.error("the store writer failed a batch of %d writes", len(batch), exc_info=error)
            self._discard_kept()
            failure = StoreUnavailable(f"the store writer failed: {error!r}")
            outcomes: list[int | Exception] = [failure] * len(batch)
        else:
            outcomes = done.result()
        self._settle(batch, outcomes)

    def _fail_all(self, batch: list[Write], exc: Exception) -> None:
        self._settle(batch, [exc] * len(batch))

    def _settle(self, batch: list[Write], outcomes: list[int | Exception]) -> None:
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # cancelled: the caller stopped waiting
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._lock is not None and not self._closed:
            try:
                self._lock.release_unless(busy=bool(self._pending))
            except OSError:  # closing the lock file releases the lock anyway
                log.exception("releasing the workers' write lock")
        self._flush()

    # In the writer's thread.

    def _commit_kept(self, counts: list[int | Exception]) -> list[int | Exception]:
        """Commit what the event loop ran on the kept connection."""
        try:
            self._kept.commit()
        except Exception as exc:  # the disk or the database failed: nothing was committed
            log.warning("the store writer's commit failed: %s", first_line(exc))
            self._discard_kept()
            return [StoreUnavailable(first_line(exc))] * len(counts)
        self._committed_hook()
        return counts

    def _apply(self, batch: list[Write], conflicts: int = 0) -> list[int | Exception]:
        """Row counts, or for a write the database did not take, the reason."""
        try:
            with self._checkout() as connection:
                sqlite = self._connect is not None
                counts = _run_batch(connection.cursor(), batch, begin_immediately=sqlite)
                connection.commit()
        except StoreConflict as exc:  # rolled back to break a deadlock: nothing happened
            if len(batch) > 1:  # one write a transaction holds no row another batch waits for
                return [self._apply([write])[0] for write in batch]
            if conflicts < self.CONFLICT_RETRIES:
                return self._apply(batch, conflicts + 1)
            return [exc]
        except StoreUnavailable as exc:  # an outage: the whole batch failed, at once
            return [exc] * len(batch)
        except Exception as exc:  # a value the database refused
            if len(batch) > 1:  # apply them one by one, so one bad write fails only itself
                return [self._apply([write])[0] for write in batch]
            return [exc]
        self._committed_hook()
        return counts

    def _committed_hook(self) -> None:
        if self._after_commit is not None:
            try:
                self._after_commit()
            except Exception:  # the batch is committed whatever happens here
                log.exception("after a commit")


def _run_batch(cursor: Any, batch: list[Write], begin_immediately: bool) -> list[int | Exception]:
    """Each write's row count, run in one transaction; SQLite takes its write lock up front."""
    if begin_immediately:
        cursor.execute("BEGIN IMMEDIATE")
    return [sql.run(cursor, params).rowcount for sql, params, _ in batch]
