"""The README's clawshield walkthrough, run as written against a real uvicorn process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.processes import clean_environment, free_port

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Clawshield mode: from a key to a verified receipt", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)


def test_walkthrough_takes_under_ten_commands_and_verifies_a_receipt(tmp_path):
    script = walkthrough()
    commands = [line for line in script.splitlines() if line and not line.startswith("  ")]
    assert len(commands) < 10
    port = str(free_port())
    bin_dir = str(Path(sys.executable).parent)
    env = clean_environment(PYTHONPATH=str(ROOT))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script.replace("5000", port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server the walkthrough left running
    assert process.returncode == 0, stderr
    verdict = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"valid [0-9a-f-]{36} succeeded", verdict), stdout
    assert (tmp_path / "approver.pem").stat().st_mode & 0o777 == 0o600
