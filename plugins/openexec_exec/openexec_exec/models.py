"""The payloads of ``exec.run``, ``exec.shell`` and the process actions.

Their shape is checked here; what depends on the host (the policy, the workspace) is checked
by the validator the pack adds (``pack.ExecPack``), still at payload validation, so every
refusal is a 422 before anything is reserved.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator

from openexec.paths import check_path
from openexec_exec.keys import Part, bytes_part, encode_keys

NO_NUL = r"^[^\x00]*$"
HEX_BYTE = r"^[0-9a-fA-F]{2}$"


def _check_cwd(value: str) -> str:
    return check_path(value, allow_root=True)


Cwd = Annotated[
    str,
    Field(description="Directory to run in, relative to the workspace; '.' is the workspace."),
    AfterValidator(_check_cwd),
]


class CommandOptions(BaseModel):
    """What ``exec.run`` and ``exec.shell`` share: where, with what, for how long."""

    model_config = ConfigDict(extra="forbid")

    cwd: Cwd = "."
    env: dict[Annotated[str, Field(pattern=NO_NUL)], Annotated[str, Field(pattern=NO_NUL)]] = Field(
        default_factory=dict, description="Environment overrides (see the blocked list)."
    )
    stdin: Annotated[str, Field(pattern=NO_NUL)] | None = Field(
        None,
        description="Text written to the command's stdin, which is then closed (with background, "
        "it stays open for process.write).",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Wall-clock limit; the policy's default_timeout_s when unset."
    )
    pty: bool = Field(False, description="Run on a pseudo-terminal (output is merged).")
    cols: int = Field(120, ge=1, le=1000)
    rows: int = Field(30, ge=1, le=1000)
    yield_ms: int | None = Field(
        None,
        ge=0,
        description="Still running after this long: answer 'running' with a session "
        "(default 10000, or the policy's max_yield_ms if lower).",
    )
    background: bool = Field(False, description="Answer 'running' at once.")
    max_output_bytes: int | None = Field(
        None, ge=0, description="Tail kept per stream in the result; the policy's by default."
    )
    output_encoding: Literal["utf-8", "base64"] = "utf-8"
    expect_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Run only if the binary has this SHA-256."
    )


class RunPayload(CommandOptions):
    """``exec.run``: argv goes to the kernel as given, never to a shell."""

    argv: list[Annotated[str, Field(pattern=NO_NUL)]] = Field(min_length=1)


class ShellPayload(CommandOptions):
    """``exec.shell``: the policy's shell runs ``-c`` with exactly this string."""

    command: Annotated[str, Field(min_length=1, pattern=NO_NUL)]


# The process actions (sessions). Bounds that depend on the policy (how many bytes of input
# one request may send) are checked by the validator the pack adds (``process.ProcessActions``).

INSTANCE_NAME = r"[A-Za-z0-9][A-Za-z0-9-]{0,62}"  # what a session id starts with
SESSION_ID_PATTERN = rf"^{INSTANCE_NAME}\.[0-9a-f]{{32}}$"
MAX_KEYS = 10_000
MAX_WAIT_MS = 30_000
MAX_GRACE_MS = 600_000


class SessionPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(
        pattern=SESSION_ID_PATTERN,
        description="'<instance>.<32 hex digits>', as exec.run answered it.",
    )


class ListPayload(BaseModel):
    """``process.list``: this instance's sessions, running and kept."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(200, ge=1, le=1000, description="The most recent sessions shown.")


class PollPayload(SessionPayload):
    """``process.poll``: output from byte offsets (``offset`` with a PTY), waiting up to
    ``wait_ms`` for some to arrive or for the command to end."""

    stdout_offset: int = Field(0, ge=0)
    stderr_offset: int = Field(0, ge=0)
    offset: int = Field(0, ge=0, description="The PTY's merged output.")
    wait_ms: int = Field(0, ge=0, le=MAX_WAIT_MS)
    max_bytes: int | None = Field(
        None,
        ge=1,
        le=1 << 20,
        description="Per stream; the policy's max_output_bytes (at most 1 MiB) when unset.",
    )
    output_encoding: Literal["utf-8", "base64"] = "utf-8"


class LogPayload(SessionPayload):
    """``process.log``: a stream's log, by lines."""

    stream: Literal["stdout", "stderr", "output"] | None = Field(
        None, description="Unset: 'output' with a PTY, else 'stdout'."
    )
    offset: int | None = Field(None, ge=0, description="First line; unset: the last lines.")
    limit: int = Field(200, ge=1, le=10_000)


class WritePayload(SessionPayload):
    """``process.write``: text to the command's stdin; ``eof`` closes it after (with a PTY it
    sends the terminal's EOF character, C-d)."""

    data: Annotated[str, Field(max_length=1 << 20)] = ""
    eof: bool = False


Byte = Annotated[int, Strict(), Field(ge=0, le=255)] | Annotated[str, Field(pattern=HEX_BYTE)]


class SendKeysPayload(SessionPayload):
    """``process.send_keys``: ``literal`` text, then ``hex`` bytes, then ``keys`` by name
    (tmux names; see keys.py). PTY sessions only."""

    keys: list[str] = Field(default_factory=list, max_length=MAX_KEYS)
    literal: str | None = None
    hex: list[Byte] = Field(default_factory=list, max_length=MAX_KEYS)

    @model_validator(mode="after")
    def _known_keys(self) -> SendKeysPayload:
        encode_keys(self.keys)  # an unknown name is a ValueError: a 422 naming it
        return self

    def parts(self) -> list[Part]:
        data = (self.literal or "").encode() + bytes(
            b if isinstance(b, int) else int(b, 16) for b in self.hex
        )
        return ([bytes_part(data)] if data else []) + encode_keys(self.keys)


class SubmitPayload(SessionPayload):
    """``process.submit``: Enter (``\\r``). PTY sessions only."""


class PastePayload(SessionPayload):
    """``process.paste``: text as a terminal paste. ``bracketed`` wraps it in
    ``ESC[200~ … ESC[201~`` (PTY sessions only), after removing any such marker from it."""

    text: Annotated[str, Field(max_length=1 << 20)]
    bracketed: bool = True


class KillPayload(SessionPayload):
    """``process.kill``: the signal to the group and every descendant, then SIGKILL after
    ``grace_ms`` (the policy's ``kill_grace_s`` when unset)."""

    signal: Literal["TERM", "INT", "HUP", "KILL"] = "TERM"
    grace_ms: int | None = Field(None, ge=0, le=MAX_GRACE_MS)


class RemovePayload(SessionPayload):
    """``process.remove``: kill it if it runs, and delete its state and logs."""
