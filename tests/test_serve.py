"""``openexec serve``: the service under uvicorn from any directory, as an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx2 as httpx
import pytest
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from openexec.cli import SERVICE_APP, _parser, uvicorn_options
from tests.support.commands import alive, wait_until
from tests.support.processes import OPENEXEC, Serve, clean_environment

ECHO_ONLY = {"OPENEXEC_PLUGINS": "openexec-echo"}  # no exec pack: no daemon outlives the test


def workers_of(parent: int) -> list[int]:
    """The uvicorn workers ``parent`` spawned (multiprocessing's spawn children)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_two_workers_from_another_directory_serve_and_stop_on_sigterm(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the repository: main:app is not importable here
    elsewhere.mkdir()
    server = Serve(elsewhere, ECHO_ONLY, workers=2, log=tmp_path / "serve.log")
    try:
        assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "healthy"
        answer = httpx.post(
            f"{server.url}/execute",
            json={"action": "echo", "payload": {"msg": "hi"}, "nonce": "serve-1"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["result"]) == (
            "succeeded",
            {"echo": {"msg": "hi"}},
        )
        # the settings' relative paths are the working directory's: the database is there
        assert (elsewhere / "openexec.db").is_file()
        wait_until(lambda: len(workers_of(server.process.pid)) == 2)
        workers = workers_of(server.process.pid)
        os.kill(server.process.pid, signal.SIGTERM)  # the parent only, as systemd's KillMode=mixed
        assert server.process.wait(30) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_setting_stops_serve_with_the_startup_failure_code(tmp_path, workers):
    """With two workers uvicorn's supervisor itself would exit 0; serve exits 3, the code the
    systemd unit does not restart on."""
    finished = subprocess.run(
        [OPENEXEC, "serve", "--port", "0", "--workers", str(workers)],
        cwd=tmp_path,
        env=clean_environment(OPENEXEC_MODE="bogus"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == STARTUP_FAILURE
    assert (
        "openexec: startup failed: OPENEXEC_MODE: must be 'demo' or 'clawshield'" in finished.stderr
    )


def test_the_options_reach_uvicorn():
    options = ["--host", "0.0.0.0", "--port", "9000", "--log-level", "warning", "--no-access-log"]
    options += ["--no-proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8", "--root-path", "/oe"]
    args = _parser().parse_args(["serve", *options])
    config = uvicorn.Config(SERVICE_APP, workers=args.workers, **uvicorn_options(args))
    assert (config.host, config.port, config.workers) == ("0.0.0.0", 9000, 1)
    assert (config.log_level, config.access_log, config.proxy_headers) == ("warning", False, False)
    assert (config.forwarded_allow_ips, config.root_path) == ("10.0.0.0/8", "/oe")
    for wrong in (["--workers", "0"], ["--worker", "2"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", *wrong])


class ServeAtInfo(Serve):
    log_level = "info"  # the supervisor's lines are INFO


def test_json_logs_cover_the_supervisor_lines_too(tmp_path):
    """Under ``--workers`` uvicorn's supervisor never loads the app; serve gives uvicorn the
    format itself, so its lines ("Started parent process") are JSON as the workers' are."""
    log = tmp_path / "serve.log"
    env = {**ECHO_ONLY, "OPENEXEC_LOG_FORMAT": "json"}
    server = ServeAtInfo(tmp_path, env, workers=2, log=log)
    try:
        wait_until(lambda: len(workers_of(server.process.pid)) == 2)
    finally:
        server.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    pids = {record["pid"] for record in records}
    assert server.process.pid in pids  # the supervisor's own lines among them
    assert any("parent process" in record["message"] for record in records)
