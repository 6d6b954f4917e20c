"""Fixtures: the exec pack in a real app, running real commands through its real supervisor.

The workspace lives in a directory of its own under ``/tmp`` whose parents any user may pass
through (pytest's ``tmp_path`` is 0700): a service running as root runs commands as
``nobody``, and bubblewrap, run as that user, must reach the workspace to mount it. The
database, the receipt key and the state directory stay in ``tmp_path``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openexec_exec
import pytest

from openexec.cli import main as cli
from tests.support.commands import stop_daemon
from tests.support.processes import Uvicorn

_nonces = itertools.count()


@dataclass
class ExecHost:
    """An app with the exec pack, its workspace and its state directory."""

    client: Any
    workspace: Path
    state: Path

    def execute(self, payload: dict[str, Any], action: str = "exec.run", nonce: str | None = None):
        body = {"action": action, "payload": payload, "nonce": nonce or f"n-{next(_nonces)}"}
        return self.client.post("/execute", json=body)

    def run(self, payload: dict[str, Any], action: str = "exec.run") -> dict[str, Any]:
        """Execute and return the result of a succeeded execution."""
        response = self.execute(payload, action)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "succeeded", body
        return body["result"]

    def refused(self, payload: dict[str, Any], action: str = "exec.run") -> str:
        """Execute, assert a 422 payload_invalid, and return its reason."""
        response = self.execute(payload, action)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "payload_invalid"
        return " ".join(error["msg"] for error in body["errors"])

    def failed(
        self, payload: dict[str, Any], code: str, action: str = "exec.run"
    ) -> dict[str, Any]:
        """Execute and return the body of an execution that failed with ``code``."""
        response = self.execute(payload, action)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "failed" and body["error"]["code"] == code, body
        return body

    def start(self, payload: dict[str, Any]) -> str:
        """Start a background command; return its session id."""
        result = self.run({**payload, "background": True})
        assert result["state"] == "running", result
        return result["session_id"]

    def process(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A succeeded ``process.<action>``'s result."""
        return self.run(payload, f"process.{action}")

    def poll_until(
        self, session_id: str, condition: Callable[[str, dict[str, Any]], bool], **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """Poll (waiting on the supervisor, never sleeping here) and gather the output until
        ``condition(output so far, last answer)`` holds; return both."""
        gathered, offsets = "", {"stdout_offset": 0, "offset": 0}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = self.process(
                "poll", {"session_id": session_id, "wait_ms": 2000, **offsets, **extra}
            )
            gathered += answer.get("output") or answer.get("stdout") or ""
            if "next_offset" in answer:
                offsets = {"offset": answer["next_offset"]}
            else:
                offsets = {"stdout_offset": answer["next_stdout_offset"]}
            if condition(gathered, answer):
                return gathered, answer
        raise AssertionError(f"never met; output so far: {gathered!r}")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory under /tmp that every user may pass through (not list)."""
    directory = Path(tempfile.mkdtemp(prefix="openexec-exec-test-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def exec_host(
    openexec_client: Callable[..., Any], tmp_path: Path, shared_tmp: Path
) -> Iterator[Callable[..., ExecHost]]:
    """Factory: ``exec_host(policy=TOML text or None, exec_settings={VARIABLE: value},
    **host_settings)`` → a started app."""
    states: list[Path] = []
    count = itertools.count()

    def build(
        policy: str | None = None, exec_settings: dict[str, str] | None = None, **overrides: Any
    ) -> ExecHost:
        number = next(count)
        workspace, state = shared_tmp / f"workspace-{number}", tmp_path / f"state-{number}"
        settings = {
            "OPENEXEC_EXEC_WORKSPACE": str(workspace),
            "OPENEXEC_EXEC_STATE": str(state),
            **(exec_settings or {}),
        }
        if policy is not None:
            policy_file = tmp_path / f"policy-{number}.toml"
            policy_file.write_text(policy)
            settings["OPENEXEC_EXEC_POLICY"] = str(policy_file)
        states.append(state)
        client = openexec_client(openexec_exec, settings=settings, **overrides)
        return ExecHost(client, workspace, state)

    yield build
    for state in states:
        stop_daemon(state)


@pytest.fixture
def service(tmp_path: Path, shared_tmp: Path):
    """Start ``main:app`` with only the exec pack; stop everything afterwards."""
    started: list[Uvicorn] = []
    state = tmp_path / "state"

    def start(policy: str = 'security = "full"\n', workers: int = 2, **extra: str) -> Uvicorn:
        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(policy)
        env = {
            "OPENEXEC_PLUGINS": "openexec-exec",
            "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
            "OPENEXEC_RECEIPT_KEY": str(tmp_path / "receipt-key.pem"),
            "OPENEXEC_EXEC_WORKSPACE": str(shared_tmp / "workspace"),
            "OPENEXEC_EXEC_STATE": str(state),
            "OPENEXEC_EXEC_POLICY": str(policy_file),
            **extra,
        }
        server = Uvicorn("main:app", env, workers=workers, log=tmp_path / "uvicorn.log")
        started.append(server)
        return server

    # the receipt key, made once for every start
    assert cli(["keygen", "--out", str(tmp_path / "receipt-key.pem")]) == 0
    yield start
    for server in started:
        server.stop()
    stop_daemon(state)
