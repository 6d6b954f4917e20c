"""What a command can reach, attacked from inside: with ``sandbox = "bwrap"`` every attack
fails; with ``sandbox = "none"`` the same attacks show what is *not* prevented (SECURITY.md)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.receipts import private_key_pem
from tests.support.commands import live_processes_of

SANDBOXED = 'security = "full"\nsandbox = "bwrap"\n'
UNSANDBOXED = 'security = "full"\n'


@pytest.fixture
def key_in_opt() -> Iterator[Path]:
    """A receipt key an operator left world-readable under /opt, inside a mounted tree."""
    directory = Path(tempfile.mkdtemp(prefix="openexec-test-", dir="/opt"))
    directory.chmod(0o755)
    key = directory / "receipt-key.pem"
    key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    key.chmod(0o644)
    yield key
    shutil.rmtree(directory)


@pytest.fixture
def listener() -> Iterator[int]:
    """A port open on the host's loopback, as the service's own would be."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def sh(host, script: str) -> dict:
    return host.run({"argv": ["sh", "-c", script]})


def test_the_sandbox_reports_itself_and_runs_as_an_unprivileged_user(exec_host) -> None:
    host = exec_host(SANDBOXED)
    result = host.run({"argv": ["id", "-u"]})
    assert result["sandbox"] == "bwrap" and result["exit_code"] == 0
    assert int(result["stdout"]) != 0


def test_no_network_in_the_sandbox(exec_host, listener: int) -> None:
    attack = ["bash", "-c", f"echo hello > /dev/tcp/127.0.0.1/{listener} && echo connected"]
    inside = exec_host(SANDBOXED).run({"argv": attack})
    assert inside["stdout"] == "" and inside["exit_code"] != 0
    outside = exec_host(UNSANDBOXED).run({"argv": attack})
    assert outside["stdout"] == "connected\n"  # not prevented without the sandbox


def test_no_host_process_is_visible_in_the_sandbox(exec_host) -> None:
    script = f"test -e /proc/{os.getpid()} && echo visible; ls /proc | grep -c '^[0-9]'"
    inside = sh(exec_host(SANDBOXED), script)
    assert "visible" not in inside["stdout"] and int(inside["stdout"]) < 10
    outside = sh(exec_host(UNSANDBOXED), script)
    assert outside["stdout"].startswith("visible\n")  # not prevented without the sandbox


def test_no_write_outside_the_workspace_from_the_sandbox(exec_host, shared_tmp: Path) -> None:
    host = exec_host(SANDBOXED)
    beside = shared_tmp / "beside-the-workspace"
    marker = Path(tempfile.gettempdir()) / f"openexec-marker-{os.getpid()}"
    result = sh(host, f"touch /usr/planted; touch {beside}; touch {marker}; touch inside")
    assert "Read-only file system" in result["stderr"]
    assert not Path("/usr/planted").exists() and not beside.exists() and not marker.exists()
    assert (host.workspace / "inside").exists()
    outside = exec_host(UNSANDBOXED)
    sh(outside, f"touch {marker}")
    assert marker.exists()  # not prevented without the sandbox (but for the user's rights)
    marker.unlink()


def test_the_database_keys_and_state_cannot_be_read_from_the_sandbox(
    exec_host, key_in_opt: Path, tmp_path: Path
) -> None:
    host = exec_host(SANDBOXED, receipt_key_path=key_in_opt)
    database = next(tmp_path.glob("openexec-*/openexec.db"))
    script = f"cat {key_in_opt} {database} || echo denied; ls {host.state} || echo no-state"
    inside = sh(host, script)
    assert "PRIVATE KEY" not in inside["stdout"] and "SQLite" not in inside["stdout"]
    assert "no-state" in inside["stdout"]
    outside = sh(exec_host(UNSANDBOXED, receipt_key_path=key_in_opt), f"cat {key_in_opt}")
    assert "PRIVATE KEY" in outside["stdout"]  # a world-readable key is readable without it


def test_a_pty_works_in_the_sandbox(exec_host) -> None:
    script = "test -t 0 && test -t 1 && echo terminal; stty size"
    result = exec_host(SANDBOXED).run({"argv": ["sh", "-c", script], "pty": True})
    assert result["output"].replace("\r", "").splitlines() == ["terminal", "30 120"]


def test_a_timeout_kills_everything_in_the_sandbox(exec_host) -> None:
    host = exec_host(SANDBOXED)
    result = host.run({"argv": ["sh", "-c", "setsid sleep 300 & sleep 300"], "timeout_s": 1})
    assert result["state"] == "timed_out"
    assert not live_processes_of(65534)


def test_a_sandbox_that_cannot_run_stops_startup(exec_host) -> None:
    with pytest.raises(Exception, match="bubblewrap cannot run here"):
        exec_host(SANDBOXED + 'bwrap_path = "/nonexistent/bwrap"\n')


def test_no_descriptor_of_the_host_reaches_into_the_sandbox(exec_host) -> None:
    """A directory descriptor opened outside would be a way out: ``/proc/self/fd/N/..``
    walks the host's file system, whatever the sandbox mounts."""
    host = exec_host(SANDBOXED)
    marker = Path(tempfile.gettempdir()) / f"openexec-escaped-{os.getpid()}"
    depth = "/".join([".."] * len(host.workspace.parts))
    script = (
        'for f in /proc/self/fd/*; do [ -d "$f" ] && echo "directory $f"; done; '
        f"for n in 3 4 5 6 7 8 9; do echo x > /proc/self/fd/$n/{depth}{marker} 2>/dev/null; done"
    )
    result = sh(host, script)
    assert "directory" not in result["stdout"].replace("directory /proc/self/fd/*", "")
    assert not marker.exists()
