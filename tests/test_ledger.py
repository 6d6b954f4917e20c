"""The witness ledger in one service: entries, tiles, checkpoints, proofs, cosignatures, keys,
and the auditor finding each kind of tampering (SQLite and PostgreSQL, through the ASGI app).

Integration is driven by calling the integrator directly, so each test knows exactly what
has been integrated when it looks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import text

from openexec.app import create_app
from openexec.ledger.audit import AuditFailure, audit, receipt_keys_of
from openexec.ledger.checkpoint import parse_checkpoint
from openexec.ledger.entries import entry_of_envelope
from openexec.ledger.merkle import leaf_hash, verify_inclusion
from openexec.ledger.note import CosignatureSigner, open_note, parse_vkey, split_note
from openexec.ledger.offline import prove
from openexec.ledger.proof import parse_proof
from openexec.receipts import private_key_pem
from openexec.settings import ConfigError, Settings
from tests.conftest import execute, stored_rows
from tests.support.ledger import ClientSource


@pytest.fixture
def make_client(make_client):
    """Apps whose integrator thread ran its first round, on an empty store, and stopped: the
    tests integrate by calling it (within an interval of an hour)."""

    def build(settings: dict[str, str] | None = None, **overrides) -> TestClient:
        client = make_client(settings, **{"ledger_interval_s": 3600.0, **overrides})
        if client.app.state.ledger is not None:
            client.app.state.ledger.runner.stop()
        return client

    return build


def integrate(client: TestClient) -> int:
    return client.app.state.ledger.integrator.integrate()


def vkey_of(client: TestClient):
    return parse_vkey(client.get("/ledger/key").text.strip())


def run_echoes(client: TestClient, count: int, prefix: str = "n") -> list[dict]:
    answers = []
    for number in range(count):
        answer = execute(client, "echo", {"n": number}, nonce=f"{prefix}-{number}")
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers


def sql(client: TestClient, statement: str, **params) -> list:
    with client.app.state.engine.store.engine.begin() as connection:
        result = connection.execute(text(statement), params)
        return result.fetchall() if result.returns_rows else []


def audited(client: TestClient, state: Path | None = None):
    source = ClientSource(client)
    return audit(source, vkey_of(client), receipt_keys_of(source), state)


def test_each_final_execution_gets_one_entry_with_contiguous_indexes(make_client):
    client = make_client()
    answers = run_echoes(client, 300)  # more than one tile of 256
    assert all(answer["ledger_index"] is None for answer in answers)
    assert integrate(client) == 300
    assert integrate(client) == 0  # nothing new: nothing appended twice
    indexes = sorted((row["ledger_index"], row["id"]) for row in stored_rows(client))
    assert [index for index, _ in indexes] == list(range(300))
    started = sorted((row["started_at"], row["id"]) for row in stored_rows(client))
    assert [exec_id for _, exec_id in indexes] == [exec_id for _, exec_id in started]
    report = audited(client)
    assert report.checkpoint.size == 300


def test_a_running_execution_waits_and_is_appended_once_final(make_client):
    client = make_client()
    run_echoes(client, 2)
    sql(client, "UPDATE executions SET status = 'running' WHERE nonce = 'n-1'")
    assert integrate(client) == 1
    sql(client, "UPDATE executions SET status = 'succeeded' WHERE nonce = 'n-1'")
    assert integrate(client) == 1
    assert audited(client).checkpoint.size == 2


def test_answers_carry_the_ledger_index_once_known_and_nothing_else_changes(make_client):
    client = make_client()
    first = execute(client, "echo", {"msg": "hi"}, nonce="only").json()
    assert first["ledger_index"] is None and first["replayed"] is False
    integrate(client)
    again = execute(client, "echo", {"msg": "hi"}, nonce="only").json()
    assert again == {**first, "replayed": True, "ledger_index": 0}


def test_a_proof_is_pending_until_integrated_then_verifies_offline(make_client):
    client = make_client()
    answer = execute(client, "echo", {"msg": "proof"}).json()
    pending = client.get(f"/ledger/proof/{answer['id']}")
    assert pending.status_code == 404 and pending.json()["code"] == "ledger_pending"
    assert client.get("/ledger/proof/no-such-execution").json()["code"] == "receipt_not_found"
    run_echoes(client, 5, prefix="more")
    integrate(client)
    served = client.get(f"/ledger/proof/{answer['id']}")
    assert served.status_code == 200 and served.headers["cache-control"] == "no-store"
    proof = parse_proof(served.text)
    assert proof.index == 0
    proven = prove(answer["receipt_envelope"], served.text, vkey_of(client))
    assert (proven.exec_id, proven.index, proven.size) == (answer["id"], 0, 6)
    # The proof binds this receipt: another receipt at the same index fails.
    other = execute(client, "echo", {"n": 0}, nonce="more-0").json()
    with pytest.raises(AuditFailure, match="index 0"):
        prove(other["receipt_envelope"], served.text, vkey_of(client))
    checkpoint = parse_checkpoint(open_note(proof.checkpoint, [vkey_of(client)])[0])
    entry = entry_of_envelope(answer["receipt_envelope"]).bytes()
    assert verify_inclusion(leaf_hash(entry), 0, checkpoint.size, proof.hashes, checkpoint.root)


def test_tiles_checkpoint_and_key_are_served_as_the_formats_say(make_client):
    client = make_client()
    run_echoes(client, 3)
    integrate(client)
    checkpoint = client.get("/ledger/checkpoint")
    assert checkpoint.headers["cache-control"] == "no-store"
    assert checkpoint.headers["content-type"].startswith("text/plain")
    body, signatures = split_note(checkpoint.text)
    assert body.splitlines()[:2] == ["openexec.localhost/ledger", "3"]
    assert [s.name for s in signatures] == ["openexec.localhost/ledger"]
    tile = client.get("/ledger/tile/0/000.p/3")
    assert tile.status_code == 200 and len(tile.content) == 3 * 32
    assert tile.headers["cache-control"] == "public, max-age=604800, immutable"
    bundle = client.get("/ledger/tile/entries/000.p/3")
    assert bundle.status_code == 200
    for missing in (
        "tile/0/000.p/4",
        "tile/0/000",
        "tile/0/0000.p/3",
        "tile/x/000",
        "tile/0/x000/001",
    ):
        assert client.get(f"/ledger/{missing}").status_code == 404, missing


def test_a_full_tile_replaces_its_partials(make_client):
    client = make_client()
    run_echoes(client, 200)
    integrate(client)
    run_echoes(client, 100, prefix="later")
    integrate(client)
    assert client.get("/ledger/tile/0/000").status_code == 200
    assert client.get("/ledger/tile/0/000.p/200").status_code == 404  # superseded
    assert client.get("/ledger/tile/0/001.p/44").status_code == 200
    assert client.get("/ledger/tile/entries/000").status_code == 200
    assert audited(client).checkpoint.size == 300


def test_the_ledger_can_be_turned_off(make_client):
    client = make_client(ledger=False)
    answer = execute(client, "echo").json()
    assert answer["ledger_index"] is None
    assert client.get("/ledger/checkpoint").status_code == 404


# Tampering, each found by the auditor with the first bad index.


def test_a_changed_execution_row_is_found(make_client):
    client = make_client()
    answers = run_echoes(client, 20)
    integrate(client)
    audited(client)
    # Row 7's receipt is replaced by row 3's: a validly signed receipt, but not the one logged.
    sql(
        client,
        "UPDATE executions SET receipt_envelope = (SELECT receipt_envelope FROM executions "
        "WHERE id = :other) WHERE id = :target",
        other=answers[3]["id"],
        target=answers[7]["id"],
    )
    with pytest.raises(AuditFailure, match="index 7: its receipt is not the one"):
        audited(client)


def test_a_rewritten_receipt_is_found(make_client):
    client = make_client()
    answers = run_echoes(client, 5)
    integrate(client)
    envelope = answers[2]["receipt_envelope"]
    forged = {**envelope, "signatures": [{**envelope["signatures"][0], "sig": "A" * 86 + "=="}]}
    sql(
        client,
        "UPDATE executions SET receipt_envelope = :forged WHERE id = :target",
        forged=json.dumps(forged),
        target=answers[2]["id"],
    )
    with pytest.raises(AuditFailure, match="index 2: its receipt does not verify"):
        audited(client)


def test_a_flipped_tile_byte_is_found(make_client):
    client = make_client()
    run_echoes(client, 40)
    integrate(client)
    (data,) = sql(client, "SELECT data FROM ledger_tiles WHERE path = 'tile/0/000.p/40'")[0]
    flipped = bytearray(data)
    flipped[32 * 17 + 5] ^= 0x01
    sql(
        client,
        "UPDATE ledger_tiles SET data = :data WHERE path = 'tile/0/000.p/40'",
        data=bytes(flipped),
    )
    with pytest.raises(AuditFailure, match=r"index 17: tile tile/0/000\.p/40 differs"):
        audited(client)


def test_a_removed_entry_and_rebuilt_log_is_a_split_view_to_the_auditor(make_client, tmp_path):
    client = make_client()
    answers = run_echoes(client, 30)
    integrate(client)
    state = tmp_path / "audit-state.json"
    assert audited(client, state).checkpoint.size == 30
    # The operator drops execution 11 and rebuilds the whole log: it is internally sound...
    sql(client, "DELETE FROM executions WHERE id = :gone", gone=answers[11]["id"])
    sql(client, "UPDATE executions SET ledger_index = NULL")
    for table in ("ledger_tiles", "ledger_checkpoints", "ledger_cosignatures"):
        sql(client, f"DELETE FROM {table}")
    sql(client, "UPDATE ledger_state SET size = 0")
    run_echoes(client, 1, prefix="cover")  # and keeps the size the auditor saw
    assert integrate(client) == 30
    assert audited(client).checkpoint.size == 30  # a fresh auditor sees nothing wrong
    with pytest.raises(AuditFailure, match=r"index 11: .*split view"):
        audited(client, state)


def test_an_audit_with_state_passes_as_the_log_grows(make_client, tmp_path):
    client = make_client()
    state = tmp_path / "state.json"
    run_echoes(client, 10)
    integrate(client)
    assert audited(client, state).previous_size is None
    run_echoes(client, 300, prefix="more")
    integrate(client)
    assert audited(client, state).previous_size == 10
    assert audited(client, state).previous_size == 310


# Keys.


def test_the_ledger_key_missing_while_the_log_has_entries_stops_startup(make_client):
    client = make_client()
    run_echoes(client, 2)
    integrate(client)
    settings: Settings = client.app.state.engine.settings
    settings.ledger_key_file.unlink()
    with pytest.raises(ConfigError, match="OPENEXEC_LEDGER_KEY: the ledger holds 2 entries"):
        create_app(settings, [])


def test_another_ledger_key_while_the_log_has_entries_stops_startup(make_client):
    client = make_client()
    run_echoes(client, 1)
    integrate(client)
    settings: Settings = client.app.state.engine.settings
    settings.ledger_key_file.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match="not by this service's"):
        create_app(settings, [])


def test_an_empty_log_gets_a_key_and_a_signed_empty_checkpoint(make_client):
    client = make_client()
    assert client.app.state.engine.settings.ledger_key_file.exists()
    _, signatures = split_note(client.get("/ledger/checkpoint").text)
    assert len(signatures) == 1
    assert parse_checkpoint(split_note(client.get("/ledger/checkpoint").text)[0]).size == 0


# Witnesses.


def witness_client(make_client, tmp_path: Path) -> tuple[TestClient, CosignatureSigner]:
    key = Ed25519PrivateKey.generate()
    signer = CosignatureSigner("witness.example", key)
    return make_client(settings={"OPENEXEC_LEDGER_WITNESSES": signer.vkey()}), signer


def test_a_listed_witness_cosignature_is_kept_and_served(make_client, tmp_path):
    client, witness = witness_client(make_client, tmp_path)
    run_echoes(client, 4)
    integrate(client)
    body = split_note(client.get("/ledger/checkpoint").text)[0]
    line = witness.cosign(body, 1_700_000_000)
    answer = client.post(
        "/ledger/cosignatures", content=body + "\n" + line, headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"size": 4, "witnesses": ["witness.example"]}
    served = client.get("/ledger/checkpoint").text
    assert served.endswith(line)
    assert [s.name for s in split_note(served)[1]] == [
        "openexec.localhost/ledger",
        "witness.example",
    ]


def flip_last_byte(line: str) -> str:
    """A signature line whose signature bytes are one bit off."""
    head, _, signature = line.rstrip("\n").rpartition(" ")
    data = bytearray(base64.b64decode(signature))
    data[-1] ^= 0x01
    return f"{head} {base64.b64encode(bytes(data)).decode()}\n"


@pytest.mark.parametrize(
    "mangle, status, code",
    [
        (
            lambda body, line: (body + "\n" + line, "application/json"),
            415,
            "unsupported_media_type",
        ),
        (lambda body, line: ("not a note", "text/plain"), 422, "cosignature_malformed"),
        (
            lambda body, line: (body.replace("\n4\n", "\n5\n") + "\n" + line, "text/plain"),
            409,
            "checkpoint_unknown",
        ),
        (
            lambda body, line: (body + "\n" + flip_last_byte(line), "text/plain"),
            422,
            "cosignature_invalid",
        ),
    ],
)
def test_a_bad_cosignature_is_refused_and_changes_nothing(
    make_client, tmp_path, mangle, status, code
):
    client, witness = witness_client(make_client, tmp_path)
    run_echoes(client, 4)
    integrate(client)
    before = client.get("/ledger/checkpoint").text
    body = split_note(before)[0]
    content, content_type = mangle(body, witness.cosign(body, 1_700_000_000))
    answer = client.post(
        "/ledger/cosignatures", content=content, headers={"content-type": content_type}
    )
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert client.get("/ledger/checkpoint").text == before


def test_an_unlisted_witness_is_refused(make_client, tmp_path):
    client, _ = witness_client(make_client, tmp_path)
    run_echoes(client, 1)
    integrate(client)
    body = split_note(client.get("/ledger/checkpoint").text)[0]
    stranger = CosignatureSigner("witness.example", Ed25519PrivateKey.generate())
    answer = client.post(
        "/ledger/cosignatures",
        content=body + "\n" + stranger.cosign(body, 1),
        headers={"content-type": "text/plain"},
    )
    assert (answer.status_code, answer.json()["code"]) == (422, "cosignature_invalid")


# What the reviewers tried.


def test_huge_tile_indexes_and_sizes_are_404_and_409_not_500(make_client, tmp_path):
    client, witness = witness_client(make_client, tmp_path)
    huge = "x999/" * 6 + "999"
    for path in (f"tile/0/{huge}", f"tile/entries/{huge}.p/3", f"receipts/{huge}"):
        assert client.get(f"/ledger/{path}").status_code == 404, path
    body = "openexec.localhost/ledger\n18446744073709551615\n" + "A" * 43 + "=\n"
    answer = client.post(
        "/ledger/cosignatures",
        content=body + "\n" + witness.cosign(body, 1),
        headers={"content-type": "text/plain"},
    )
    assert (answer.status_code, answer.json()["code"]) == (409, "checkpoint_unknown")


def test_an_execution_logged_twice_is_found(make_client):
    client = make_client()
    answers = run_echoes(client, 3)
    integrate(client)
    # Entry 2 rewritten as a copy of entry 0, tiles rebuilt to match: only the duplicate is left.
    sql(client, "DELETE FROM ledger_tiles")
    sql(client, "DELETE FROM ledger_checkpoints")
    sql(client, "UPDATE ledger_state SET size = 0")
    sql(client, "UPDATE executions SET ledger_index = NULL")
    sql(
        client,
        "UPDATE executions SET receipt_envelope = (SELECT receipt_envelope FROM executions "
        "WHERE id = :first) WHERE id = :third",
        first=answers[0]["id"],
        third=answers[2]["id"],
    )
    integrate(client)
    with pytest.raises(AuditFailure, match=r"index 2: logs execution .* a second time"):
        audited(client)


def test_a_state_file_without_its_leaves_is_an_error_not_a_first_run(make_client, tmp_path):
    client = make_client()
    run_echoes(client, 2)
    integrate(client)
    state = tmp_path / "state.json"
    audited(client, state)
    state.with_name("state.json.leaves").unlink()
    with pytest.raises(AuditFailure, match=r"state file .* is unreadable"):
        audited(client, state)


def test_an_execution_without_a_readable_receipt_does_not_hold_up_the_others(make_client):
    client = make_client()
    answers = run_echoes(client, 4)
    sql(
        client,
        "UPDATE executions SET receipt_envelope = 'lost' WHERE id = :id",
        id=answers[0]["id"],
    )
    assert integrate(client) == 3
    assert integrate(client) == 0
