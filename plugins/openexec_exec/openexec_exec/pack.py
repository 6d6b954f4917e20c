"""``exec.run`` and ``exec.shell``: check at validation, check again and open at run time,
hand the open files to a supervisor, and answer when the command ends or ``yield_ms`` passes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, model_validator

from openexec import Action, ActionError, Context
from openexec_exec import client, sandbox
from openexec_exec.environment import blocked_reason, child_environment
from openexec_exec.models import CommandOptions, RunPayload, ShellPayload
from openexec_exec.policy import Policy
from openexec_exec.process import ProcessActions
from openexec_exec.resolve import Opened, Refused, file_sha256, open_cwd, open_executable
from openexec_exec.sessions import Sessions

DEFAULT_YIELD_MS = 10_000
SNAPSHOT_SLACK_S = 5.0  # beyond the longest yield: launching and the last snapshot
FINAL_STATE_POLLS = 200  # 2 s for a supervisor that hung up to write its final state


@dataclass(frozen=True)
class CommandUser:
    """Who commands run as: ``None`` fields keep the service's own identity."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_policy(cls, policy: Policy) -> CommandUser:
        """A service running as root runs commands as the policy's ``user`` (``nobody`` by
        default): root would ignore the process limit, and a command never needs root."""
        if os.geteuid() != 0:
            return cls()
        try:
            entry = (
                pwd.getpwuid(int(policy.user))
                if policy.user.isdigit()
                else pwd.getpwnam(policy.user)
            )
        except (KeyError, ValueError):
            raise ValueError(f"the policy's user {policy.user!r} does not exist") from None
        if entry.pw_uid == 0:
            return cls()
        return cls(entry.pw_uid, entry.pw_gid)


