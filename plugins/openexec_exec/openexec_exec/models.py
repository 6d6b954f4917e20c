"""The payloads of ``exec.run`` and ``exec.shell``.

Their shape is checked here; what depends on the host (the policy, the workspace) is checked
by the validator the pack adds (``pack.ExecPack``), still at payload validation, so every
refusal is a 422 before anything is reserved.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from openexec.paths import check_path

NO_NUL = r"^[^\x00]*$"


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
        None, description="Text written to the command's stdin, which is then closed."
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
