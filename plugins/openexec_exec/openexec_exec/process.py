"""The process actions: list, poll, log, write, send_keys, submit, paste, kill, remove.

Each is an execution like any other (nonce, approval, receipt), so an approver governs every
keystroke, and a replay returns the stored answer without touching the session again. Each
finds the session's directory (``sessions.Sessions``), asks its supervisor while it runs, and
reads the directory once it has ended.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from openexec import Action, ActionError, Context
from openexec_exec import supervisor
from openexec_exec.keys import Part, bytes_part
from openexec_exec.models import (
    MAX_GRACE_MS,
    KillPayload,
    ListPayload,
    LogPayload,
    PastePayload,
    PollPayload,
    RemovePayload,
    SendKeysPayload,
    SessionPayload,
    SubmitPayload,
    WritePayload,
)
from openexec_exec.policy import Policy
from openexec_exec.sessions import Sessions

ANSWER_SLACK_S = 5.0  # beyond what the supervisor may take, before it counts as lost
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
REMOVE_WAIT_S = supervisor.LEFTOVER_KILL_S + supervisor.KILL_WAIT_S


def stream_names(pty: bool) -> tuple[str, ...]:
    return ("output",) if pty else ("stdout", "stderr")


def no_stream(session_id: str, name: str, names: tuple[str, ...]) -> ActionError:
    return ActionError(
        "stream_not_found",
        f"session {session_id} has no {name} stream; it has {' and '.join(names)}",
    )


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut short at its end: the next poll starts there,
    so a character is never split between two answers."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: its lead is further back
            continue
        needed = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        return data[:-back] if back < needed and byte >= 0xC0 else data
    return data


@dataclass(frozen=True)
class ProcessActions:
    policy: Policy
    sessions: Sessions

    def actions(self) -> list[Action]:
        wait = supervisor.INPUT_WAIT_S + ANSWER_SLACK_S
        kill_wait = MAX_GRACE_MS / 1000 + supervisor.KILL_WAIT_S + ANSWER_SLACK_S
        table: list[tuple[str, Any, type[BaseModel], str, float]] = [
            ("list", self.list, ListPayload, "This instance's sessions, by start.", 30.0),
            (
                "poll",
                self.poll,
                PollPayload,
                "A session's output from byte offsets, waiting up to wait_ms for more or for "
                "its end; its state.",
                30 + ANSWER_SLACK_S * 2,
            ),
            ("log", self.log, LogPayload, "A session's log, by lines.", 30.0),
            ("write", self.write, WritePayload, "Text to a session's stdin; eof closes it.", wait),
            (
                "send_keys",
                self.send_keys,
                SendKeysPayload,
                "Keys by tmux name (Enter, C-c, Up, F5, …) to a PTY session.",
                wait,
            ),
            ("submit", self.submit, SubmitPayload, "Enter (CR) to a PTY session.", wait),
            ("paste", self.paste, PastePayload, "Text as a bracketed paste.", wait),
            (
                "kill",
                self.kill,
                KillPayload,
                "Signal a session's process group, SIGKILL after the grace.",
                kill_wait,
            ),
            ("remove", self.remove, RemovePayload, "Kill a session and delete it.", 30.0),
        ]
        return [
            Action(
                name=f"process.{name}",
                handler=handler,
                input=self._bounded(model, f"process.{name}"),
                description=description,
                timeout_s=timeout,
            )
            for name, handler, model, description, timeout in table
        ]

    def _bounded(self, base: type[BaseModel], title: str) -> type[BaseModel]:
        """``base``, refusing input over the policy's ``max_stdin_bytes`` (a 422)."""
        limit = self.policy.max_stdin_bytes

        class Bounded(base):  # type: ignore[misc, valid-type]
            model_config = ConfigDict(title=title)

            @model_validator(mode="after")
            def _within_bounds(self) -> Bounded:
                if isinstance(self, SessionPayload):
                    size = sum(_part_size(part) for part in input_parts(self))
                    if size > limit:
                        raise ValueError(
                            f"{size} bytes of input; the policy's max_stdin_bytes is {limit}"
                        )
                return self

        return Bounded

    # Reading.

    async def list(self, payload: ListPayload, ctx: Context) -> dict[str, Any]:
        directories = await asyncio.to_thread(self.sessions.all_directories)
        states = await asyncio.gather(*(self._current(d) for d in directories))
        shown = sorted(
            (summary(state) for state in states if state is not None),
            key=lambda s: (s["started_at"] or "", s["session_id"]),
        )
        return {
            "instance": self.sessions.instance,
            "sessions": shown[-payload.limit :],
            "total": len(shown),
        }

    async def _current(self, directory: Path) -> dict[str, Any] | None:
        """A session's state now: from its supervisor, else from its directory."""
        try:
            answer = None
            if not (directory / supervisor.EXPIRES_NAME).exists():  # not known to have ended
                answer = await self.sessions.ask(directory, {"op": "state"}, ANSWER_SLACK_S)
            return answer or await asyncio.to_thread(self.sessions.recorded, directory)
        except ActionError:  # removed or still starting while we looked
            return None

    async def poll(self, payload: PollPayload, ctx: Context) -> dict[str, Any]:
        directory = self.sessions.directory(payload.session_id)
        limit = payload.max_bytes or min(max(self.policy.max_output_bytes, 1), 1 << 20)
        offsets = {
            "stdout": payload.stdout_offset,
            "stderr": payload.stderr_offset,
            "output": payload.offset,
        }
        request = {"op": "poll", "offsets": offsets, "wait_ms": payload.wait_ms, "limit": limit}
        answer = await self.sessions.ask(
            directory, request, payload.wait_ms / 1000 + ANSWER_SLACK_S
        )
        if answer is not None:
            chunks = {
                name: {"start": chunk["start"], "data": base64.b64decode(chunk["data"])}
                for name, chunk in answer["chunks"].items()
            }
        else:
            answer = await asyncio.to_thread(self.sessions.recorded, directory)
            chunks = await asyncio.to_thread(
                self.sessions.read_on_disk, directory, answer, offsets, limit
            )
        names = stream_names(answer["pty"])
        for name, offset in offsets.items():
            if offset and name not in names:
                raise no_stream(payload.session_id, name, names)
        result: dict[str, Any] = {"session_id": payload.session_id, **outcome(answer)}
        lost = more = False
        for name in names:
            start, data = chunks[name]["start"], chunks[name]["data"]
            stream = answer["streams"][name]
            following = start + len(data) < stream["bytes"]
            if payload.output_encoding == "utf-8":
                if following or answer["state"] == "running":
                    # Never trimmed to nothing (a max_bytes under a character's length):
                    # the poller would then never move on.
                    data = complete_utf8(data) or data
                text = data.decode("utf-8", errors="replace")
            else:
                text = base64.b64encode(data).decode()
            prefix = "" if name == "output" else f"{name}_"
            result[name] = text
            result[f"{prefix}offset"] = start
            result[f"next_{prefix}offset"] = start + len(data)
            result[f"{name}_bytes"] = stream["bytes"]
            lost = lost or start > offsets[name]
            more = more or start + len(data) < stream["bytes"]
        result.update({"truncated": lost, "more": more, "output_encoding": payload.output_encoding})
        return result

    async def log(self, payload: LogPayload, ctx: Context) -> dict[str, Any]:
        directory = self.sessions.directory(payload.session_id)
        state = await self._current(directory)
        if state is None:
            raise ActionError("session_not_found", f"no session {payload.session_id}")
        names = stream_names(state["pty"])
        stream = payload.stream or names[0]
        if stream not in names:
            raise no_stream(payload.session_id, stream, names)
        data = await asyncio.to_thread(_read_log, directory / f"{stream}.log")
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # after a final newline there is no further line
        total = len(lines)
        first = max(total - payload.limit, 0) if payload.offset is None else payload.offset
        recorded = state["streams"][stream]
        shown = lines[first:][: payload.limit]
        return {
            "session_id": payload.session_id,
            "stream": stream,
            "lines": [line.decode("utf-8", errors="replace") for line in shown],
            "offset": first,
            "total_lines": total,
            "truncated": recorded["bytes"] > recorded["logged"],
            "state": state["state"],
        }

    # Input.

    async def write(self, payload: WritePayload, ctx: Context) -> dict[str, Any]:
        return await self._input(payload, terminal=False)

    async def send_keys(self, payload: SendKeysPayload, ctx: Context) -> dict[str, Any]:
        return await self._input(payload, terminal=True)

    async def submit(self, payload: SubmitPayload, ctx: Context) -> dict[str, Any]:
        return await self._input(payload, terminal=True)

    async def paste(self, payload: PastePayload, ctx: Context) -> dict[str, Any]:
        return await self._input(payload, terminal=payload.bracketed)

    async def _input(self, payload: SessionPayload, terminal: bool) -> dict[str, Any]:
        directory = self.sessions.directory(payload.session_id)
        request = {
            "op": "input",
            "parts": input_parts(payload),
            "eof": getattr(payload, "eof", False),
            "terminal": terminal,
        }
        answer = await self.sessions.ask(
            directory, request, supervisor.INPUT_WAIT_S + ANSWER_SLACK_S
        )
        if answer is None:
            state = await asyncio.to_thread(self.sessions.recorded, directory)
            raise ActionError(
                "session_finished", f"session {payload.session_id} has ended ({state['state']})"
            )
        if answer["event"] == "error":
            raise ActionError(answer["code"], _input_refusal(answer["code"], payload.session_id))
        return {
            "session_id": payload.session_id,
            "bytes": answer["bytes"],
            "queued": answer["queued"],
        }

    # Ending.

    async def kill(self, payload: KillPayload, ctx: Context) -> dict[str, Any]:
        directory = self.sessions.directory(payload.session_id)
        grace_s = self.policy.kill_grace_s if payload.grace_ms is None else payload.grace_ms / 1000
        request = {"op": "kill", "signal": f"SIG{payload.signal}", "grace_s": grace_s}
        answer = await self.sessions.ask(
            directory, request, grace_s + supervisor.KILL_WAIT_S + ANSWER_SLACK_S
        )
        sent = f"SIG{payload.signal}" if answer is not None else None
        if answer is None:  # it had ended already
            answer = await asyncio.to_thread(self.sessions.recorded, directory)
        return {"session_id": payload.session_id, "sent": sent, **outcome(answer)}

    async def remove(self, payload: RemovePayload, ctx: Context) -> dict[str, Any]:
        directory = self.sessions.directory(payload.session_id)
        answer = await self.sessions.ask(
            directory, {"op": "remove"}, REMOVE_WAIT_S + ANSWER_SLACK_S
        )
        killed = answer is not None
        if answer is None:
            answer = await asyncio.to_thread(self.sessions.recorded, directory)
            await asyncio.to_thread(shutil.rmtree, directory, True)
        return {
            "session_id": payload.session_id,
            "removed": True,
            "killed": killed,
            **outcome(answer),
        }


