"""exec.run through the host: real commands, real exit codes and signals, output as it was."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

from tests.support.commands import alive, live_processes_of, wait_until

FULL = 'security = "full"\n'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_echo_runs_with_zero_configuration(exec_host) -> None:
    host = exec_host()
    result = host.run({"argv": ["echo", "hello", "world"]})
    assert result["state"] == "exited" and result["exit_code"] == 0 and result["signal"] is None
    assert result["stdout"] == "hello world\n" and result["stderr"] == ""
    assert result["stdout_sha256"] == sha256(b"hello world\n")
    assert result["resolved_path"] == os.path.realpath("/usr/bin/echo")
    assert result["binary_sha256"] == sha256(Path(result["resolved_path"]).read_bytes())
    assert result["interpreter"] is None and result["sandbox"] == "none"
    assert result["argv"] == ["echo", "hello", "world"] and result["cwd"] == "."


def test_exit_codes_and_signals_are_reported(exec_host) -> None:
    host = exec_host(FULL)
    assert host.run({"argv": ["false"]})["exit_code"] == 1
    assert host.run({"argv": ["sh", "-c", "exit 7"]})["exit_code"] == 7
    killed = host.run({"argv": ["sh", "-c", "kill -KILL $$"]})
    assert killed["state"] == "signalled" and killed["signal"] == "SIGKILL"
    assert killed["exit_code"] is None


def test_stdout_and_stderr_stay_apart_and_stdin_is_given(exec_host) -> None:
    host = exec_host(FULL)
    result = host.run({"argv": ["sh", "-c", "cat; echo oops >&2"], "stdin": "from stdin\n"})
    assert result["stdout"] == "from stdin\n" and result["stderr"] == "oops\n"


def test_the_tail_is_returned_and_every_byte_hashed_and_logged(exec_host) -> None:
    host = exec_host(FULL)
    script = "i=0; while [ $i -lt 1000 ]; do echo line$i; i=$((i+1)); done"
    result = host.run({"argv": ["sh", "-c", script], "max_output_bytes": 100})
    whole = b"".join(b"line%d\n" % i for i in range(1000))
    assert result["stdout_truncated"] is True
    assert result["stdout"].encode() == whole[-100:]
    assert result["stdout_sha256"] == sha256(whole) and result["stdout_bytes"] == len(whole)
    log = host.state / "sessions" / result["session_id"] / "stdout.log"
    assert log.read_bytes() == whole


def test_the_log_on_disk_stops_at_max_log_bytes(exec_host) -> None:
    host = exec_host(FULL + "max_log_bytes = 1000\n")
    result = host.run({"argv": ["sh", "-c", "head -c 5000 /dev/zero"]})
    log = host.state / "sessions" / result["session_id"] / "stdout.log"
    assert log.stat().st_size == 1000
    assert result["stdout_sha256"] == sha256(b"\0" * 5000)


def test_invalid_utf8_is_replaced_or_given_as_base64(exec_host) -> None:
    host = exec_host()
    replaced = host.run({"argv": ["printf", "a\\377b"]})
    assert replaced["stdout"] == "a\ufffdb"
    raw = host.run({"argv": ["printf", "a\\377b"], "output_encoding": "base64"})
    assert base64.b64decode(raw["stdout"]) == b"a\xffb"
    assert raw["stdout_sha256"] == sha256(b"a\xffb")


def test_a_command_outliving_yield_ms_answers_running_and_finishes_alone(exec_host) -> None:
    host = exec_host(FULL)
    result = host.run({"argv": ["sh", "-c", "sleep 1; echo done"], "yield_ms": 50})
    assert result["state"] == "running" and result["session_id"] and result["pid"]
    state_file = host.state / "sessions" / result["session_id"] / "state.json"
    final = wait_until(
        lambda: (s := json.loads(state_file.read_text()))["state"] != "running" and s
    )
    assert final["state"] == "exited" and final["exit_code"] == 0
    assert base64.b64decode(final["streams"]["stdout"]["tail"]) == b"done\n"


def test_background_answers_at_once(exec_host) -> None:
    host = exec_host()
    result = host.run({"argv": ["sleep", "30"], "background": True, "timeout_s": 1})
    assert result["state"] == "running" and alive(result["pid"])
    wait_until(lambda: not alive(result["pid"]))  # its timeout holds without the worker


def test_the_timeout_terms_then_kills_the_group(exec_host) -> None:
    host = exec_host(FULL + "kill_grace_s = 0.5\n")
    polite = host.run({"argv": ["sleep", "30"], "timeout_s": 0.5})
    assert polite["state"] == "timed_out" and polite["signal"] == "SIGTERM"
    stubborn = host.run(
        {"argv": ["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"], "timeout_s": 0.5}
    )
    assert stubborn["state"] == "timed_out" and stubborn["signal"] == "SIGKILL"
    assert stubborn["duration_ms"] >= 1000


def test_a_grandchild_that_calls_setsid_dies_at_the_timeout(exec_host) -> None:
    host = exec_host(FULL)
    script = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 300' & sleep 300"
    result = host.run({"argv": ["sh", "-c", script], "timeout_s": 1})
    assert result["state"] == "timed_out"
    escaped = int((host.workspace / "escaped.pid").read_text())
    assert not alive(escaped)


def test_what_a_command_leaves_running_dies_with_it(exec_host) -> None:
    host = exec_host(FULL)
    result = host.run({"argv": ["sh", "-c", "setsid sleep 300 & echo $! > left.pid"]})
    assert result["state"] == "exited"
    assert not alive(int((host.workspace / "left.pid").read_text()))


def test_a_fork_bomb_is_stopped_by_the_process_limit(exec_host) -> None:
    host = exec_host(FULL + "[limits]\nprocesses = 32\n")
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 2"
    result = host.run({"argv": ["sh", "-c", bomb], "timeout_s": 3})
    assert "fork" in result["stderr"].lower()  # sh: Cannot fork / can't fork
    assert not live_processes_of(65534)  # commands run as nobody: none of them is left


def test_commands_run_in_cwd_inside_the_workspace(exec_host) -> None:
    host = exec_host(FULL)
    (host.workspace / "sub").mkdir()
    assert host.run({"argv": ["pwd"], "cwd": "sub"})["stdout"] == f"{host.workspace}/sub\n"


def test_a_pty_is_a_terminal_of_the_size_asked(exec_host) -> None:
    host = exec_host(FULL)
    result = host.run(
        {"argv": ["sh", "-c", "tty; stty size; echo $TERM"], "pty": True, "cols": 91, "rows": 17}
    )
    lines = result["output"].replace("\r", "").splitlines()
    assert lines[0].startswith("/dev/pts/") and lines[1] == "17 91"
    assert lines[2] == "xterm-256color"
    assert result["stdout"] is None and result["stderr"] is None


def test_a_script_names_its_interpreter(exec_host) -> None:
    host = exec_host(FULL)
    script = host.workspace / "hello.sh"
    script.write_text("#!/bin/sh\necho from script\n")
    script.chmod(0o755)
    result = host.run({"argv": ["./hello.sh"]})
    assert result["stdout"] == "from script\n"
    interpreter = os.path.realpath("/bin/sh")
    assert result["interpreter"] == {
        "path": interpreter,
        "sha256": sha256(Path(interpreter).read_bytes()),
    }
    assert result["binary_sha256"] == sha256(script.read_bytes())


def test_expect_sha256_pins_the_binary(exec_host) -> None:
    host = exec_host()
    good = sha256(Path(os.path.realpath("/usr/bin/true")).read_bytes())
    assert host.run({"argv": ["true"], "expect_sha256": good})["exit_code"] == 0
    sessions = set(os.listdir(host.state / "sessions"))
    body = host.failed({"argv": ["true"], "expect_sha256": "0" * 64}, "binary_mismatch")
    assert good in body["error"]["message"]
    assert set(os.listdir(host.state / "sessions")) == sessions  # nothing was started


def test_exec_shell_is_offered_only_when_the_policy_says_so(exec_host) -> None:
    host = exec_host()
    assert host.execute({"command": "echo hi"}, "exec.shell").status_code == 404
    shell = exec_host("shell = true\n")
    result = shell.run({"command": "echo $((6 * 7))"}, "exec.shell")
    assert result["stdout"] == "42\n"
    assert result["argv"] == ["/bin/sh", "-c", "echo $((6 * 7))"]


def test_health_and_the_plugins_listing_show_the_effective_policy(exec_host) -> None:
    host = exec_host('security = "deny"\n')
    plugins = host.client.get("/health").json()["plugins"]
    (pack,) = [p for p in plugins if p["name"] == "openexec-exec"]
    assert pack["effective"]["policy"]["security"] == "deny"
    assert pack["effective"]["policy"]["safe_bins"] == ["cut", "uniq", "head", "tail", "tr", "wc"]
    assert pack["settings"]["OPENEXEC_EXEC_WORKSPACE"] == str(host.workspace)


def test_commands_outlive_the_supervisor_daemon_and_a_new_one_takes_over(exec_host) -> None:
    host = exec_host()
    running = host.run({"argv": ["sleep", "30"], "background": True, "timeout_s": 2})
    daemon = int((host.state / "supervisor.lock").read_text())
    children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text()
    supervisors = [int(pid) for pid in children.split()]  # the busy one and those waiting
    os.kill(daemon, signal.SIGKILL)
    wait_until(lambda: not alive(daemon))
    assert alive(running["pid"])  # its supervisor does not depend on the daemon
    # The supervisors that were waiting for work go with the daemon; the busy one stays.
    wait_until(lambda: sum(alive(pid) for pid in supervisors) == 1)
    assert host.run({"argv": ["echo", "again"]})["stdout"] == "again\n"  # a new daemon
    wait_until(lambda: not alive(running["pid"]))  # the timeout still held


def test_a_tree_forking_faster_than_one_kill_pass_is_killed_whole(exec_host, tmp_path) -> None:
    host = exec_host(FULL)
    source = Path(__file__).parent / "programs" / "fork_chain.c"
    subprocess.run(["cc", "-O2", "-o", host.workspace / "chain", source], check=True)
    for _ in range(2):  # a single kill pass left chains of this size alive every time
        assert host.run({"argv": ["./chain", "20", "20000"]})["state"] == "exited"
        assert not live_processes_of(65534)  # the chains run as nobody: none is left


def test_a_real_time_signal_is_named(exec_host) -> None:
    host = exec_host(FULL)
    result = host.run({"argv": ["sh", "-c", f"kill -{signal.SIGRTMIN + 6} $$"]})
    assert result["state"] == "signalled" and result["signal"] == "SIGRTMIN+6"
