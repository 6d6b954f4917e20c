"""Sessions on pipes: background commands, poll, log, write, kill, remove, retention."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from tests.support.commands import alive, wait_until

FULL = 'security = "full"\n'


def test_a_background_command_is_polled_by_byte_offsets_and_written_to(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sh", "-c", "echo one; echo two >&2; read x; echo got $x"]})
    first = host.process("poll", {"session_id": session, "wait_ms": 10_000})
    assert first["state"] == "running"
    assert first["stdout"].startswith("one\n") and first["stdout_offset"] == 0
    written = host.process("write", {"session_id": session, "data": "hello\n"})
    assert written == {"session_id": session, "bytes": 6, "queued": 0}
    output, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert output == "one\ngot hello\n"  # poll_until reads from offset 0 again
    assert last["state"] == "exited" and last["exit_code"] == 0
    again = host.process("poll", {"session_id": session, "stdout_offset": 4, "stderr_offset": 2})
    assert again["stdout"] == "got hello\n" and again["stderr"] == "o\n"
    assert again["next_stdout_offset"] == again["stdout_bytes"] == 14
    assert not again["more"] and not again["truncated"]


def test_a_poll_returns_early_on_output_and_on_exit(exec_host) -> None:
    host = exec_host(FULL)
    late = host.start({"argv": ["sh", "-c", "sleep 0.3; echo late; sleep 100"]})
    began = time.monotonic()
    answer = host.process("poll", {"session_id": late, "wait_ms": 30_000})
    assert answer["stdout"] == "late\n" and answer["state"] == "running"
    assert time.monotonic() - began < 20  # far below wait_ms: it came back with the output
    quiet = host.start({"argv": ["sleep", "0.3"]})
    began = time.monotonic()
    answer = host.process("poll", {"session_id": quiet, "wait_ms": 30_000})
    assert answer["state"] == "exited" and answer["stdout"] == ""
    assert time.monotonic() - began < 20
    host.process("kill", {"session_id": late, "signal": "KILL"})


def test_a_poll_never_splits_a_character_between_two_answers(exec_host) -> None:
    host = exec_host(FULL)
    session = host.run({"argv": ["printf", "ééé"]})["session_id"]  # 6 bytes
    answer = host.process("poll", {"session_id": session, "max_bytes": 3})
    assert answer["stdout"] == "é" and answer["next_stdout_offset"] == 2 and answer["more"]
    raw = host.process("poll", {"session_id": session, "max_bytes": 3, "output_encoding": "base64"})
    assert raw["stdout"] == "w6nD" and raw["next_stdout_offset"] == 3  # bytes as they are
    tiny = host.process("poll", {"session_id": session, "max_bytes": 1})
    assert tiny["next_stdout_offset"] == 1  # less than a character: it still moves on


def test_a_poll_with_the_same_nonce_replays_and_does_not_read_again(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sh", "-c", "echo before; read x; echo after"]})
    host.poll_until(session, lambda out, _: "before" in out)
    body = {"session_id": session}
    first = host.execute(body, "process.poll", nonce="poll-once").json()
    host.process("write", {"session_id": session, "data": "go\n"})
    host.poll_until(session, lambda out, _: "after" in out)
    replay = host.execute(body, "process.poll", nonce="poll-once").json()
    assert replay["id"] == first["id"] and replay["result"] == first["result"]
    assert "after" not in replay["result"]["stdout"]
    fresh = host.process("poll", body)
    assert fresh["stdout"] == "before\nafter\n"


def test_log_pages_by_lines(exec_host) -> None:
    host = exec_host(FULL)
    script = "for i in $(seq 1 500); do echo line $i; done"
    session = host.run({"argv": ["sh", "-c", script]})["session_id"]
    last = host.process("log", {"session_id": session, "limit": 3})
    assert last["lines"] == ["line 498", "line 499", "line 500"]
    assert last["offset"] == 497 and last["total_lines"] == 500 and not last["truncated"]
    page = host.process("log", {"session_id": session, "offset": 10, "limit": 2})
    assert page["lines"] == ["line 11", "line 12"] and page["stream"] == "stdout"
    stderr = host.process("log", {"session_id": session, "stream": "stderr"})
    assert stderr["lines"] == [] and stderr["total_lines"] == 0
    code = host.failed(
        {"session_id": session, "stream": "output"}, "stream_not_found", "process.log"
    )
    assert "stdout and stderr" in code["error"]["message"]


def test_eof_closes_stdin(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["wc", "-c"]})
    host.process("write", {"session_id": session, "data": "12345", "eof": True})
    output, _ = host.poll_until(session, lambda _, answer: answer["state"] == "exited")
    assert output.strip() == "5"
    host.failed({"session_id": session, "data": "x"}, "session_finished", "process.write")


def test_input_refusals_name_the_reason(exec_host) -> None:
    host = exec_host(FULL)
    foreground = host.run({"argv": ["sh", "-c", "sleep 100"], "yield_ms": 0})
    session = foreground["session_id"]
    assert foreground["state"] == "running"
    host.failed({"session_id": session, "data": "x"}, "stdin_closed", "process.write")
    host.failed({"session_id": session, "keys": ["Enter"]}, "not_a_pty", "process.send_keys")
    host.failed({"session_id": session}, "not_a_pty", "process.submit")
    host.failed({"session_id": session, "text": "x"}, "not_a_pty", "process.paste")
    unknown = f"{session.rpartition('.')[0]}.{'0' * 32}"
    host.failed({"session_id": unknown}, "session_not_found", "process.poll")
    elsewhere = host.failed(
        {"session_id": f"other-host.{'0' * 32}"}, "session_elsewhere", "process.poll"
    )
    assert "'other-host'" in elsewhere["error"]["message"]
    response = host.execute({"session_id": "../../etc"}, "process.poll")
    assert response.status_code == 422
    response = host.execute({"session_id": session, "keys": ["Enterr"]}, "process.send_keys")
    assert response.status_code == 422 and "'Enterr' is not a key name" in response.text
    host.process("kill", {"session_id": session, "signal": "KILL"})


def test_a_session_elsewhere_names_its_instance(exec_host) -> None:
    first = exec_host(FULL, exec_settings={"OPENEXEC_EXEC_INSTANCE": "first"})
    second = exec_host(FULL, exec_settings={"OPENEXEC_EXEC_INSTANCE": "second"})
    session = first.start({"argv": ["sleep", "100"]})
    assert session.startswith("first.")
    refused = second.failed({"session_id": session}, "session_elsewhere", "process.kill")
    assert "'first'" in refused["error"]["message"]
    assert first.process("poll", {"session_id": session})["state"] == "running"
    first.process("kill", {"session_id": session, "signal": "KILL"})


def test_an_instance_keeps_its_generated_name(exec_host) -> None:
    host = exec_host(FULL)
    name = (host.state / "instance").read_text().strip()
    assert host.run({"argv": ["true"]})["session_id"].startswith(f"{name}.")
    assert host.process("list", {})["instance"] == name


def test_kill_signals_the_group_and_escalates_after_the_grace(exec_host) -> None:
    host = exec_host(FULL)
    polite = host.start({"argv": ["sleep", "100"]})
    killed = host.process("kill", {"session_id": polite})
    assert killed["sent"] == "SIGTERM" and killed["state"] == "signalled"
    assert killed["signal"] == "SIGTERM"
    stubborn = host.start({"argv": ["sh", "-c", "trap '' TERM; echo ready; sleep 100"]})
    host.poll_until(stubborn, lambda out, _: "ready" in out)
    killed = host.process("kill", {"session_id": stubborn, "grace_ms": 200})
    assert killed["state"] == "signalled" and killed["signal"] == "SIGKILL"
    again = host.process("kill", {"session_id": stubborn})
    assert again["sent"] is None and again["signal"] == "SIGKILL"  # it had ended


def test_setsid_grandchildren_of_a_killed_session_are_gone(exec_host) -> None:
    host = exec_host(FULL)
    script = "setsid sh -c 'echo $$; exec sleep 300' & sleep 300"
    session = host.start({"argv": ["sh", "-c", script]})
    output, _ = host.poll_until(session, lambda out, _: out.endswith("\n"))
    grandchild = int(output)
    assert alive(grandchild)
    host.process("kill", {"session_id": session, "grace_ms": 100})
    assert not alive(grandchild)


def test_the_timeout_holds_once_backgrounded(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sleep", "100"], "timeout_s": 0.5})
    _, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert last["state"] == "timed_out" and last["signal"] == "SIGTERM"


def test_list_shows_running_and_finished_sessions_by_start(exec_host) -> None:
    host = exec_host(FULL)
    done = host.run({"argv": ["echo", "hi"]})["session_id"]
    running = host.start({"argv": ["sleep", "100"]})
    listed = host.process("list", {})
    assert [s["session_id"] for s in listed["sessions"]] == [done, running]
    finished, live = listed["sessions"]
    assert finished["state"] == "exited" and finished["stdout_bytes"] == 3
    assert finished["argv"] == ["echo", "hi"] and finished["ended_at"]
    assert live["state"] == "running" and live["ended_at"] is None and not live["pty"]
    host.process("kill", {"session_id": running, "signal": "KILL"})


def test_remove_kills_a_running_session_and_deletes_its_state(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sleep", "100"]})
    pid = host.process("list", {})["sessions"][0]["pid"]
    removed = host.process("remove", {"session_id": session})
    assert removed["removed"] and removed["killed"] and removed["signal"] == "SIGKILL"
    assert not (host.state / "sessions" / session).exists() and not alive(pid)
    host.failed({"session_id": session}, "session_not_found", "process.poll")
    finished = host.run({"argv": ["true"]})["session_id"]
    assert not host.process("remove", {"session_id": finished})["killed"]
    assert not (host.state / "sessions" / finished).exists()


def test_finished_sessions_are_removed_after_their_ttl(exec_host) -> None:
    host = exec_host(FULL + "session_ttl_s = 0.5\n")
    session = host.run({"argv": ["echo", "kept a moment"]})["session_id"]
    directory = host.state / "sessions" / session
    assert (directory / "stdout.log").read_text() == "kept a moment\n"
    wait_until(lambda: not directory.exists())
    host.failed({"session_id": session}, "session_not_found", "process.log")


def test_running_sessions_are_never_expired(exec_host) -> None:
    host = exec_host(FULL + "session_ttl_s = 0\n")
    running = host.start({"argv": ["sleep", "100"]})
    swept = host.run({"argv": ["true"]})["session_id"]
    wait_until(lambda: not (host.state / "sessions" / swept).exists())  # a sweep has passed
    assert host.process("poll", {"session_id": running})["state"] == "running"
    host.process("kill", {"session_id": running, "signal": "KILL"})


def test_max_sessions_is_enforced(exec_host) -> None:
    host = exec_host(FULL + "max_sessions = 2\n")
    first = host.start({"argv": ["sleep", "100"]})
    host.start({"argv": ["sleep", "100"]})
    refused = host.failed({"argv": ["true"]}, "too_many_sessions")
    assert "max_sessions" in refused["error"]["message"]
    host.process("kill", {"session_id": first, "signal": "KILL"})
    assert host.run({"argv": ["echo", "room again"]})["stdout"] == "room again\n"


def test_input_over_the_policys_bound_is_a_422(exec_host) -> None:
    host = exec_host(FULL + "max_stdin_bytes = 10\n")
    session = host.start({"argv": ["cat"]})
    response = host.execute({"session_id": session, "data": "x" * 11}, "process.write")
    assert response.status_code == 422 and "max_stdin_bytes" in response.text
    response = host.execute({"session_id": session, "keys": ["Up"] * 4}, "process.send_keys")
    assert response.status_code == 422 and "12 bytes of input" in response.text
    host.process("kill", {"session_id": session, "signal": "KILL"})


def test_a_session_whose_supervisor_was_killed_reads_lost(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sh", "-c", "echo started; exec sleep 100"]})
    host.poll_until(session, lambda out, _: "started" in out)
    directory = host.state / "sessions" / session
    command = host.process("list", {})["sessions"][0]["pid"]
    os.kill(int((directory / "lock").read_text()), signal.SIGKILL)
    wait_until(lambda: not alive(command))  # it dies with its supervisor
    answer = host.process("poll", {"session_id": session})
    assert answer["state"] == "lost" and answer["stdout"] == "started\n"
    host.failed({"session_id": session, "data": "x"}, "session_finished", "process.write")
    wait_until(lambda: (directory / "expires").exists())  # the sweep gives it its TTL


def test_large_output_is_followed_in_full_by_bounded_polls(exec_host) -> None:
    """Answers bigger than a socket's buffer are sent as the worker reads them, not left
    waiting for the next event on a quiet session."""
    host = exec_host(FULL)
    size = 3_000_000
    script = f"head -c {size} /dev/zero | tr '\\0' a; echo; echo done >&2; sleep 100"
    session = host.start({"argv": ["sh", "-c", script]})
    host.poll_until(session, lambda _, answer: answer["stderr_bytes"] == 5, max_bytes=1)
    offset = 0
    while offset < size + 1:
        answer = host.process(
            "poll", {"session_id": session, "stdout_offset": offset, "max_bytes": 1 << 20}
        )
        assert answer["state"] == "running" and answer["stdout_bytes"] == size + 1
        assert answer["stdout_offset"] == offset and len(answer["stdout"]) <= 1 << 20
        offset = answer["next_stdout_offset"]
    assert offset == size + 1 and not answer["more"]
    host.process("kill", {"session_id": session, "signal": "KILL"})


def test_a_malformed_request_to_the_supervisor_is_answered_and_harms_nothing(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sleep", "100"]})
    directory = host.state / "sessions" / session
    requests = [
        b'{"op":"poll"}',
        b'{"op":"poll","offsets":{"stdout":1.5},"limit":10}',
        b'{"op":"poll","offsets":{},"limit":"x"}',
        b'{"op":"kill","signal":"SIGTERM","grace_s":NaN}',
        b'{"op":"kill","signal":"SIGNOPE"}',
        b'{"op":"input","parts":[{"nope":1}]}',
        b"[" * 100_000,
    ]
    fd = os.open(directory, os.O_PATH)
    try:
        for request in requests:
            with socket.socket(socket.AF_UNIX) as peer:
                peer.settimeout(10)  # an answer comes at once, or the test fails
                peer.connect(f"/proc/self/fd/{fd}/session.sock")
                peer.sendall(request + b"\n" + b'{"op":"state"}\n')
                answers = peer.makefile("rb")
                first = json.loads(answers.readline())
                if request.startswith(b"["):  # not an object: skipped, the next one answered
                    assert first["event"] == "state"
                    continue
                then = json.loads(answers.readline())
            assert first["event"] == "error" and first["code"] == "bad_request", first
            assert then["event"] == "state" and then["state"] == "running"
    finally:
        os.close(fd)
    assert host.process("poll", {"session_id": session})["state"] == "running"
    stubborn = host.process("kill", {"session_id": session, "grace_ms": 100})
    assert stubborn["state"] == "signalled"  # the escalation still works


def test_a_supervisor_that_does_not_answer_is_never_taken_for_ended(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sleep", "100"]})
    directory = host.state / "sessions" / session
    supervisor = int((directory / "lock").read_text())
    os.kill(supervisor, signal.SIGSTOP)
    try:
        host.failed({"session_id": session, "grace_ms": 0}, "supervisor_lost", "process.kill")
    finally:
        os.kill(supervisor, signal.SIGCONT)
    assert directory.exists()
    assert host.process("poll", {"session_id": session})["state"] == "running"
    host.process("remove", {"session_id": session})
