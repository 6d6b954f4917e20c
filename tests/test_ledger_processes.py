"""The ledger under real uvicorn processes: many instances and workers appending to one log,
an integrator killed mid-integration, and the offline round trip through the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.cli import main
from openexec.ledger.audit import audit, receipt_keys_of
from openexec.ledger.note import parse_vkey
from openexec.ledger.sources import UrlSource
from openexec.receipts import private_key_pem
from tests.support.commands import wait_until
from tests.support.processes import Uvicorn

SERVER = "tests.support.server:app"


def keys(directory: Path) -> dict[str, str]:
    receipt, ledger = directory / "receipt-key.pem", directory / "ledger-key.pem"
    for path in (receipt, ledger):
        path.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    return {"OPENEXEC_RECEIPT_KEY": str(receipt), "OPENEXEC_LEDGER_KEY": str(ledger)}


def drive(urls: list[str], count: int, prefix: str) -> list[dict]:
    """``count`` executions spread over ``urls``, 16 at a time; every answer must be 200."""

    clients = threading.local()

    def one(number: int) -> dict:
        if not hasattr(clients, "client"):
            clients.client = httpx.Client(timeout=60)
        body = {"action": "probe.refuse", "payload": {}, "nonce": f"{prefix}-{number}"}
        answer = clients.client.post(f"{urls[number % len(urls)]}/execute", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def checkpoint_size(url: str) -> int:
    return int(httpx.get(f"{url}/ledger/checkpoint", timeout=10).text.splitlines()[1])


def audit_of(url: str, state: Path | None = None):
    source = UrlSource(f"{url}/ledger/")
    vkey = parse_vkey(httpx.get(f"{url}/ledger/key", timeout=10).text.strip())
    return audit(source, vkey, receipt_keys_of(source), state)


def test_two_instances_of_two_workers_append_2000_executions_once_each(tmp_path, postgres_database):
    database = postgres_database()
    env = {
        "OPENEXEC_DB_URL": database,
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        "OPENEXEC_LEDGER_INTERVAL_MS": "100",
        **keys(tmp_path),
    }
    instances = [
        Uvicorn(SERVER, env, workers=2, log=tmp_path / f"instance-{n}.log") for n in range(2)
    ]
    try:
        urls = [instance.url for instance in instances]
        answers = drive(urls, 2000, "scale")
        wait_until(lambda: checkpoint_size(urls[0]) == 2000, timeout=120)
        with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")) as db:
            logged = db.execute("SELECT id, ledger_index FROM executions").fetchall()
        assert sorted(index for _, index in logged) == list(range(2000))
        assert Counter(exec_id for exec_id, _ in logged) == Counter(a["id"] for a in answers)
        assert audit_of(urls[1]).checkpoint.size == 2000
    finally:
        for instance in instances:
            instance.stop()


def integrator_pid(lock_file: Path) -> int | None:
    """The process holding the integrator's flock, from /proc/locks; None if nobody does."""
    inode = lock_file.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(inode):
            return int(fields[4])
    return None


def rows_of(database: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT id, ledger_index FROM executions").fetchall()


def test_a_killed_integrator_loses_nothing_and_its_checkpoints_stay_consistent(tmp_path):
    database = tmp_path / "openexec.db"
    lock_file = tmp_path / "openexec.db-ledger-lock"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{database}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        **keys(tmp_path),
    }
    state = tmp_path / "audit-state.json"
    # A first log, audited: the state the later runs must extend.
    server = Uvicorn(SERVER, {**env, "OPENEXEC_LEDGER_INTERVAL_MS": "50"}, workers=2)
    drive([server.url], 300, "first")
    wait_until(lambda: checkpoint_size(server.url) == 300, timeout=60)
    assert audit_of(server.url, state).checkpoint.size == 300
    server.stop()
    # A backlog of 5,000 more, served with the ledger off, integrated only at restart.
    quiet = Uvicorn(SERVER, {**env, "OPENEXEC_LEDGER": "off"}, workers=2)
    drive([quiet.url], 5000, "backlog")
    quiet.stop()
    assert sum(index is None for _, index in rows_of(database)) == 5000
    server = Uvicorn(SERVER, {**env, "OPENEXEC_LEDGER_INTERVAL_MS": "50"}, workers=2)
    # The integrator is killed as soon as its first append of the backlog committed.
    wait_until(lambda: any(index and index >= 300 for _, index in rows_of(database)), 60)
    holder = integrator_pid(lock_file)
    assert holder is not None
    os.kill(holder, signal.SIGKILL)
    at_kill = sum(index is not None for _, index in rows_of(database))
    assert 300 < at_kill < 5300  # mid-integration
    # The other worker takes over and finishes; then the whole server dies, and restarts.
    wait_until(lambda: integrator_pid(lock_file) not in (None, holder), 60)
    wait_until(lambda: checkpoint_size(server.url) == 5300, timeout=120)
    server.kill()
    server = Uvicorn(SERVER, {**env, "OPENEXEC_LEDGER_INTERVAL_MS": "50"}, workers=2)
    try:
        drive([server.url], 50, "after")
        wait_until(lambda: checkpoint_size(server.url) == 5350, timeout=60)
        indexes = sorted(index for _, index in rows_of(database))
        assert indexes == list(range(5350))  # no gap, no duplicate
        report = audit_of(server.url, state)  # consistent with the first audit's log
        assert (report.previous_size, report.checkpoint.size) == (300, 5350)
    finally:
        server.stop()