@dataclass
class Prepared:
    """What one run was checked against, opened for the supervisor."""

    opened: Opened
    sha256: str
    interpreter: dict[str, str] | None
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@dataclass(frozen=True)
class ExecPack:
    policy: Policy
    workspace: Path
    state: Path
    hidden: tuple[Path, ...]  # the service's own files, which the sandbox must not show
    sessions: Sessions
    user: CommandUser = CommandUser()

    def actions(self) -> list[Action]:
        timeout = self.policy.max_yield_ms / 1000 + SNAPSHOT_SLACK_S
        actions = [
            Action(
                name="exec.run",
                handler=self.run,
                input=self._checked(RunPayload, "exec.run"),
                description="Run argv (never through a shell) in the workspace, as the "
                "operator's policy allows; stdout, stderr, exit status and the binary's SHA-256.",
                timeout_s=timeout,
            )
        ]
        if self.policy.shell:
            actions.append(
                Action(
                    name="exec.shell",
                    handler=self.shell,
                    input=self._checked(ShellPayload, "exec.shell"),
                    description="Run the policy's shell with -c and exactly the approved string.",
                    timeout_s=timeout,
                )
            )
        return actions + ProcessActions(self.policy, self.sessions).actions()

    # Validation: every refusal is a 422 naming its reason, before anything is reserved.

    def _checked(self, base: type[CommandOptions], title: str) -> type[CommandOptions]:
        pack = self

        class Checked(base):  # type: ignore[misc, valid-type]
            model_config = ConfigDict(title=title)

            @model_validator(mode="after")
            def _host_allows(self) -> Checked:
                problem = pack.refusal(self, pack.argv_of(self))
                if problem is not None:
                    raise ValueError(problem)
                return self

        return Checked

    def argv_of(self, payload: CommandOptions) -> list[str]:
        if isinstance(payload, RunPayload):
            return payload.argv
        assert isinstance(payload, ShellPayload)
        return [self.policy.shell_path, "-c", payload.command]

    def refusal(self, payload: CommandOptions, argv: list[str]) -> str | None:
        """Why this host will not run ``payload``, or None."""
        policy = self.policy
        if len(argv) > policy.max_argv:
            return f"argv has {len(argv)} items; the policy allows {policy.max_argv}"
        if sum(len(a.encode()) + 1 for a in argv) > policy.max_argv_bytes:
            return f"argv is over the policy's max_argv_bytes ({policy.max_argv_bytes})"
        if len(payload.env) > policy.max_env:
            return f"env has {len(payload.env)} names; the policy allows {policy.max_env}"
        if sum(len(k.encode()) + len(v.encode()) + 2 for k, v in payload.env.items()) > (
            policy.max_env_bytes
        ):
            return f"env is over the policy's max_env_bytes ({policy.max_env_bytes})"
        for name in payload.env:
            if reason := blocked_reason(name):
                return reason
        if payload.stdin is not None and len(payload.stdin.encode()) > policy.max_stdin_bytes:
            return f"stdin is over the policy's max_stdin_bytes ({policy.max_stdin_bytes})"
        if payload.timeout_s is not None and payload.timeout_s > policy.max_timeout_s:
            return f"timeout_s {payload.timeout_s:g} is above the policy's max_timeout_s"
        if payload.yield_ms is not None and payload.yield_ms > policy.max_yield_ms:
            return f"yield_ms {payload.yield_ms} is above the policy's max_yield_ms"
        if (
            payload.max_output_bytes is not None
            and payload.max_output_bytes > policy.max_output_bytes
        ):
            return f"max_output_bytes is above the policy's ({policy.max_output_bytes})"
        try:
            prepared = self._open(payload, argv, hash_it=False)
        except Refused as refused:
            return str(refused)
        prepared.close()
        return None

    def _open(self, payload: CommandOptions, argv: list[str], *, hash_it: bool) -> Prepared:
        """Open the cwd and the executable and match the policy against what was opened."""
        cwd_fd = open_cwd(self.workspace, payload.cwd)
        try:
            opened = open_executable(self.policy, self.workspace, payload.cwd, argv[0])
        except BaseException:
            os.close(cwd_fd)
            raise
        prepared = Prepared(opened, "", None, [opened.fd, cwd_fd])
        try:
            problem = None
            if isinstance(payload, RunPayload):  # a shell is the operator's own choice
                problem = self.policy.refusal(opened.real_path, argv[1:])
            if problem is None and opened.interpreter is not None:
                problem = self.policy.interpreter_refusal(opened.interpreter)
            if problem is None and self.policy.sandbox == "bwrap":
                problem = sandbox.path_refusal(opened.real_path)
            if problem is not None:
                raise Refused(problem)
            if hash_it:
                prepared.sha256 = opened.sha256()
                if opened.interpreter is not None:
                    prepared.interpreter = {
                        "path": opened.interpreter,
                        "sha256": file_sha256(opened.interpreter),
                    }
        except BaseException:
            prepared.close()
            raise
        return prepared

    # Running.

    async def run(self, payload: RunPayload, ctx: Context) -> dict[str, Any]:
        return await self._execute(payload, ctx)

    async def shell(self, payload: ShellPayload, ctx: Context) -> dict[str, Any]:
        return await self._execute(payload, ctx)

    async def _execute(self, payload: CommandOptions, ctx: Context) -> dict[str, Any]:
        argv = self.argv_of(payload)
        prepared = await asyncio.to_thread(self._prepare, payload, argv)
        session_id = self.sessions.new_id()
        try:
            request = self._launch_request(payload, argv, prepared, session_id)
            run, first = await client.launch(self.state, request, prepared.fds)
        except client.SupervisorUnavailable as exc:
            raise ActionError("supervisor_unavailable", str(exc)) from None
        finally:
            prepared.close()
        if first["event"] == "failed":
            code = first["code"]
            message = first["message"]
            if code == "spawn_failed":
                message = f"the command could not start: {message}"
            raise ActionError(code, message)
        ctx.logger.info("execution %s: session %s pid %s", ctx.exec_id, session_id, first["pid"])
        try:
            final = await self._wait(run, payload, session_id)
        finally:
            run.close()
        return self._result(payload, argv, prepared, final, session_id)

    def _prepare(self, payload: CommandOptions, argv: list[str]) -> Prepared:
        """The run-time check: the answer validation gave may have changed since."""
        try:
            prepared = self._open(payload, argv, hash_it=True)
        except Refused as refused:
            raise ActionError("policy_refused", str(refused)) from None
        if payload.expect_sha256 is not None and prepared.sha256 != payload.expect_sha256:
            prepared.close()
            raise ActionError(
                "binary_mismatch",
                f"{prepared.opened.real_path} has SHA-256 {prepared.sha256}, not the expected "
                f"{payload.expect_sha256}; nothing was started",
            )
        try:
            # The supervisor's layout: executable, workspace, cwd (supervisor.EXE_FD).
            prepared.fds.insert(1, os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            prepared.close()
            raise ActionError("policy_refused", "the workspace is missing") from None
        return prepared

    def _launch_request(
        self, payload: CommandOptions, argv: list[str], prepared: Prepared, session_id: str
    ) -> dict[str, Any]:
        policy = self.policy
        bwrap = policy.sandbox == "bwrap"
        real_path = prepared.opened.real_path
        launched = (
            sandbox.bwrap_argv(
                policy.bwrap_path,
                self.workspace,
                payload.cwd,
                real_path,
                argv[1:],
                self.hidden,
                payload.pty,
            )
            if bwrap
            else argv
        )
        stdin = payload.stdin
        return {
            "session_id": session_id,
            "argv": launched,
            "shown_argv": argv,
            "cwd": payload.cwd,
            "env": child_environment(policy.path, self.workspace, payload.env, payload.pty),
            "stdin": base64.b64encode(stdin.encode()).decode() if stdin is not None else None,
            "timeout_s": payload.timeout_s or policy.default_timeout_s,
            "kill_grace_s": policy.kill_grace_s,
            "rlimits": policy.limits.rlimits(),
            "uid": self.user.uid,
            "gid": self.user.gid,
            "max_log_bytes": policy.max_log_bytes,
            "max_output_bytes": (
                policy.max_output_bytes
                if payload.max_output_bytes is None
                else payload.max_output_bytes
            ),
            "pty": payload.pty,
            "keep_stdin": payload.background,  # a background command may be written to later
            "max_sessions": policy.max_sessions,
            "session_ttl_s": policy.session_ttl_s,
            "cols": payload.cols,
            "rows": payload.rows,
            "sandbox": bwrap,
            "sandbox_path": policy.bwrap_path,
            "exe_inheritable": prepared.opened.interpreter is not None,
        }

    def yield_s(self, payload: CommandOptions) -> float:
        chosen = DEFAULT_YIELD_MS if payload.yield_ms is None else payload.yield_ms
        return min(chosen, self.policy.max_yield_ms) / 1000

    async def _wait(
        self, run: client.Run, payload: CommandOptions, session_id: str
    ) -> dict[str, Any]:
        """The final state if the command ends within ``yield_ms``, else the state so far."""
        try:
            if not payload.background:
                try:
                    return await asyncio.wait_for(run.event(), self.yield_s(payload))
                except TimeoutError:
                    pass
            return await run.snapshot()
        except (ConnectionError, OSError, ValueError):
            # The command may have ended as we asked: the supervisor then sent its final
            # state and hung up, and our question broke the connection before we read it.
            # The same state is in its state.json, written next.
            final = await self._final_state_on_disk(session_id)
            if final is not None:
                return {"event": "exited", **final}
            raise ActionError(
                "supervisor_lost",
                "the supervisor stopped answering; the command's final state is in the state "
                "directory",
            ) from None

    async def _final_state_on_disk(self, session_id: str) -> dict[str, Any] | None:
        path = self.state / "sessions" / session_id / "state.json"
        for _ in range(FINAL_STATE_POLLS):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                state = None
            if state is not None and state["state"] != "running":
                return state
            await asyncio.sleep(0.01)
        return None

    def _result(
        self,
        payload: CommandOptions,
        argv: list[str],
        prepared: Prepared,
        state: dict[str, Any],
        session_id: str,
    ) -> dict[str, Any]:
        streams = state["streams"]
        finished = state["event"] == "exited"

        def shown(name: str) -> tuple[str | None, bool | None, str | None, int | None]:
            if name not in streams:
                return None, None, None, None
            stream = streams[name]
            tail = base64.b64decode(stream["tail"])
            text = (
                stream["tail"]
                if payload.output_encoding == "base64"
                else tail.decode("utf-8", errors="replace")
            )
            return text, stream["bytes"] > len(tail), stream["sha256"], stream["bytes"]

        result: dict[str, Any] = {
            "state": state["state"] if finished else "running",
            "exit_code": state["exit_code"],
            "signal": state["signal"],
        }
        for name in ("stdout", "stderr", "output"):
            text, truncated, digest, size = shown(name)
            result[name] = text
            result[f"{name}_truncated"] = truncated
            result[f"{name}_sha256"] = digest
            result[f"{name}_bytes"] = size
        result.update(
            {
                "output_encoding": payload.output_encoding,
                "duration_ms": state["duration_ms"],
                "argv": argv,
                "cwd": payload.cwd,
                "resolved_path": prepared.opened.real_path,
                "binary_sha256": prepared.sha256,
                "interpreter": prepared.interpreter,
                "sandbox": self.policy.sandbox,
                "session_id": session_id,
                "pid": state["pid"],
            }
        )
        return result
