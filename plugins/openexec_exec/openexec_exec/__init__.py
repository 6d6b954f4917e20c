"""OpenExec exec pack: governed command execution (``exec.run``, ``exec.shell``).

What runs is exactly the approved argv, in the approved directory, with the approved
environment, once, as the operator's policy allows; a supervisor outside the uvicorn worker
owns each command, and the result names the binary that ran. See README.md.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field

from openexec import Action, PackSettings, hookimpl
from openexec.settings import Settings
from openexec_exec import client, sandbox
from openexec_exec.metrics import SessionStates
from openexec_exec.models import INSTANCE_NAME
from openexec_exec.pack import CommandUser, ExecPack
from openexec_exec.policy import Policy, load_policy
from openexec_exec.sessions import Sessions

DIR_MODE = 0o700


class ExecSettings(PackSettings):
    """``OPENEXEC_EXEC_WORKSPACE``: where commands run (created 0700 at startup).
    ``OPENEXEC_EXEC_STATE``: session state and output, never inside the workspace.
    ``OPENEXEC_EXEC_POLICY``: the operator's policy file (TOML); unset, the built-in one.
    ``OPENEXEC_EXEC_INSTANCE``: the name session ids carry; unset, the one the state
    directory was given at its first start (``<host>-<8 hex>``)."""

    env_prefix = "OPENEXEC_EXEC_"
    workspace: Path = Path("openexec-workspace")
    state: Path = Path("openexec-exec-state")
    policy: Path | None = None
    instance: str = Field("", pattern=rf"^({INSTANCE_NAME})?$")

    @cached_property
    def loaded_policy(self) -> Policy:
        """The policy file, read once per settings instance (so once at startup)."""
        return load_policy(self.policy)

    def effective(self) -> dict[str, Any]:
        return {"policy": self.loaded_policy.shown()}


def service_files(settings: Settings, pack_settings: ExecSettings) -> tuple[Path, ...]:
    """The service's own files a command must never read: keys, database, state."""
    files = [settings.receipt_key_file.absolute(), pack_settings.state.absolute()]
    database = settings.sqlite_path
    if database is not None:
        database = database.absolute()
        files += [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return tuple(files)


def build_pack(settings: Settings, pack_settings: ExecSettings) -> ExecPack:
    policy = pack_settings.loaded_policy
    return ExecPack(
        policy=policy,
        workspace=pack_settings.workspace.absolute(),
        state=pack_settings.state.absolute(),
        hidden=service_files(settings, pack_settings),
        sessions=Sessions(pack_settings.state.absolute(), pack_settings.instance),
        user=CommandUser.for_policy(policy),
    )


@hookimpl
def register_settings() -> type[ExecSettings]:
    return ExecSettings


@hookimpl
def register_actions(settings: Settings, pack_settings: ExecSettings) -> list[Action]:
    """Read the policy (once) and offer the actions; nothing is created here."""
    return build_pack(settings, pack_settings).actions()


@hookimpl
def register_collectors(pack_settings: ExecSettings) -> list[SessionStates]:
    """The sessions by state, read from the state directory at each scrape."""
    return [SessionStates(Sessions(pack_settings.state.absolute(), pack_settings.instance))]


@hookimpl
def startup(settings: Settings, pack_settings: ExecSettings) -> None:
    """Create the workspace and the state directory, check they are apart and that the
    sandbox runs, and start the supervisor daemon."""
    pack = build_pack(settings, pack_settings)
    workspace, state = pack.workspace, pack.state
    for path in pack.hidden:
        if path.resolve().is_relative_to(workspace.resolve()):
            raise ValueError(f"{path} is inside the workspace {workspace}, where commands run")
    if workspace.resolve().is_relative_to(state.resolve()):
        raise ValueError(f"OPENEXEC_EXEC_WORKSPACE {workspace} is inside OPENEXEC_EXEC_STATE")
    for path in (workspace, state, state / "sessions"):
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    if pack.user.uid is not None and os.stat(workspace).st_uid != pack.user.uid:
        os.chown(workspace, pack.user.uid, pack.user.gid)  # commands run as this user
    if pack.policy.sandbox == "bwrap":
        identity = (pack.user.uid, pack.user.gid) if pack.user.uid is not None else None
        try:
            sandbox.probe(pack.policy.bwrap_path, workspace, identity)
        except sandbox.SandboxUnavailable as exc:
            raise RuntimeError(
                f"sandbox = 'bwrap', but bubblewrap cannot run here: {exc}"
            ) from None
    pack.sessions.instance  # named now, not by the first request  # noqa: B018
    client.start_daemon(state)
