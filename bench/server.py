"""Start and stop the service (or the ceiling app) as a developer would: a real uvicorn process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class BenchFailure(Exception):
    """The benchmark cannot give a meaningful figure; the message says why."""


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server: the uvicorn process plus any worker processes."""
        return sum(_rss(pid) for pid in [self.pid, *_children(self.pid)])

    def worker_pids(self) -> list[int]:
        """The processes that answer requests (the process itself with a single worker)."""
        return _children(self.pid) or [self.pid]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(
    app: str, env: Mapping[str, str], workers: int, log: Path, flags: Sequence[str] = ()
) -> Iterator[Server]:
    """Run ``python -m uvicorn APP`` with the flags the benchmark promises (and ``flags``);
    stop it on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *flags,
    ]
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=log_file, stderr=log_file
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchFailure(f"the server exited at startup:\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(server.url + "/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise BenchFailure(f"the server was not ready after {READY_TIMEOUT_S:g}s:\n{_tail(server.log)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM lets uvicorn finish in-flight requests, so every reserved row gets its outcome."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children.extend(int(child) for child in task.read_text().split())
    return children


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
