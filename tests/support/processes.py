"""Real uvicorn processes for the concurrency and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[2]


class ServerExited(RuntimeError):
    """The server process ended before it answered /ready."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any OpenExec setting it may carry, plus ``settings``:
    a server under test is configured by its test alone. (An app built in this process sets
    PROMETHEUS_MULTIPROC_DIR, the metrics directory of this process, not of the server.)"""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENEXEC_", "CLAWSHIELD_", "PROMETHEUS_MULTIPROC_DIR"))
    }
    return {**inherited, **settings}


class Uvicorn:
    """A uvicorn process serving ``target``; ``stop`` ends it, ``kill`` ends it with SIGKILL.

    A free port is found by binding port 0 and letting it go, so another process can take it
    before uvicorn binds it; a server that exits before it is ready is started again on another
    port, twice at most."""

    cwd = ROOT
    log_level = "warning"  # uvicorn's --log-level, which OpenExec's own lines follow too

    def __init__(self, target: str, env: dict[str, str], workers: int = 1, log: Path | None = None):
        self.target = target
        self._log = open(log or os.devnull, "ab")  # noqa: SIM115 - closed in stop()
        for attempt in range(3):
            self._start(env, workers)
            try:
                self._wait_ready()
                return
            except ServerExited:
                if attempt == 2:
                    raise

    def _start(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                *self._command(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                self.log_level,
            ],
            cwd=self.cwd,
            env=clean_environment(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", self.target]

    def _wait_ready(self, timeout: float = 30) -> None:
        """Poll /ready until the server answers; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerExited(f"uvicorn exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("uvicorn did not become ready")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


OPENEXEC = Path(sys.executable).with_name("openexec")  # the console script beside this Python


class Serve(Uvicorn):
    """``openexec serve`` run from ``cwd``, as an operator starts it; otherwise a ``Uvicorn``."""

    def __init__(
        self, cwd: Path, env: dict[str, str], workers: int = 1, log: Path | None = None
    ) -> None:
        self.cwd = cwd
        super().__init__("openexec.asgi:app", env, workers, log)

    def _command(self) -> list[str]:
        return [str(OPENEXEC), "serve"]
