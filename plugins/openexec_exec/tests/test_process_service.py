"""Sessions in the real service: any worker serves any session, and neither a restart of the
service nor a kill -9 of the worker that started a session loses it."""

from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Any

import httpx2 as httpx

from tests.support.commands import alive, wait_until

POLICY = 'security = "full"\n'
_nonces = itertools.count()


def call(url: str, action: str, payload: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """The result of a succeeded execution of ``action``."""
    body = {"action": action, "payload": payload, "nonce": f"s-{next(_nonces)}"}
    response = httpx.post(f"{url}/execute", json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded", response.text
    return response.json()["result"]


def poll_until(url: str, session: str, condition) -> dict[str, Any]:
    for _ in range(100):
        answer = call(url, "process.poll", {"session_id": session, "wait_ms": 2000})
        if condition(answer):
            return answer
    raise AssertionError(f"never met: {answer}")


def test_two_workers_serve_one_session(service) -> None:
    """Two service processes on one state directory, as two workers of a host are."""
    first, second = service(workers=1), service(workers=1)
    session = call(first.url, "exec.run", {"argv": ["cat"], "background": True})["session_id"]
    call(second.url, "process.write", {"session_id": session, "data": "via second\n"})
    answer = poll_until(first.url, session, lambda a: "via second" in a["stdout"])
    assert answer["state"] == "running"
    call(first.url, "process.write", {"session_id": session, "data": "via first\n"})
    answer = poll_until(second.url, session, lambda a: "via first" in a["stdout"])
    assert answer["stdout"] == "via second\nvia first\n"
    killed = call(second.url, "process.kill", {"session_id": session})
    assert killed["state"] == "signalled"


def test_polls_spread_over_two_workers_all_answer(service) -> None:
    server = service(workers=2)
    payload = {"argv": ["sh", "-c", "while :; do echo tick; sleep 0.05; done"], "background": True}
    session = call(server.url, "exec.run", payload)["session_id"]
    answers = [call(server.url, "process.poll", {"session_id": session}) for _ in range(20)]
    assert all(a["state"] == "running" and a["stdout"].startswith("tick\n") for a in answers)
    call(server.url, "process.kill", {"session_id": session, "signal": "KILL"})


def test_a_restart_of_the_service_loses_no_session(service) -> None:
    server = service(workers=2)
    talk = call(server.url, "exec.run", {"argv": ["cat"], "background": True})["session_id"]
    call(server.url, "process.write", {"session_id": talk, "data": "before\n"})
    # long enough to outlast the restart on a loaded machine, short enough to see it end
    bounded = {"argv": ["sleep", "100"], "background": True, "timeout_s": 10}
    timed = call(server.url, "exec.run", bounded)["session_id"]
    server.stop()

    again = service(workers=2)
    listed = call(again.url, "process.list", {})["sessions"]
    assert {s["session_id"]: s["state"] for s in listed} == {talk: "running", timed: "running"}
    call(again.url, "process.write", {"session_id": talk, "data": "after\n"})
    answer = poll_until(again.url, talk, lambda a: "after" in a["stdout"])
    assert answer["stdout"] == "before\nafter\n"
    assert call(again.url, "process.kill", {"session_id": talk})["state"] == "signalled"
    answer = poll_until(again.url, timed, lambda a: a["state"] != "running")
    assert answer["state"] == "timed_out"  # its timeout held across the restart


def test_a_kill_9_of_the_worker_that_started_a_session_loses_nothing(service, tmp_path) -> None:
    server = service(workers=1)
    started: list[dict[str, Any]] = []
    payload = {
        "argv": ["sh", "-c", "echo $$; read x; echo read $x"],
        "yield_ms": 60_000,
        "pty": True,  # a foreground command's stdin is a pipe only with a PTY
    }

    def start() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the worker dies under the request
            started.append(call(server.url, "exec.run", payload))

    caller = threading.Thread(target=start)
    caller.start()
    sessions = tmp_path / "state" / "sessions"
    log = wait_until(lambda: next(sessions.glob("*/output.log"), None))
    pid = int(wait_until(lambda: log.read_text().endswith("\n") and log.read_text()))
    directory = log.parent
    server.kill()  # SIGKILL to the worker while it waits on the command
    caller.join()
    assert not started and alive(pid)

    again = service(workers=1)
    session = directory.name
    listed = call(again.url, "process.list", {})["sessions"]
    assert [(s["session_id"], s["state"], s["pid"]) for s in listed] == [(session, "running", pid)]
    call(again.url, "process.write", {"session_id": session, "data": "later\n"})
    answer = poll_until(again.url, session, lambda a: a["state"] != "running")
    assert answer["output"] == f"{pid}\r\nlater\r\nread later\r\n"  # the echo, then sh
    assert answer["exit_code"] == 0
