"""Single use holds on what was signed: artifacts with the same signed bytes are one approval.

A v1 signature covers the plain concatenation ``approval_id + tenant_id + action_hash +
issued_at + expires_at``, so moving the split between two neighbouring fields keeps the
signature valid and changes what the artifact says its id (and tenant) is. Each re-split must
still be the approval that was consumed. The artifacts here are minted by ``openexec approve``,
as an approver following the README would mint them.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec import cli
from openexec.receipts import private_key_pem, public_key_pem
from tests.approval_helpers import dsse_sign
from tests.conftest import execute, journal, stored_rows
from tests.support.processes import Uvicorn

PAYLOAD = {"note": "once"}


def minted(capsys, key_file: Path, *options: str) -> dict:
    """An artifact from ``openexec approve`` for probe.bump with PAYLOAD."""
    argv = ["approve", "--key", str(key_file), "--action", "probe.bump"]
    argv += ["--payload", json.dumps(PAYLOAD), *options]
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def approver_key(tmp_path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "approver.pem"
    path.write_bytes(private_key_pem(key))
    return key, path


def splits(first: str, second: str) -> list[tuple[str, str]]:
    """Every way to cut ``first + second`` in two, the original cut included."""
    joined = first + second
    return [(joined[:cut], joined[cut:]) for cut in range(len(joined) + 1)]


def resplit_artifacts(artifact: dict) -> list[dict]:
    """The artifact with its id/tenant split and its issued/expires split moved, every way:
    the signed bytes stay the same in each."""
    variants = []
    for approval_id, tenant_id in splits(artifact["approval_id"], artifact["tenant_id"]):
        for issued_at, expires_at in splits(artifact["issued_at"], artifact["expires_at"]):
            fields = {"approval_id": approval_id, "tenant_id": tenant_id}
            fields |= {"issued_at": issued_at, "expires_at": expires_at}
            variants.append({**artifact, **fields})
    return variants


def signed_bytes(artifact: dict) -> bytes:
    names = ("approval_id", "tenant_id", "action_hash", "issued_at", "expires_at")
    return "".join(artifact[name] for name in names).encode()


def test_every_resplit_of_a_v1_artifact_is_the_approval_already_used(
    make_client, approver_key, capsys
):
    key, key_file = approver_key
    client = make_client(mode="clawshield", clawshield_public_keys=(key.public_key(),))
    artifact = minted(capsys, key_file, "--format", "v1")
    first = execute(client, "probe.bump", PAYLOAD, nonce="original", approval_artifact=artifact)
    assert first.status_code == 200, first.text

    variants = resplit_artifacts(artifact)
    assert len({signed_bytes(v) for v in variants}) == 1
    codes = []
    for number, variant in enumerate(variants):
        answer = execute(
            client, "probe.bump", PAYLOAD, nonce=f"resplit-{number}", approval_artifact=variant
        )
        assert answer.status_code == 403, answer.text
        codes.append(answer.json()["code"])
    # A cut that leaves valid fields is the used approval; others do not even parse.
    assert codes.count("approval_already_used") >= len(artifact["approval_id"])
    assert set(codes) <= {"approval_already_used", "approval_malformed"}
    assert len(journal(client)) == 1
    assert len(stored_rows(client)) == 1


def test_a_resplit_used_first_consumes_the_original_too(make_client, approver_key, capsys):
    key, key_file = approver_key
    client = make_client(mode="clawshield", clawshield_public_keys=(key.public_key(),))
    artifact = minted(capsys, key_file, "--format", "v1")
    cut = len(artifact["approval_id"]) // 2
    resplit = {
        **artifact,
        "approval_id": artifact["approval_id"][:cut],
        "tenant_id": artifact["approval_id"][cut:],
    }
    assert execute(client, "probe.bump", PAYLOAD, nonce="a", approval_artifact=resplit).is_success
    again = execute(client, "probe.bump", PAYLOAD, nonce="b", approval_artifact=artifact)
    assert again.status_code == 403 and again.json()["code"] == "approval_already_used"
    assert len(journal(client)) == 1


def test_the_same_v1_bytes_signed_by_two_approver_keys_are_one_approval(make_client, capsys):
    """With key rotation both keys verify; one decision signed twice is still one approval."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    client = make_client(
        mode="clawshield", clawshield_public_keys=(old.public_key(), new.public_key())
    )
    from openexec.approvals import mint_v1

    by_old = mint_v1(old, "probe.bump", PAYLOAD, approval_id="rotated")
    by_new = {**by_old, "signature": base64.b64encode(new.sign(signed_bytes(by_old))).decode()}
    assert execute(client, "probe.bump", PAYLOAD, nonce="a", approval_artifact=by_old).is_success
    again = execute(client, "probe.bump", PAYLOAD, nonce="b", approval_artifact=by_new)
    assert again.status_code == 403 and again.json()["code"] == "approval_already_used"


