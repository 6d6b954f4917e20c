"""``openexec db backup`` of a live SQLite store, and a restore into a fresh directory: taken
while two workers serve traffic, restored, served again; every receipt verifies and the ledger
audit passes, with the keys and the audit state an auditor held before the backup."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

from openexec.receipts import verify_envelope
from openexec.settings import parse_public_keys
from tests.support.commands import wait_until
from tests.support.processes import OPENEXEC, Serve, clean_environment

SETTINGS = {"OPENEXEC_PLUGINS": "openexec-echo", "OPENEXEC_LEDGER_INTERVAL_MS": "50"}
BACKED_UP = ("openexec.db", "openexec-receipt-key.pem", "openexec-ledger-key.pem")


def openexec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The console script, configured as the servers are (relative paths: ``cwd``'s)."""
    return subprocess.run(
        [OPENEXEC, *args],
        cwd=cwd,
        env=clean_environment(**SETTINGS),
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass(frozen=True)
class Answered:
    started: float
    finished: float
    answer: dict


class Traffic:
    """Executions sent by four threads, one after another each, until ``stop``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[Answered] = []
        self.problems: list[str] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(n,)) for n in range(4)]
        for thread in self._threads:
            thread.start()

    def _send(self, number: int) -> None:
        with httpx.Client(timeout=30) as client:
            count = 0
            while not self._stopping.is_set():
                count += 1
                body = {"action": "echo", "payload": {"n": count}, "nonce": f"t{number}-{count}"}
                started = time.monotonic()
                try:
                    answer = client.post(f"{self.url}/execute", json=body)
                except httpx.HTTPError as exc:
                    self.problems.append(repr(exc))
                    return
                if answer.status_code != 200:
                    self.problems.append(answer.text)
                    return
                self.answered.append(Answered(started, time.monotonic(), answer.json()))

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)


def checkpoint_size(url: str) -> int:
    return int(httpx.get(f"{url}/ledger/checkpoint", timeout=10).text.splitlines()[1])


def rows(database: Path) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        found = connection.execute("SELECT id, status, result, receipt_envelope FROM executions")
        return {row["id"]: row for row in found}


def test_a_backup_taken_under_traffic_restores_with_every_receipt_and_the_ledger(tmp_path):
    live, backup, restored = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    live.mkdir()
    server = Serve(live, SETTINGS, workers=2, log=tmp_path / "live.log")
    traffic = None
    try:
        traffic = Traffic(server.url)
        wait_until(lambda: len(traffic.answered) >= 100, timeout=60)
        # What an auditor keeps from the live service: the keys and an audit of its log.
        receipt_keys = httpx.get(f"{server.url}/receipts/keys", timeout=10).json()
        (tmp_path / "receipt-keys.pem").write_text(
            "".join(key["public_key_pem"] for key in receipt_keys)
        )
        (tmp_path / "log.vkey").write_text(httpx.get(f"{server.url}/ledger/key", timeout=10).text)
        wait_until(lambda: checkpoint_size(server.url) >= 50, timeout=60)
        audit = [
            *("ledger", "audit", f"{server.url}/ledger/", "--vkey", str(tmp_path / "log.vkey")),
            *("--receipt-key", str(tmp_path / "receipt-keys.pem")),
            *("--state", str(tmp_path / "audit-state.json")),
        ]
        audited = openexec(*audit, cwd=tmp_path)
        assert audited.returncode == 0, audited.stdout + audited.stderr
        audited_size = int(re.search(r" holds (\d+) entries", audited.stdout)[1])

        began = time.monotonic()
        taken = openexec("db", "backup", str(backup), cwd=live)
        ended = time.monotonic()
        assert taken.returncode == 0, taken.stderr
        wait_until(lambda: sum(a.started > ended for a in traffic.answered) >= 50, timeout=60)
        traffic.stop()
        assert not traffic.problems, traffic.problems[:3]
        # Nothing overwrites a backup.
        again = openexec("db", "backup", str(backup), cwd=live)
        assert again.returncode == 2 and "already exists" in again.stderr
    finally:
        if traffic is not None:
            traffic.stop()
        server.stop()

    answered = traffic.answered
    before = {a.answer["id"]: a.answer for a in answered if a.finished < began}
    after = {a.answer["id"] for a in answered if a.started > ended}
    assert before and after
    assert any(a.started < ended and a.finished > began for a in answered)  # in flight meanwhile
    assert sorted(path.name for path in backup.iterdir()) == sorted(BACKED_UP)
    for path in backup.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    copied = rows(backup / "openexec.db")
    assert set(before) <= set(copied) and not after & set(copied)  # one moment, mid-traffic
    assert f"the copy holds {len(copied)} executions" in taken.stdout

    # The restore: the backup's files into a fresh directory, and a service started there.
    restored.mkdir()
    for path in backup.iterdir():
        shutil.copy2(path, restored)
    server = Serve(restored, SETTINGS, workers=2, log=tmp_path / "restored.log")
    try:
        assert httpx.get(f"{server.url}/receipts/keys", timeout=10).json() == receipt_keys
        held = rows(restored / "openexec.db")
        assert held.keys() == copied.keys()
        final = {exec_id: row for exec_id, row in held.items() if row["status"] != "running"}
        assert len(final) >= len(before)
        keys = parse_public_keys((tmp_path / "receipt-keys.pem").read_text())
        for exec_id, row in final.items():
            envelope = json.loads(row["receipt_envelope"])
            verdict = verify_envelope(envelope, keys, result=row["result"])
            assert verdict.valid and verdict.exec_id == exec_id, verdict
        for exec_id, answer in before.items():  # what clients were handed is what is kept
            assert json.loads(held[exec_id]["receipt_envelope"]) == answer["receipt_envelope"]
        # The restored service appends what the backup had not logged yet, then the audit
        # passes against the log the auditor saw before the backup.
        wait_until(lambda: checkpoint_size(server.url) == len(final), timeout=60)
        audit[2] = f"{server.url}/ledger/"
        audited = openexec(*audit, cwd=tmp_path)
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert (
            f"holds {len(final)} entries, every one checked, extends the last audit's "
            f"{audited_size}" in audited.stdout
        )
    finally:
        server.stop()


def test_backup_refuses_what_it_cannot_copy_and_creates_nothing(tmp_path):
    missing = openexec("db", "backup", str(tmp_path / "backup"), cwd=tmp_path)
    assert missing.returncode == 2
    assert f"no SQLite database at {tmp_path / 'openexec.db'}" in missing.stderr
    assert not (tmp_path / "openexec.db").exists() and not (tmp_path / "backup").exists()
    postgres = subprocess.run(
        [OPENEXEC, "db", "backup", str(tmp_path / "backup")],
        cwd=tmp_path,
        env=clean_environment(OPENEXEC_DB_URL="postgresql://u:hunter2@127.0.0.1:1/x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert postgres.returncode == 2 and "pg_dump" in postgres.stderr
    assert "hunter2" not in postgres.stderr
