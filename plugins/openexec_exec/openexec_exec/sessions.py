"""Finding a session and talking to it, from any worker of the host.

A session is a directory ``sessions/<session_id>/`` in the state directory: ``state.json``,
the logs, ``lock`` (held by its supervisor while it lives), ``session.sock`` (its supervisor's
requests, 0600) and, once it has ended, ``expires``. A worker asks the supervisor while there
is one; after the session ended (or if its supervisor vanished) it reads the directory. No
worker holds anything of a session, so any worker serves any session, and a restarted service
finds every session again.

A session id is ``<instance>.<32 hex digits>``: the instance that runs it (``instance`` in the
state directory, or ``OPENEXEC_EXEC_INSTANCE``) and 128 random bits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from openexec import ActionError
from openexec_exec import client, supervisor

INSTANCE_FILE = "instance"
RETRY_S = 0.02
DEADLINE_MARGIN_S = 1.0
LOST = "lost"  # the state of a session whose supervisor vanished before it recorded an end


def instance_name(state: Path, configured: str) -> str:
    """``configured``, or the name this state directory was given the first time (the short
    host name and 8 random hex digits), made now if there is none yet."""
    if configured:
        return configured
    path = state / INSTANCE_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-")
    name = f"{host[:40] or 'openexec'}-{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker named it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(name + "\n")
    return name


@dataclass(frozen=True)
class Sessions:
    """This instance's sessions, in ``state/sessions``."""

    state: Path
    configured_instance: str = ""

    @property
    def root(self) -> Path:
        return self.state / supervisor.SESSIONS

    @cached_property
    def instance(self) -> str:
        """Read (or made) on first use: the state directory exists once the pack started."""
        return instance_name(self.state, self.configured_instance)

    def new_id(self) -> str:
        return f"{self.instance}.{secrets.token_hex(16)}"

    def directory(self, session_id: str) -> Path:
        """The session's directory; ``session_elsewhere`` or ``session_not_found`` if none."""
        owner = session_id.rpartition(".")[0]
        if owner != self.instance:
            raise ActionError(
                "session_elsewhere",
                f"session {session_id} runs on instance {owner!r}; this is {self.instance!r}",
            )
        path = self.root / session_id
        if not path.is_dir():
            raise ActionError(
                "session_not_found", f"no session {session_id} (never started, or removed)"
            )
        return path

    async def ask(
        self, directory: Path, request: dict[str, Any], timeout_s: float
    ) -> dict[str, Any] | None:
        """The supervisor's answer to ``request``, or None when no supervisor runs the
        session any more (then ``recorded`` has its final state). A supervisor that is alive
        but does not answer (busy, its backlog full) is asked again, and is ``supervisor_lost``
        only after ``timeout_s``: its session is never taken for ended while it runs."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            remaining = max(deadline - asyncio.get_running_loop().time(), RETRY_S)
            answer = await self._ask_once(directory, request, remaining)
            if answer is not None and answer.get("code") in ("expired", "bad_request"):
                raise ActionError(
                    "supervisor_lost",
                    f"the session's supervisor refused the request ({answer['code']}): "
                    f"{answer.get('message', '')}",
                )
            if answer is not None:
                return answer
            if await asyncio.to_thread(self._ended, directory):
                return None
            if asyncio.get_running_loop().time() >= deadline:
                raise ActionError(
                    "supervisor_lost",
                    f"the session's supervisor did not answer in {timeout_s:g} s",
                )
            await asyncio.sleep(RETRY_S)

    async def _ask_once(
        self, directory: Path, request: dict[str, Any], timeout_s: float
    ) -> dict[str, Any] | None:
        try:
            sock = await client.connect(directory, supervisor.SESSION_SOCKET)
        except OSError:  # gone, refused, or (EAGAIN) its backlog is full
            return None
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=client.MESSAGE_LIMIT)
        # A request the supervisor reads only after we gave up (it was stopped, say) must not
        # act then: it carries a deadline (CLOCK_MONOTONIC is the same in every process), a
        # margin before ours, so an answer to one acted on still reaches us.
        margin = min(DEADLINE_MARGIN_S, timeout_s / 2)
        timed = {**request, "deadline": time.monotonic() + timeout_s - margin}
        try:
            writer.write(json.dumps(timed, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout_s)
            return json.loads(line) if line.endswith(b"\n") else None
        except TimeoutError:
            raise ActionError(
                "supervisor_lost", f"the session's supervisor did not answer in {timeout_s:g} s"
            ) from None
        except (OSError, ValueError):  # the connection broke, or an answer over the limit
            return None
        finally:
            writer.close()

    def _ended(self, directory: Path) -> bool:
        """Whether the session has recorded its end, or has no supervisor left."""
        state = self._read_state(directory)
        if state is not None and state["state"] != "running":
            return True
        return not supervisor.supervised(str(directory))

    def recorded(self, directory: Path) -> dict[str, Any]:
        """``state.json``, with ``lost`` for a session still marked running whose supervisor
        is gone."""
        state = self._read_state(directory)
        if state is not None and state["state"] != "running":
            return state
        if supervisor.supervised(str(directory)):
            if state is None:
                raise ActionError("session_not_found", "the session is still starting")
            return state
        state = self._read_state(directory)  # it may have ended between the two reads
        if state is None:
            raise ActionError("session_not_found", f"{directory.name} has no recorded state")
        if state["state"] == "running":
            state = {**state, "state": LOST}
        return state

    @staticmethod
    def _read_state(directory: Path) -> dict[str, Any] | None:
        try:
            return json.loads((directory / supervisor.STATE_NAME).read_text())
        except (FileNotFoundError, ValueError):  # not written yet, or removed meanwhile
            return None

    def all_directories(self) -> list[Path]:
        return [path for path in self.root.iterdir() if not path.name.startswith(".")]

    def read_on_disk(
        self, directory: Path, state: dict[str, Any], offsets: dict[str, int], limit: int
    ) -> dict[str, dict[str, Any]]:
        """What a live supervisor's poll answer holds, read from a finished session's files.
        A lost session's ``state.json`` may be older than its logs: the logs win."""
        chunks = {}
        for name, recorded in state["streams"].items():
            if name not in offsets:
                continue
            path = directory / f"{name}.log"
            size = path.stat().st_size if path.exists() else 0
            logged = max(recorded["logged"], size)
            total = max(recorded["bytes"], logged)
            tail = recorded.get("tail", "") if recorded["bytes"] == total else ""
            start, data = supervisor.read_stream(
                str(path), logged, total, base64.b64decode(tail), offsets[name], limit
            )
            chunks[name] = {"start": start, "data": data}
        return chunks