def v2_variants(envelope: dict, key: Ed25519PrivateKey) -> list[dict]:
    """Other encodings of one signed v2 payload: another key id hint, the signature listed
    twice, and a second signature (the same bytes signed again by the same key)."""
    signature = envelope["signatures"][0]
    again = dsse_sign(key, base64.b64decode(envelope["payload"]))["signatures"][0]
    return [
        {**envelope, "signatures": [{**signature, "keyid": "0000000000000000"}]},
        {**envelope, "signatures": [signature, signature]},
        {**envelope, "signatures": [{"sig": signature["sig"]}]},
        {**envelope, "signatures": [again, signature]},
    ]


def test_other_encodings_of_a_v2_approval_are_the_approval_already_used(
    make_client, approver_key, capsys
):
    key, key_file = approver_key
    client = make_client(mode="clawshield", clawshield_public_keys=(key.public_key(),))
    envelope = minted(capsys, key_file, "--format", "v2")
    assert execute(client, "probe.bump", PAYLOAD, nonce="v2", approval_artifact=envelope).is_success
    for number, variant in enumerate(v2_variants(envelope, key)):
        answer = execute(
            client, "probe.bump", PAYLOAD, nonce=f"v2-{number}", approval_artifact=variant
        )
        assert answer.status_code == 403, answer.text
        assert answer.json()["code"] == "approval_already_used"
    assert len(journal(client)) == 1


@pytest.fixture
def clawshield_server(tmp_path, approver_key, backend, request):
    key, _ = approver_key
    db_url = (
        f"sqlite:///{tmp_path / 'openexec.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_database")()
    )
    env = {
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": public_key_pem(key.public_key()),
        "OPENEXEC_DB_URL": db_url,
        "OPENEXEC_RECEIPT_KEY": str(tmp_path / "receipt-key.pem"),
        "OPENEXEC_PROBE_DIR": str(tmp_path / "files"),
    }
    (tmp_path / "receipt-key.pem").write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    server = Uvicorn("tests.support.server:app", env, workers=2, log=tmp_path / "uvicorn.log")
    yield server
    server.stop()


def test_resplits_sent_at_once_to_two_workers_run_once(
    clawshield_server, approver_key, capsys, tmp_path
):
    _, key_file = approver_key
    artifact = minted(capsys, key_file, "--format", "v1")
    variants = [
        v
        for v in resplit_artifacts(artifact)
        if v["issued_at"] == artifact["issued_at"] and v["approval_id"]  # cuts that parse
    ]
    bodies = [
        {
            "action": "probe.bump",
            "payload": PAYLOAD,
            "nonce": f"at-once-{n}",
            "approval_artifact": v,
        }
        for n, v in enumerate(variants)
    ]
    limits = httpx.Limits(max_connections=len(bodies))
    with (
        httpx.Client(base_url=clawshield_server.url, timeout=60, limits=limits) as client,
        ThreadPoolExecutor(len(bodies)) as pool,
    ):
        answers = list(pool.map(lambda body: client.post("/execute", json=body), bodies))
    ran = [a for a in answers if a.status_code == 200]
    assert len(ran) == 1, [a.text for a in answers if a.status_code == 200]
    assert {a.json()["code"] for a in answers if a.status_code != 200} == {"approval_already_used"}
    lines = (tmp_path / "files" / "journal.txt").read_text().splitlines()
    assert len(lines) == 1