def test_export_audit_and_prove_offline_through_the_cli(tmp_path, capsys, monkeypatch):
    database = tmp_path / "openexec.db"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{database}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        "OPENEXEC_LEDGER_INTERVAL_MS": "50",
        **keys(tmp_path),
    }
    server = Uvicorn(SERVER, env, workers=1)
    try:
        answers = drive([server.url], 20, "offline")
        wait_until(lambda: checkpoint_size(server.url) == 20, timeout=60)
        proof = httpx.get(f"{server.url}/ledger/proof/{answers[5]['id']}", timeout=10).text
        vkey = httpx.get(f"{server.url}/ledger/key", timeout=10).text
    finally:
        server.stop()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exported = tmp_path / "export"
    assert main(["ledger", "export", str(exported)]) == 0
    (tmp_path / "log.vkey").write_text(vkey)
    (tmp_path / "receipt.json").write_text(json.dumps(answers[5]))
    (tmp_path / "proof.tlog-proof").write_text(proof)
    capsys.readouterr()
    vkey_file = str(tmp_path / "log.vkey")
    assert main(["ledger", "audit", str(exported), "--vkey", vkey_file]) == 0
    assert "holds 20 entries" in capsys.readouterr().out
    receipt, proof_file = str(tmp_path / "receipt.json"), str(tmp_path / "proof.tlog-proof")
    assert main(["ledger", "prove", receipt, proof_file, "--vkey", vkey_file]) == 0
    assert f"execution {answers[5]['id']} is entry" in capsys.readouterr().out
    # A flipped byte in the exported tiles is found offline too.
    tile = exported / "tile" / "0" / "000.p" / "20"
    data = bytearray(tile.read_bytes())
    data[3 * 32] ^= 0x80
    tile.write_bytes(bytes(data))
    assert main(["ledger", "audit", str(exported), "--vkey", vkey_file]) == 1
    assert "FAILED: index 3: tile tile/0/000.p/20 differs" in capsys.readouterr().out


def test_the_witness_cosigns_only_checkpoints_that_extend_its_last(tmp_path, capsys):
    witness_key = tmp_path / "witness.pem"
    witness_key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    assert (
        main(["ledger", "vkey", "--key", str(witness_key), "--name", "w.example", "--witness"]) == 0
    )
    witness_vkey = capsys.readouterr().out.strip()
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        "OPENEXEC_LEDGER_INTERVAL_MS": "50",
        "OPENEXEC_LEDGER_WITNESSES": witness_vkey,
        **keys(tmp_path),
    }
    state = tmp_path / "witness-state.json"
    server = Uvicorn(SERVER, env, workers=1)
    try:
        log_vkey = tmp_path / "log.vkey"
        log_vkey.write_text(httpx.get(f"{server.url}/ledger/key", timeout=10).text)
        command = [
            "ledger", "witness", f"{server.url}/ledger/", "--vkey", str(log_vkey),
            "--key", str(witness_key), "--name", "w.example", "--state", str(state),
        ]  # fmt: skip
        for total in (10, 310):  # the second run proves consistency across a full tile
            drive([server.url], total - (10 if total == 310 else 0), f"w{total}")
            wait_until(lambda total=total: checkpoint_size(server.url) == total, timeout=60)
            assert main(command) == 0
            out = capsys.readouterr().out
            assert f"cosigned openexec.localhost/ledger at size {total}" in out
            served = httpx.get(f"{server.url}/ledger/checkpoint", timeout=10).text
            assert served.splitlines()[1] == str(total) and "\n— w.example " in served
        # Shown another history before (a state whose root this log does not extend), the
        # witness refuses to cosign.
        saved = json.loads(state.read_text())
        lines = saved["checkpoint"].splitlines()
        lines[1], lines[2] = "300", "A" * 43 + "="
        state.write_text(json.dumps({"checkpoint": "\n".join(lines) + "\n"}))
        assert main(command) == 1
        assert "split view" in capsys.readouterr().out
    finally:
        server.stop()


def children_of(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def test_the_integrator_is_a_child_process_its_worker_replaces_and_takes_with_it(tmp_path):
    database = tmp_path / "openexec.db"
    lock_file = tmp_path / "openexec.db-ledger-lock"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{database}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "probe"),
        "OPENEXEC_LEDGER_INTERVAL_MS": "50",
        **keys(tmp_path),
    }
    server = Uvicorn(SERVER, env, workers=1)  # the uvicorn process is the worker
    try:
        drive([server.url], 20, "first")
        wait_until(lambda: checkpoint_size(server.url) == 20, timeout=60)
        first = integrator_pid(lock_file)
        assert first is not None and first != server.process.pid
        assert first in children_of(server.process.pid)
        # its configuration, the database URL among it, came on its stdin
        assert str(database) not in Path(f"/proc/{first}/cmdline").read_text()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: integrator_pid(lock_file) not in (None, first), timeout=60)
        second = integrator_pid(lock_file)
        assert second in children_of(server.process.pid)
        drive([server.url], 20, "second")
        wait_until(lambda: checkpoint_size(server.url) == 40, timeout=60)
        os.kill(server.process.pid, signal.SIGKILL)  # the worker alone, not its group
        server.process.wait()
        wait_until(lambda: not Path(f"/proc/{second}").exists(), timeout=30)
    finally:
        server.stop()
