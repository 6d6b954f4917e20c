"""A test pack whose actions leave observable traces: a journal file, events, failures."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from openexec import Action, ActionError, Context, PackSettings, hookimpl
from openexec.plugins import Registry

# Set by in-process tests that need to hold a handler mid-run.
started = threading.Event()
release = threading.Event()


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = "x"
    hold_s: float = 0.0


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Seconds(BaseModel):
    seconds: float


class Picky(BaseModel):
    """An input model whose validator has a bug: it raises TypeError, which pydantic does not
    turn into a ValidationError."""

    word: str

    @field_validator("word")
    @classmethod
    def _buggy(cls, value: str) -> str:
        return value + 1  # type: ignore[operator]


class ProbeSettings(PackSettings):
    """``OPENEXEC_PROBE_DIR``: where the journal and the lifecycle log are written."""

    env_prefix = "OPENEXEC_PROBE_"
    dir: Path = Path("openexec-probe")


def journal_path(registry: Registry) -> Path:
    """The journal of the probe pack an app loaded, from its effective settings."""
    [probe] = (plugin for plugin in registry.plugins if "OPENEXEC_PROBE_DIR" in plugin.settings)
    return Path(probe.settings["OPENEXEC_PROBE_DIR"]) / "journal.txt"


@hookimpl
def register_settings() -> type[ProbeSettings]:
    return ProbeSettings


@hookimpl
def startup(pack_settings: ProbeSettings) -> None:
    """Make the directory, and log one line per worker that starts: ``startup <pid>``."""
    pack_settings.dir.mkdir(parents=True, exist_ok=True)
    with (pack_settings.dir / "lifecycle.txt").open("a") as handle:
        handle.write(f"startup {os.getpid()}\n")


@hookimpl
def shutdown(pack_settings: ProbeSettings) -> None:
    with (pack_settings.dir / "lifecycle.txt").open("a") as handle:
        handle.write(f"shutdown {os.getpid()}\n")


@hookimpl
def register_actions(pack_settings: ProbeSettings) -> list[Action]:
    journal = pack_settings.dir.absolute() / "journal.txt"

    def bump(payload: Note, ctx: Context) -> dict[str, Any]:
        """Append one line per run: the side effect exactly-once must protect."""
        with journal.open("a") as handle:
            handle.write(f"{ctx.exec_id} {payload.note}\n")
        if payload.hold_s:
            time.sleep(payload.hold_s)
        return {"runs": len(journal.read_text().splitlines())}

    def hold(payload: Empty, ctx: Context) -> dict[str, Any]:
        """Run until a test releases it."""
        with journal.open("a") as handle:
            handle.write(f"{ctx.exec_id} hold\n")
        started.set()
        release.wait(10)
        return {"held": True}

    def refuse(payload: Empty, ctx: Context) -> dict[str, Any]:
        raise ActionError("refused", "The probe refuses politely.")

    def crash(payload: Empty, ctx: Context) -> dict[str, Any]:
        raise TypeError("unsupported operand type(s): secret internals")

    def bad_result(payload: Empty, ctx: Context) -> Any:
        return ["not", "an", "object"]

    def nan_result(payload: Empty, ctx: Context) -> Any:
        return {"value": float("nan")}

    def sleep_sync(payload: Seconds, ctx: Context) -> dict[str, Any]:
        time.sleep(payload.seconds)
        with journal.open("a") as handle:
            handle.write(f"{ctx.exec_id} late\n")
        return {"slept": payload.seconds}

    async def sleep_async(payload: Seconds, ctx: Context) -> dict[str, Any]:
        await asyncio.sleep(payload.seconds)
        return {"slept": payload.seconds}

    def exit_process(payload: Empty, ctx: Context) -> dict[str, Any]:
        raise SystemExit(3)

    async def cancel_itself(payload: Empty, ctx: Context) -> dict[str, Any]:
        raise asyncio.CancelledError

    async def stubborn(payload: Seconds, ctx: Context) -> dict[str, Any]:
        """Ignores cancellation: the time limit must hold anyway."""
        try:
            await asyncio.sleep(payload.seconds)
        except asyncio.CancelledError:
            await asyncio.sleep(payload.seconds)
        with journal.open("a") as handle:
            handle.write(f"{ctx.exec_id} stubborn\n")
        return {"stubborn": True}

    async def context(payload: Empty, ctx: Context) -> dict[str, Any]:
        return {
            "exec_id": ctx.exec_id,
            "nonce": ctx.nonce,
            "tenant_id": ctx.tenant_id,
            "action": ctx.action,
            "mode": ctx.mode,
            "started_at": ctx.started_at.isoformat(),
        }

    return [
        Action("probe.bump", bump, Note, "Append a line to the journal."),
        Action("probe.hold", hold, Empty, "Block until released."),
        Action("probe.refuse", refuse, Empty, "Fail with an ActionError."),
        Action("probe.crash", crash, Empty, "Raise a TypeError."),
        Action("probe.bad_result", bad_result, Empty, "Return a list."),
        Action("probe.nan_result", nan_result, Empty, "Return NaN."),
        Action("probe.sleep_sync", sleep_sync, Seconds, "Sleep (sync).", timeout_s=0.5),
        Action("probe.sleep_async", sleep_async, Seconds, "Sleep (async).", timeout_s=0.5),
        Action("probe.context", context, Empty, "Return the context."),
        Action("probe.exit", exit_process, Empty, "Raise SystemExit."),
        Action("probe.cancel_itself", cancel_itself, Empty, "Raise CancelledError."),
        Action("probe.stubborn", stubborn, Seconds, "Ignore cancellation.", timeout_s=0.3),
        Action("probe.picky", context, Picky, "An input model whose validator raises TypeError."),
    ]
