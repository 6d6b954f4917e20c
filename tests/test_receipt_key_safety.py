"""The receipt key is never silently replaced while the store holds receipts it signed.

Before, a missing key file was simply generated again on the next start, and every receipt
already handed out stopped verifying. Now startup stops, naming the key to restore. Backing
up and restoring the database together with the key (docs/operations.md) is tested here too.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import openexec_echo
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from openexec.app import create_app
from openexec.plugins import InProcessPlugin
from openexec.receipts import private_key_pem
from openexec.settings import DEFAULT_KEY_NAME, DEFAULT_LEDGER_KEY_NAME, ConfigError, Settings
from tests.conftest import as_replay

ECHO = InProcessPlugin(openexec_echo, "openexec-echo", "0.1.0")


def settings_in(directory: Path, **overrides) -> Settings:
    return Settings(
        db_url=f"sqlite:///{directory / 'openexec.db'}",
        **overrides,
    )


def serve_once(settings: Settings, nonce: str = "n-1") -> dict:
    """Start the service, run one echo, stop it; the response."""
    with TestClient(create_app(settings, [ECHO])) as client:
        answer = client.post("/execute", json={"action": "echo", "payload": {}, "nonce": nonce})
        assert answer.status_code == 200, answer.text
        return answer.json()


def verdict(settings: Settings, envelope: dict) -> dict:
    with TestClient(create_app(settings, [ECHO])) as client:
        return client.post("/receipts/verify", json={"envelope": envelope}).json()


def test_a_missing_generated_key_stops_startup_instead_of_being_replaced(tmp_path):
    settings = settings_in(tmp_path)
    first = serve_once(settings)
    key_file = tmp_path / DEFAULT_KEY_NAME
    key_file.unlink()
    with pytest.raises(ConfigError, match="missing: restore it") as refused:
        create_app(settings, [ECHO])
    assert refused.value.variable == "OPENEXEC_RECEIPT_KEY"
    assert first["receipt_envelope"]["signatures"][0]["keyid"] in str(refused.value)
    assert not key_file.exists()  # nothing was generated in its place


def test_an_empty_store_still_gets_a_key_on_first_start(tmp_path):
    serve_once(settings_in(tmp_path))
    assert (tmp_path / DEFAULT_KEY_NAME).stat().st_mode & 0o777 == 0o600


def test_another_key_in_place_of_the_one_that_signed_stops_startup(tmp_path, backend, request):
    directory = tmp_path
    db_url = (
        f"sqlite:///{directory / 'openexec.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_database")()
    )
    key_file = directory / "receipt.pem"
    key_file.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    settings = Settings(db_url=db_url, receipt_key_path=key_file)
    first = serve_once(settings)
    signed_by = first["receipt_envelope"]["signatures"][0]["keyid"]

    old_key = key_file.read_bytes()
    key_file.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match=f"signed by key {signed_by}.*restore"):
        create_app(settings, [ECHO])

    # Rotation: the old public key listed beside the new private key, and old receipts verify.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    old_public = load_pem_private_key(old_key, None).public_key()
    rotated = Settings(
        db_url=db_url,
        receipt_key_path=key_file,
        receipt_public_keys=(old_public,),
    )
    assert verdict(rotated, first["receipt_envelope"])["valid"] is True
    second = serve_once(rotated, nonce="n-2")  # signed with the new key, which is now newest
    assert second["receipt_envelope"]["signatures"][0]["keyid"] != signed_by


def test_backup_and_restore_of_the_database_with_its_key(tmp_path):
    """What docs/operations.md says to do: back up the database (SQLite's online backup) and
    the key files (receipt and ledger keys) together, restore them elsewhere, and every receipt
    still verifies."""
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    first = serve_once(settings_in(live))
    with (
        sqlite3.connect(live / "openexec.db") as source,
        sqlite3.connect(restored / "openexec.db") as target,
    ):
        source.backup(target)
    for key in (DEFAULT_KEY_NAME, DEFAULT_LEDGER_KEY_NAME):
        shutil.copy2(live / key, restored / key)

    settings = settings_in(restored)
    assert verdict(settings, first["receipt_envelope"])["valid"] is True
    with TestClient(create_app(settings, [ECHO])) as client:
        replay = client.post("/execute", json={"action": "echo", "payload": {}, "nonce": "n-1"})
    assert as_replay(replay.json()) == {**first, "replayed": True}

    # The database restored without its key is refused, never given a new key.
    (restored / DEFAULT_KEY_NAME).unlink()
    with pytest.raises(ConfigError, match="restore it"):
        create_app(settings, [ECHO])


def test_every_key_that_signed_must_stay_trusted_not_only_the_newest(tmp_path):
    """Key A signs, B takes over with A listed, B signs; dropping A from the list is refused,
    though the newest receipt is B's (an earlier check looked at the newest receipt only)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_a, key_b = tmp_path / "a.pem", tmp_path / "b.pem"
    key_a.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    key_b.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    public_a = load_pem_private_key(key_a.read_bytes(), None).public_key()
    first = serve_once(settings_in(tmp_path, receipt_key_path=key_a), nonce="by-a")
    rotated = settings_in(tmp_path, receipt_key_path=key_b, receipt_public_keys=(public_a,))
    serve_once(rotated, nonce="by-b")
    signed_by_a = first["receipt_envelope"]["signatures"][0]["keyid"]
    with pytest.raises(ConfigError, match=f"signed by key {signed_by_a}.*restore"):
        create_app(settings_in(tmp_path, receipt_key_path=key_b), [ECHO])
    assert verdict(rotated, first["receipt_envelope"])["valid"] is True
