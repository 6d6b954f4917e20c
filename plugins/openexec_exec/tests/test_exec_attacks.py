"""Attacks on what runs: a binary swapped between the check and the exec, a policy answer that
changes after validation, and the service's environment reaching the child."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
from pathlib import Path

import openexec_exec
from openexec_exec import pack as pack_module
from openexec_exec.models import RunPayload
from openexec_exec.pack import ExecPack

from openexec.settings import Settings
from tests.support.commands import wait_until

FULL = 'security = "full"\n'


def install(path: Path, content: bytes) -> None:
    """Put ``content`` at ``path`` the way an attacker would: a new file renamed over it."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(content)
    staged.chmod(0o755)
    os.replace(staged, path)


def test_a_binary_swapped_after_it_was_hashed_does_not_run(exec_host, monkeypatch) -> None:
    host = exec_host(FULL)
    tool = host.workspace / "tool"
    original = Path("/usr/bin/echo").read_bytes()
    install(tool, original)
    real_launch = pack_module.client.launch

    async def swap_then_launch(*args, **kwargs):
        install(tool, b"#!/bin/sh\necho swapped\n")  # the window a path-based exec leaves
        return await real_launch(*args, **kwargs)

    monkeypatch.setattr(pack_module.client, "launch", swap_then_launch)
    result = host.run({"argv": ["./tool", "original"]})
    assert result["stdout"] == "original\n"
    assert result["binary_sha256"] == hashlib.sha256(original).hexdigest()
    monkeypatch.setattr(pack_module.client, "launch", real_launch)
    # The swap did land: a new request runs (and names) the new file.
    after = host.run({"argv": ["./tool"]})
    assert after["stdout"] == "swapped\n"
    assert after["interpreter"]["path"] == os.path.realpath("/bin/sh")


def test_a_policy_answer_changed_after_validation_is_policy_refused(
    exec_host, monkeypatch, shared_tmp
) -> None:
    host = exec_host(f'[[allow]]\npath = "{shared_tmp}/**/tool"\n')
    tool = host.workspace / "tool"
    install(tool, Path("/usr/bin/true").read_bytes())
    real_prepare = ExecPack._prepare

    def relink_then_prepare(self, payload, argv):
        tool.unlink()
        tool.symlink_to("/usr/bin/rm")  # between validation and the run
        return real_prepare(self, payload, argv)

    monkeypatch.setattr(ExecPack, "_prepare", relink_then_prepare)
    sessions = set(os.listdir(host.state / "sessions"))
    body = host.failed({"argv": ["./tool"]}, "policy_refused")
    assert "symbolic link" in body["error"]["message"]
    assert set(os.listdir(host.state / "sessions")) == sessions


def test_a_changed_allow_answer_at_run_time_is_policy_refused(
    exec_host, monkeypatch, shared_tmp
) -> None:
    """The executable found through the path changes to one the policy does not allow."""
    host = exec_host(f'path = ["{shared_tmp}/bin"]\n[[allow]]\npath = "{shared_tmp}/bin/ok"\n')
    bin_dir = shared_tmp / "bin"
    bin_dir.mkdir()
    install(bin_dir / "ok", Path("/usr/bin/true").read_bytes())
    real_prepare = ExecPack._prepare

    def replace_then_prepare(self, payload, argv):
        (bin_dir / "ok").unlink()
        (bin_dir / "ok").symlink_to("/usr/bin/false")  # resolves elsewhere now
        return real_prepare(self, payload, argv)

    monkeypatch.setattr(ExecPack, "_prepare", replace_then_prepare)
    body = host.failed({"argv": ["ok"]}, "policy_refused")
    assert os.path.realpath("/usr/bin/false") in body["error"]["message"]
    shutil.rmtree(bin_dir)


def test_the_child_never_sees_the_service_environment(exec_host, monkeypatch) -> None:
    monkeypatch.setenv("OPENEXEC_DB_URL", "postgresql://openexec:hunter2@db/openexec")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    host = exec_host(FULL)
    result = host.run({"argv": ["cat", "/proc/self/environ"], "env": {"MINE": "1"}})
    environment = dict(item.split("=", 1) for item in result["stdout"].split("\0") if item)
    assert environment == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(host.workspace),
        "LANG": "C.UTF-8",
        "MINE": "1",
    }
    assert "hunter2" not in result["stdout"]


def test_a_snapshot_asked_as_the_command_ends_gets_the_final_state(exec_host) -> None:
    """At ``yield_ms`` the worker asks for the state so far; if the command has just ended,
    the supervisor has already sent the final state and closed: that is the answer, not a
    lost supervisor."""
    host = exec_host()
    pack = openexec_exec.build_pack(
        Settings(), openexec_exec.ExecSettings(workspace=host.workspace, state=host.state)
    )
    payload = RunPayload(argv=["true"], background=True)  # asks for a snapshot at once
    prepared = pack._prepare(payload, payload.argv)
    request = pack._launch_request(payload, payload.argv, prepared, "ended-as-asked")
    state = host.state / "sessions" / "ended-as-asked" / "state.json"

    async def ask_after_the_end() -> dict:
        run, _ = await pack_module.client.launch(host.state, request, prepared.fds)
        prepared.close()
        await asyncio.to_thread(wait_until, state.exists)  # written after the final event
        await asyncio.to_thread(wait_until, lambda: _hung_up(run))
        try:
            return await pack._wait(run, payload, "ended-as-asked")
        finally:
            run.close()

    final = asyncio.run(ask_after_the_end())
    assert final["event"] == "exited" and final["exit_code"] == 0


def _hung_up(run) -> bool:
    """Whether the supervisor has closed its end of the connection (a peek reads EOF)."""
    fd = run.writer.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as peer:
        try:
            return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False


def test_a_command_cannot_reach_another_sessions_socket(exec_host) -> None:
    """Run as ``nobody`` (the service is root), a command would type into any session it
    could connect to: the socket is 0600 in 0700 directories, and its supervisor also checks
    the peer's uid."""
    host = exec_host('security = "full"\n')
    victim = host.start({"argv": ["cat"]})
    path = host.state / "sessions" / victim / "session.sock"
    script = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    os.chdir({str(path.parent)!r})  # a socket's path is limited to 107 bytes\n"
        "    s.connect('session.sock')\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    result = host.run({"argv": ["python3", "-c", script]})
    assert result["stdout"] == "PermissionError\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
    host.process("kill", {"session_id": victim, "signal": "KILL"})
