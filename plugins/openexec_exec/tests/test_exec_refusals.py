"""Refusals at payload validation: a 422 naming the reason, and nothing reserved or consumed."""

from __future__ import annotations

import os

import pytest
from openexec_exec.environment import BLOCKED_NAMES, BLOCKED_PREFIXES

SPEC_NAMES = [
    "PATH",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYLIB",
    "RUBYOPT",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "PS4",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "GIT_DIR",
    "GIT_EXEC_PATH",
    "GIT_SSH_COMMAND",
    "SSLKEYLOGFILE",
    "HOME",
]
SPEC_PREFIXES = ["LD_", "DYLD_", "BASH_FUNC_", "OPENEXEC_", "CLAWSHIELD_", "GIT_CONFIG_"]


def test_the_blocked_list_covers_the_documented_names() -> None:
    assert set(SPEC_NAMES) <= BLOCKED_NAMES
    assert set(SPEC_PREFIXES) <= set(BLOCKED_PREFIXES)


@pytest.mark.parametrize(
    "name",
    [*SPEC_NAMES, *(prefix + "X" for prefix in SPEC_PREFIXES), "LD_PRELOAD", "ld_preload"],
)
def test_each_blocked_environment_name_is_a_422_naming_it(exec_host, name: str) -> None:
    host = exec_host()
    reason = host.refused({"argv": ["true"], "env": {name: "x"}})
    assert repr(name) in reason and "blocked" in reason


def test_an_allowed_override_reaches_the_command(exec_host) -> None:
    host = exec_host('security = "full"\n')
    result = host.run({"argv": ["sh", "-c", "echo $GREETING"], "env": {"GREETING": "hi"}})
    assert result["stdout"] == "hi\n"


def test_a_refusal_reserves_nothing(exec_host) -> None:
    host = exec_host()
    assert host.execute({"argv": ["rm", "-rf", "."]}, nonce="kept").status_code == 422
    response = host.execute({"argv": ["echo", "now"]}, nonce="kept")
    assert response.status_code == 200 and response.json()["replayed"] is False
    assert len(os.listdir(host.state / "sessions")) == 1  # the echo ran, the rm did not


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"argv": ["rm", "-rf", "/"]}, "matches no allow entry"),
        ({"argv": ["no-such-tool"]}, "is not found in the policy's path"),
        ({"argv": ["/etc/passwd"]}, "is not executable"),
        ({"argv": ["echo"], "cwd": "../outside"}, "'.' or '..'"),
        ({"argv": ["echo"], "cwd": "/tmp"}, "relative"),
        ({"argv": ["echo"], "cwd": "missing"}, "does not exist"),
        ({"argv": ["echo"], "timeout_s": 99_999}, "max_timeout_s"),
        ({"argv": ["echo"], "yield_ms": 999_999}, "max_yield_ms"),
        ({"argv": ["echo"] * 2000}, "argv has 2000 items"),
        ({"argv": ["echo", "x" * 200_000]}, "max_argv_bytes"),
        ({"argv": ["cat"], "stdin": "x" * 2000}, "max_stdin_bytes"),
        ({"argv": ["echo"], "max_output_bytes": 10**9}, "max_output_bytes"),
    ],
)
def test_what_the_policy_or_workspace_refuses_is_a_422_naming_why(
    exec_host, payload: dict, reason: str
) -> None:
    host = exec_host("max_stdin_bytes = 1000\n")
    assert reason in host.refused(payload)


def test_a_symbolic_link_is_never_followed_out_of_the_workspace(exec_host, tmp_path) -> None:
    host = exec_host()
    (host.workspace / "out").symlink_to(tmp_path)
    assert "symbolic link" in host.refused({"argv": ["echo"], "cwd": "out"})
    (host.workspace / "tool").symlink_to("/usr/bin/rm")
    assert "symbolic link" in host.refused({"argv": ["./tool"]})


def test_the_policy_path_is_the_only_lookup(exec_host, shared_tmp) -> None:
    """A request cannot move the lookup: PATH is blocked, and argv[0] without a slash is
    found only in the policy's path."""
    host = exec_host()
    (host.workspace / "echo").write_text("#!/bin/sh\necho hijacked\n")
    (host.workspace / "echo").chmod(0o755)
    result = host.run({"argv": ["echo", "real"]})
    assert result["stdout"] == "real\n" and result["resolved_path"] == "/usr/bin/echo"
    assert "'PATH' is blocked" in host.refused({"argv": ["echo"], "env": {"PATH": "."}})


def test_an_interpreter_needs_an_allow_entry_of_its_own(exec_host) -> None:
    host = exec_host(f'[[allow]]\npath = "{"/tmp/**"}"\n')
    script = host.workspace / "run.sh"
    script.write_text("#!/bin/sh\necho x\n")
    script.chmod(0o755)
    reason = host.refused({"argv": ["./run.sh"]})
    assert "interpreter" in reason and os.path.realpath("/bin/sh") in reason


def test_with_security_deny_nothing_runs(exec_host) -> None:
    host = exec_host('security = "deny"\n')
    assert "'deny'" in host.refused({"argv": ["true"]})


def test_a_state_directory_inside_the_workspace_stops_startup(openexec_client, shared_tmp) -> None:
    import openexec_exec

    settings = {
        "OPENEXEC_EXEC_WORKSPACE": str(shared_tmp / "ws"),
        "OPENEXEC_EXEC_STATE": str(shared_tmp / "ws" / "state"),
    }
    with pytest.raises(Exception, match="inside the workspace"):
        openexec_client(openexec_exec, settings=settings)


def test_a_name_with_a_trailing_newline_is_not_a_name(exec_host) -> None:
    assert "not a valid name" in exec_host().refused({"argv": ["true"], "env": {"PATH\n": "."}})


@pytest.mark.parametrize("separator", [b"\x0c", b"\x0b", b"\r"])
def test_a_shebang_is_read_as_the_kernel_reads_it(exec_host, shared_tmp, separator) -> None:
    """``#!\\f/usr/bin/echo`` names the relative interpreter ``\\f/usr/bin/echo`` to the
    kernel, not /usr/bin/echo: a checker that strips every kind of space approves the wrong
    interpreter, and the kernel runs one planted in the workspace."""
    host = exec_host(f'[[allow]]\npath = "/usr/bin/echo"\n[[allow]]\npath = "{shared_tmp}/**"\n')
    script = host.workspace / "run.sh"
    script.write_bytes(b"#!" + separator + b"/usr/bin/echo\n")
    script.chmod(0o755)
    planted = host.workspace / separator.decode() / "usr" / "bin"
    planted.mkdir(parents=True)
    (planted / "echo").write_text("#!/bin/sh\necho planted\n")
    (planted / "echo").chmod(0o755)
    reason = host.refused({"argv": ["./run.sh"]})
    assert "no absolute interpreter" in reason
