"""The integrator in a process of its own, which is what a server runs
(``OPENEXEC_LEDGER_INTEGRATOR=process``, the default).

In a worker's thread the integrator's JSON, hashing and signing took the GIL from the event
loop that answers ``/execute``, for tens of milliseconds every interval under load: with the
ledger on, p99 was twice what it was with it off (bench/ledger.py). A process of its own runs
the same ``Integrator`` on another core.

Each worker starts one child, ``python -m openexec.ledger.process``; the children take the
integrator lock as the threads did, so one integrates and the others wait to take over. The
child reads its configuration, the database URL with its password among it, as one line on
its stdin, never from its command line, which every local user can read. Its worker decides
when it stops: the child finishes the append in progress and exits when its stdin closes, and
ignores SIGINT and SIGTERM, which a terminal's Ctrl-C or a service manager sends to the whole
process group before the worker has shut down. It dies with its worker
(``PR_SET_PDEATHSIG``). A child that dies otherwise, a kill -9 for example, is replaced by
its worker; its lock died with it, and the append it had not committed is still waiting.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from openexec.engine import rfc3339, utc_now
from openexec.keyfiles import read_private_key
from openexec.ledger.integrator import Integrator, IntegratorLock
from openexec.ledger.note import NoteSigner
from openexec.logs import configure_logging
from openexec.settings import Settings
from openexec.store.connection import open_engine
from openexec.store.ledger import LedgerStore
from openexec.store.sqlite_locks import thread_write_lock

log = logging.getLogger("openexec.ledger")

STOP_TIMEOUT_S = 30.0  # an append in progress finishes within about an interval
PR_SET_PDEATHSIG = 1


class IntegratorProcess:
    """A worker's integrator child: started, watched and replaced from one thread, the thread
    ``PR_SET_PDEATHSIG`` is tied to, which lives until ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self._config = {
            "parent": os.getpid(),
            "db_url": settings.db_url,
            "db_pool_size": min(settings.db_pool_size, 2),
            "key": str(settings.ledger_key_file),
            "origin": settings.ledger_origin,
            "interval_s": settings.ledger_interval_s,
            "log_format": settings.log_format,
        }
        self._respawn_s = min(max(settings.ledger_interval_s, 0.1), 5.0)
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="openexec-ledger", daemon=True)

    def start(self) -> None:
        """Start the child (from the app's startup, once the worker's logging is set)."""
        self._config["log_level"] = logging.getLogger("openexec").getEffectiveLevel()
        self._thread.start()

    def stop(self) -> None:
        """Close the child's stdin, then SIGKILL it if it has not finished within the timeout."""
        self._stopping.set()
        with self._lock:
            child = self._child
        if child is not None:
            assert child.stdin is not None
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._child = self._spawn()
            code = self._child.wait()
            if self._stopping.is_set():
                return
            log.warning("the ledger integrator process exited (%s); starting another", code)
            self._stopping.wait(self._respawn_s)

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "openexec.ledger.process"],
            stdin=subprocess.PIPE,
            close_fds=True,
        )
        assert child.stdin is not None
        # a child that died at once closed the pipe: the watch loop sees it exit
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(json.dumps(self._config).encode() + b"\n")
            child.stdin.flush()
        return child


def run_child(control: BinaryIO) -> int:
    """The child: integrate until ``control`` (its stdin) closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    line = control.readline()
    if not line:  # the worker died before it wrote the configuration
        return 0
    config = json.loads(line)
    logging.getLogger("openexec").setLevel(config["log_level"])
    configure_logging(config["log_format"])  # its worker's format, on the same stderr
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != config["parent"]:  # the parent died before the line above
        return 0
    settings = Settings(
        db_url=config["db_url"],
        db_pool_size=config["db_pool_size"],
        ledger_key_path=Path(config["key"]),
        ledger_origin=config["origin"],
        ledger_interval_s=config["interval_s"],
    )
    store = LedgerStore(open_engine(settings), thread_write_lock(settings))
    key = read_private_key(settings.ledger_key_file, "OPENEXEC_LEDGER_KEY", "ledger key")
    integrator = Integrator(
        store,
        NoteSigner(settings.ledger_origin, key),
        settings.ledger_interval_s,
        IntegratorLock(store, settings.sqlite_path),
        lambda: rfc3339(utc_now()),
    )
    integrator.start()
    control.read()  # until the worker closes it, or dies
    integrator.stop()
    store.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(run_child(sys.stdin.buffer))
