"""Sessions on a real PTY: keys, paste, submit, C-c, the terminal's size, and the sandbox."""

from __future__ import annotations

import re

import pytest

FULL = 'security = "full"\n'
SANDBOXED = FULL + 'sandbox = "bwrap"\n'

# Reads stdin raw and prints what arrived as hex, one line per phase of argv[1:] byte counts;
# after the first phase it switches the terminal to application cursor mode (DECCKM).
RAW_DUMP = """
import os, sys, tty
tty.setraw(0)
print("ready", end="\\r\\n", flush=True)
for phase, count in enumerate(map(int, sys.argv[1:])):
    data = b""
    while len(data) < count:
        data += os.read(0, 65536)
    print("HEX:" + data.hex(), end="\\r\\n", flush=True)
    if phase == 0:
        print("\\x1b[?1h", end="", flush=True)
"""


def raw_session(host, *counts: int) -> str:
    session = host.start({"argv": ["python3", "-c", RAW_DUMP, *map(str, counts)], "pty": True})
    host.poll_until(session, lambda out, _: "ready" in out)
    return session


def hex_lines(output: str) -> list[bytes]:
    return [bytes.fromhex(found) for found in re.findall(r"HEX:([0-9a-f]*)", output)]


def test_cat_echoes_what_send_keys_and_paste_sent(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["cat"], "pty": True})
    sent = host.process("send_keys", {"session_id": session, "keys": ["h", "i", "Enter"]})
    assert sent["bytes"] == 3
    host.poll_until(session, lambda out, _: out.count("hi\r\n") == 2)  # the echo, then cat
    host.process("paste", {"session_id": session, "text": "pasted", "bracketed": False})
    host.process("submit", {"session_id": session})
    host.poll_until(session, lambda out, _: out.count("pasted\r\n") == 2)
    host.process("kill", {"session_id": session, "signal": "KILL"})


def test_bracketed_paste_markers_arrive_around_the_text(exec_host) -> None:
    host = exec_host(FULL)
    text = "a\x1b[201~b"  # a marker inside would end the paste early: it is removed
    session = raw_session(host, len("\x1b[200~ab\x1b[201~"))
    host.process("paste", {"session_id": session, "text": text})
    output, _ = host.poll_until(session, lambda _, answer: answer["state"] == "exited")
    assert hex_lines(output) == [b"\x1b[200~ab\x1b[201~"]


def test_cursor_keys_follow_application_cursor_mode(exec_host) -> None:
    host = exec_host(FULL)
    session = raw_session(host, 3 + 6 + 1, 3 + 3)
    host.process("send_keys", {"session_id": session, "keys": ["Up", "S-Up", "C-a"]})
    host.poll_until(session, lambda out, _: "HEX:" in out)  # and the switch to DECCKM
    host.process("send_keys", {"session_id": session, "keys": ["Up", "Home"]})
    output, _ = host.poll_until(session, lambda _, answer: answer["state"] == "exited")
    assert hex_lines(output) == [b"\x1b[A\x1b[1;2A\x01", b"\x1bOA\x1bOH"]


def test_a_thousand_keys_in_one_call_arrive_in_order(exec_host) -> None:
    host = exec_host(FULL)
    keys = list("".join(f"{i:04d}" for i in range(250)))  # 1000 keys, each position known
    session = raw_session(host, len(keys))
    sent = host.process("send_keys", {"session_id": session, "keys": keys})
    assert sent == {"session_id": session, "bytes": 1000, "queued": 0}
    output, _ = host.poll_until(session, lambda _, answer: answer["state"] == "exited")
    assert hex_lines(output) == ["".join(keys).encode()]


def test_literal_hex_and_named_keys_go_in_that_order(exec_host) -> None:
    host = exec_host(FULL)
    session = raw_session(host, 2 + 2 + 4 + 2)
    payload = {"literal": "ab", "hex": [27, "5b"], "keys": ["F5", "M-x"], "session_id": session}
    host.process("send_keys", payload)
    output, _ = host.poll_until(session, lambda _, answer: answer["state"] == "exited")
    assert hex_lines(output) == [b"ab\x1b[\x1b[15~\x1bx"]


def test_c_c_interrupts_sleep(exec_host) -> None:
    host = exec_host(FULL)
    session = host.start({"argv": ["sleep", "100"], "pty": True})
    host.process("send_keys", {"session_id": session, "keys": ["C-c"]})
    _, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert last["state"] == "signalled" and last["signal"] == "SIGINT"


def test_input_reads_a_submitted_line(exec_host) -> None:
    host = exec_host(FULL)
    script = "print('got', input('name? '))"
    session = host.start({"argv": ["python3", "-c", script], "pty": True})
    host.poll_until(session, lambda out, _: "name? " in out)
    host.process("write", {"session_id": session, "data": "ada"})
    host.process("submit", {"session_id": session})
    output, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert "got ada" in output and last["exit_code"] == 0


@pytest.mark.parametrize("policy", [FULL, SANDBOXED], ids=["none", "bwrap"])
def test_the_terminal_has_the_asked_size_and_term(exec_host, policy: str) -> None:
    host = exec_host(policy)
    script = "stty size; echo $TERM; test -t 0 && echo terminal"
    result = host.run({"argv": ["sh", "-c", script], "pty": True, "cols": 77, "rows": 22})
    assert result["output"] == "22 77\r\nxterm-256color\r\nterminal\r\n"
    assert result["stdout"] is None and result["sandbox"] == (
        "bwrap" if "bwrap" in policy else "none"
    )


TUI = """
import curses
def main(screen):
    screen.keypad(True)
    screen.addstr(0, 0, "press a key")
    screen.refresh()
    key = screen.getch()
    curses.endwin()
    print("KEY:" + curses.keyname(key).decode())
curses.wrapper(main)
"""


@pytest.mark.parametrize("policy", [FULL, SANDBOXED], ids=["none", "bwrap"])
def test_a_curses_program_gets_a_terminal_and_its_keys(exec_host, policy: str) -> None:
    host = exec_host(policy)
    session = host.start({"argv": ["python3", "-c", TUI], "pty": True})
    host.poll_until(session, lambda out, _: "press a key" in out)
    host.process("send_keys", {"session_id": session, "keys": ["Up"]})
    output, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert "KEY:KEY_UP" in output and last["exit_code"] == 0


def test_c_c_in_the_sandbox_reaches_the_command_not_bwrap(exec_host) -> None:
    """bwrap outside the sandbox ignores C-c: a program that handles SIGINT carries on."""
    host = exec_host(SANDBOXED)
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, lambda *_: print('caught', flush=True))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "print('still here', flush=True)\n"
    )
    session = host.start({"argv": ["python3", "-c", script], "pty": True})
    host.poll_until(session, lambda out, _: "ready" in out)
    host.process("send_keys", {"session_id": session, "keys": ["C-c"]})
    host.poll_until(session, lambda out, _: "caught" in out)
    host.process("submit", {"session_id": session})
    output, last = host.poll_until(session, lambda _, answer: answer["state"] != "running")
    assert "still here" in output and last["exit_code"] == 0
    # C-c before the command runs (while bwrap sets the sandbox up) is ignored: wait for it.
    plain = host.start({"argv": ["sh", "-c", "echo ready; exec sleep 100"], "pty": True})
    host.poll_until(plain, lambda out, _: "ready" in out)
    host.process("send_keys", {"session_id": plain, "keys": ["C-c"]})
    _, last = host.poll_until(plain, lambda _, answer: answer["state"] != "running")
    assert last["exit_code"] == 128 + 2  # bwrap reports a signalled command as a shell does
