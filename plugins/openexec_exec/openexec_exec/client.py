"""The worker's side of the supervisor protocol (``supervisor.py`` describes it).

A worker connects to the daemon's socket in the state directory, sends the launch request
with the executable's and the directories' descriptors, and waits for the command to end, or
for ``yield_ms``, whichever comes first. If no daemon answers it starts one (the daemon's lock
makes a race between workers harmless). A connection that ends before ``accepted`` started
nothing, so it is tried again once against a fresh daemon; after ``accepted`` it never is.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from openexec_exec import supervisor

STARTUP_WAIT_S = 10.0
MESSAGE_LIMIT = 8 << 20


class SupervisorUnavailable(Exception):
    """No supervisor could be reached or started; nothing ran."""


def start_daemon(state_dir: Path) -> None:
    """Start the daemon of ``state_dir`` unless one runs; return once it listens.

    It runs the supervisor file as a script, isolated (``-I -S``: no site-packages, no user
    paths) with an environment of its own: nothing of the service's reaches it."""
    ready_read, ready_write = os.pipe()
    log = os.open(state_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                supervisor.__file__,
                "serve",
                str(state_dir),
                str(ready_write),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(ready_write,),
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )
    finally:
        os.close(ready_write)
        os.close(log)
    try:
        process.wait(STARTUP_WAIT_S)  # the daemon forks away; this parent exits at once
        with os.fdopen(ready_read, "rb") as ready:
            answer = ready.readline()
    except subprocess.TimeoutExpired:
        process.kill()
        raise SupervisorUnavailable("the supervisor did not start") from None
    if answer not in (b"ready\n", b"running\n"):
        raise SupervisorUnavailable(
            f"the supervisor did not start (see {state_dir / 'supervisor.log'})"
        )


class Run:
    """One command's connection to its supervisor."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def event(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("the supervisor closed the connection")
        return json.loads(line)

    async def snapshot(self) -> dict[str, Any]:
        """The state so far; events that were already on their way are skipped."""
        self.writer.write(b'{"snapshot":true}\n')
        await self.writer.drain()
        while True:
            event = await self.event()
            if event["event"] in ("snapshot", "exited"):
                return event

    def close(self) -> None:
        self.writer.close()


async def launch(state_dir: Path, request: dict[str, Any], fds: list[int]) -> tuple[Run, dict]:
    """Send ``request`` to a new supervisor; return the connection and its ``started`` (or
    ``failed``) event."""
    data = json.dumps({"protocol": supervisor.PROTOCOL, **request}).encode() + b"\n"
    for attempt in range(2):
        try:
            run = await _send(state_dir, data, fds)
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.to_thread(start_daemon, state_dir)
            run = await _send(state_dir, data, fds)
        try:
            if (await run.event())["event"] != "accepted":
                raise ConnectionError("unexpected answer")
        except (ConnectionError, OSError, ValueError):
            run.close()
            if attempt == 1:
                raise SupervisorUnavailable("the supervisor did not accept the command") from None
            await asyncio.to_thread(start_daemon, state_dir)
            continue
        return run, await run.event()
    raise AssertionError("unreachable")


async def connect(directory: Path, name: str) -> socket.socket:
    """A connected, non-blocking socket to ``directory/name``, reached through the
    directory's descriptor: the path of a unix socket may not exceed 107 bytes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            await loop.sock_connect(sock, f"/proc/self/fd/{fd}/{name}")
        finally:
            os.close(fd)
    except BaseException:
        sock.close()
        raise
    return sock


async def _send(state_dir: Path, data: bytes, fds: list[int]) -> Run:
    """Connect and send the request: its first bytes carry the descriptors (SCM_RIGHTS)."""
    loop = asyncio.get_running_loop()
    sock = await connect(state_dir, supervisor.SOCKET_NAME)
    try:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        while True:  # a new connection's buffer is empty: this waits only in theory
            try:
                sent = sock.sendmsg([data[: 1 << 16]], rights)
                break
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await loop.sock_sendall(sock, data[sent:])
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MESSAGE_LIMIT)
    except BaseException:
        sock.close()
        raise
    return Run(reader, writer)