def input_parts(payload: SessionPayload) -> list[Part]:
    """What an input action sends, as the supervisor's input parts."""
    if isinstance(payload, WritePayload):
        return [bytes_part(payload.data.encode())] if payload.data else []
    if isinstance(payload, SendKeysPayload):
        return payload.parts()
    if isinstance(payload, SubmitPayload):
        return [bytes_part(b"\r")]
    if isinstance(payload, PastePayload):
        text = payload.text.encode()
        if not payload.bracketed:
            return [bytes_part(text)] if text else []
        # A marker inside the text would end the paste early and type the rest as keys.
        for marker in (PASTE_START, PASTE_END):
            text = text.replace(marker, b"")
        return [bytes_part(PASTE_START + text + PASTE_END)]
    return []


def _part_size(part: Part) -> int:
    return len(base64.b64decode(part["bytes"])) if "bytes" in part else 3


def _input_refusal(code: str, session_id: str) -> str:
    return {
        "not_a_pty": f"session {session_id} runs on pipes: keys need a PTY (use process.write)",
        "stdin_closed": f"session {session_id}'s stdin is closed (eof was sent, the command "
        "closed it, or it was started without background and with no stdin)",
        "session_finished": f"session {session_id} has ended",
    }.get(code, code)


def _read_log(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # nothing printed yet
        return b""


def outcome(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": state["state"],
        "exit_code": state["exit_code"],
        "signal": state["signal"],
    }


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """One session as ``process.list`` shows it."""
    streams = state["streams"]
    return {
        "session_id": state["session_id"],
        "state": state["state"],
        "argv": state["argv"],
        "cwd": state["cwd"],
        "pty": state["pty"],
        "pid": state["pid"],
        "started_at": state["started_at"],
        "ended_at": state["ended_at"],
        "exit_code": state["exit_code"],
        "signal": state["signal"],
        **{
            f"{name}_bytes": streams[name]["bytes"] if name in streams else None
            for name in ("stdout", "stderr", "output")
        },
    }
