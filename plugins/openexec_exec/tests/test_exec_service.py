"""The exec pack in the real service (``uvicorn main:app``): exactly once across workers, a
worker killed mid-command, and what the child sees of the service."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx

from tests.support.commands import alive, wait_until


def execute(url: str, payload: dict, nonce: str, timeout: float = 60) -> httpx.Response:
    body = {"action": "exec.run", "payload": payload, "nonce": nonce}
    return httpx.post(f"{url}/execute", json=body, timeout=timeout)


def test_64_identical_requests_on_two_workers_run_the_command_once(service, shared_tmp) -> None:
    server = service()
    payload = {"argv": ["sh", "-c", "echo ran >> count; sleep 0.3"]}
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda _: execute(server.url, payload, "stampede"), range(64)))
    assert {r.status_code for r in responses} <= {200, 409}
    succeeded = [r.json() for r in responses if r.status_code == 200]
    assert succeeded and {s["id"] for s in succeeded} == {succeeded[0]["id"]}
    assert (shared_tmp / "workspace" / "count").read_text() == "ran\n"


def test_a_killed_worker_leaves_no_unbounded_command_and_no_second_run(service, shared_tmp) -> None:
    server = service(
        'security = "full"\nmax_yield_ms = 2000\n', workers=1, OPENEXEC_LEASE_GRACE_S="1"
    )
    workspace = shared_tmp / "workspace"
    payload = {"argv": ["sh", "-c", "echo $$ >> pids; exec sleep 100"], "timeout_s": 5}
    dropped: list[BaseException] = []

    def call() -> None:
        try:
            execute(server.url, payload, "doomed")
        except httpx.HTTPError as exc:
            dropped.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    pids = workspace / "pids"
    pid = int(wait_until(lambda: pids.exists() and pids.read_text()))
    server.kill()  # SIGKILL to the worker (and its process group) mid-command
    caller.join()
    assert dropped  # the caller lost its connection: no answer came back
    assert alive(pid)  # the supervisor, not the worker, owns it
    wait_until(lambda: not alive(pid), timeout=15)  # killed at its timeout all the same

    again = service(
        'security = "full"\nmax_yield_ms = 2000\n', workers=1, OPENEXEC_LEASE_GRACE_S="1"
    )
    answer = wait_until(
        lambda: (r := execute(again.url, payload, "doomed")).status_code != 409 and r,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "indeterminate"
    assert (workspace / "pids").read_text().splitlines() == [str(pid)]  # it never ran twice


def test_the_child_sees_nothing_of_the_service_environment(service, tmp_path) -> None:
    server = service(DATABASE_PASSWORD="hunter2")
    result = execute(server.url, {"argv": ["cat", "/proc/self/environ"]}, "env").json()
    names = {item.split("=", 1)[0] for item in result["result"]["stdout"].split("\0") if item}
    assert names == {"PATH", "HOME", "LANG"}
    assert "hunter2" not in result["result"]["stdout"]
    assert str(tmp_path) not in result["result"]["stdout"]  # no database or key path either


def test_the_services_own_port_is_unreachable_from_the_sandbox(service) -> None:
    server = service('security = "full"\nsandbox = "bwrap"\n')
    port = server.port
    attack = {"argv": ["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port} && echo reached"]}
    result = execute(server.url, attack, "reach").json()["result"]
    assert result["stdout"] == "" and result["exit_code"] != 0
    assert result["sandbox"] == "bwrap"  # without it the same attack connects: test_exec_sandbox
