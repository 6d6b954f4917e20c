"""Waiting on real processes: the exec pack's tests watch commands through ``/proc``."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def live_processes_of(uid: int) -> list[int]:
    """The processes of ``uid`` that have not ended (commands run as ``nobody`` under root)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid and alive(int(entry)):
                found.append(int(entry))
        except FileNotFoundError:
            continue
    return found


def stop_daemon(state: Path) -> None:
    """End the exec pack's supervisor daemon of ``state``, which outlives the service on
    purpose, and every session still running there (a command dies with its supervisor).
    Each pid is in its lock file."""
    from openexec_exec.supervisor import LOCK_NAME, SESSION_LOCK, SESSIONS

    locks = [state / LOCK_NAME, *(state / SESSIONS).glob(f"*/{SESSION_LOCK}")]
    for lock in locks:
        try:
            pid = int(lock.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            continue
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if lock.name == LOCK_NAME else signal.SIGKILL)
