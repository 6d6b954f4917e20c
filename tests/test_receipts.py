"""Receipts: genuine ones verify through the API and offline; forged ones never do."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from openexec.engine import execution_id
from tests.conftest import execute


def offline_verify(envelope: dict, public_key_pem: str) -> dict:
    """Check a receipt with the public key and the DSSE spec alone; returns the statement."""
    key = load_pem_public_key(public_key_pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    body = base64.b64decode(envelope["payload"])
    kind = envelope["payloadType"].encode()
    pae = (
        b"DSSEv1 "
        + str(len(kind)).encode()
        + b" "
        + kind
        + b" "
        + str(len(body)).encode()
        + b" "
        + body
    )
    key.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises if forged
    return json.loads(body)


@pytest.fixture
def done(client):
    response = execute(client, "echo", {"msg": "hello", "n": 1.5}, nonce="receipt-1").json()
    return client, response


def test_receipt_verifies_offline_with_only_the_public_key(done):
    client, response = done
    [key] = client.get("/receipts/keys").json()
    assert key["algorithm"] == "ed25519"
    envelope = response["receipt_envelope"]
    statement = offline_verify(envelope, key["public_key_pem"])

    raw_key = load_pem_public_key(key["public_key_pem"].encode()).public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    assert (
        envelope["signatures"][0]["keyid"]
        == key["key_id"]
        == hashlib.sha256(raw_key).hexdigest()[:16]
    )
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    body = base64.b64decode(envelope["payload"])
    assert body == rfc8785.dumps(statement)  # the payload is JCS
    assert hashlib.sha256(body).hexdigest() == response["receipt"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "urn:openexec:receipt:v1"
    assert statement["subject"] == [
        {
            "name": f"openexec/execution/{response['id']}",
            "digest": {"sha256": response["request_sha256"]},
        }
    ]
    predicate = statement["predicate"]
    assert predicate["exec_id"] == response["id"] and predicate["status"] == "succeeded"
    assert (
        predicate["result_sha256"] == hashlib.sha256(rfc8785.dumps(response["result"])).hexdigest()
    )
    assert predicate["plugin"] == {"name": "openexec-echo", "version": "0.1.0"}
    assert predicate["mode"] == "demo" and predicate["approval"] is None
    assert predicate["service"]["name"] == "openexec"
    assert predicate["started_at"].endswith("Z") and predicate["completed_at"].endswith("Z")
    assert client.get(f"/receipts/{response['id']}").json() == envelope


def test_offline_check_rejects_a_tampered_receipt(done):
    client, response = done
    [key] = client.get("/receipts/keys").json()
    statement = json.loads(base64.b64decode(response["receipt_envelope"]["payload"]))
    statement["predicate"]["status"] = "failed"
    forged = {
        **response["receipt_envelope"],
        "payload": base64.b64encode(rfc8785.dumps(statement)).decode(),
    }
    with pytest.raises(InvalidSignature):
        offline_verify(forged, key["public_key_pem"])


def test_api_verifies_the_genuine_receipt_both_ways(done):
    client, response = done
    by_id = {
        "exec_id": response["id"],
        "receipt": response["receipt"],
        "result": response["result"],
    }
    assert client.post("/receipts/verify", json=by_id).json()["valid"] is True
    as_text = {**by_id, "result": json.dumps(response["result"])}
    assert client.post("/receipts/verify", json=as_text).json()["valid"] is True
    by_envelope = {"envelope": response["receipt_envelope"], "result": response["result"]}
    verdict = client.post("/receipts/verify", json=by_envelope).json()
    signed = {"exec_id": response["id"], "status": "succeeded", "mode": "demo", "approval": None}
    assert verdict == {"valid": True, "reason": None, **signed}
    assert client.post("/receipts/verify", json=by_id).json() == verdict  # both forms report
    assert client.post("/receipts/verify", json={"envelope": response["receipt_envelope"]}).json()[
        "valid"
    ]


def forged_envelopes(envelope: dict) -> list[dict]:
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["result_sha256"] = "0" * 64
    other_key = Ed25519PrivateKey.generate()
    body = rfc8785.dumps(statement)
    pae = b"DSSEv1 28 application/vnd.in-toto+json %d %s" % (len(body), body)
    signature = envelope["signatures"][0]
    return [
        {**envelope, "payload": base64.b64encode(body).decode()},  # edited, old signature
        {
            **envelope,
            "payload": base64.b64encode(body).decode(),  # edited, signed by a stranger
            "signatures": [
                {"keyid": signature["keyid"], "sig": base64.b64encode(other_key.sign(pae)).decode()}
            ],
        },
        {**envelope, "signatures": [{**signature, "sig": base64.b64encode(b"\0" * 64).decode()}]},
        {**envelope, "signatures": []},
        {**envelope, "payloadType": "application/json"},
        {**envelope, "payload": "***"},
    ]


def test_forged_envelopes_never_verify(done):
    client, response = done
    for forged in forged_envelopes(response["receipt_envelope"]):
        verdict = client.post("/receipts/verify", json={"envelope": forged}).json()
        assert verdict["valid"] is False and verdict["reason"], forged


def test_forged_receipt_hashes_never_verify(done):
    client, response = done
    base = {"exec_id": response["id"], "receipt": response["receipt"], "result": response["result"]}
    someone_elses = hashlib.sha256(b"anything").hexdigest()
    cases = [
        {**base, "receipt": someone_elses},
        {**base, "result": {"echo": {"msg": "tampered", "n": 1.5}}},
        {**base, "result": None},
        {**base, "result": "not json"},
        {**base, "exec_id": "no-such-execution"},
    ]
    for case in cases:
        verdict = client.post("/receipts/verify", json=case).json()
        assert verdict["valid"] is False and verdict["reason"], case


def test_a_receipt_from_another_service_key_does_not_verify(make_client):
    one, two = make_client(), make_client()
    response = execute(one, "echo", {}, nonce="cross").json()
    verdict = two.post("/receipts/verify", json={"envelope": response["receipt_envelope"]}).json()
    assert verdict["valid"] is False and "Invalid signature" in verdict["reason"]


def test_published_keys_of_other_instances_verify(make_client):
    """Several instances with their own keys: each publishes and trusts the others' keys."""
    one = make_client()
    one_key = one.app.state.engine.signer.public_key
    two = make_client(receipt_public_keys=(one_key,))
    listed = two.get("/receipts/keys").json()
    assert [k["key_id"] for k in listed] == [
        two.app.state.engine.signer.key_id,
        one.app.state.engine.signer.key_id,
    ]
    response = execute(one, "echo", {}, nonce="published").json()
    verdict = two.post("/receipts/verify", json={"envelope": response["receipt_envelope"]}).json()
    assert verdict["valid"] is True


def test_receipt_key_is_created_once_with_mode_0600_and_reused(make_client, tmp_path):
    key_path = tmp_path / "keys" / "receipt.pem"
    key_path.parent.mkdir()
    private = Ed25519PrivateKey.generate()
    from openexec.receipts import private_key_pem

    key_path.write_bytes(private_key_pem(private))
    client = make_client(receipt_key_path=key_path)
    [key] = client.get("/receipts/keys").json()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key["key_id"] == hashlib.sha256(raw).hexdigest()[:16]

    generated = make_client(
        receipt_key_path=None, db_url=f"sqlite:///{tmp_path / 'gen' / 'db.sqlite'}"
    )
    path = tmp_path / "gen" / "openexec-receipt-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    first_id = generated.get("/receipts/keys").json()[0]["key_id"]
    from openexec.receipts import load_receipt_signer

    assert load_receipt_signer(generated.app.state.engine.settings).key_id == first_id


def test_execution_ids_are_uuid7_of_their_start_and_sort_by_it(client):
    """Time-ordered ids keep a big store's id index writing at its right edge."""
    bodies = [execute(client, "echo", {"n": n}, nonce=f"id-{n}").json() for n in range(3)]
    starts = []
    for body in bodies:
        exec_id = uuid.UUID(body["id"])
        assert exec_id.version == 7 and exec_id.variant == uuid.RFC_4122
        statement = json.loads(base64.b64decode(body["receipt_envelope"]["payload"]))
        started = datetime.fromisoformat(statement["predicate"]["started_at"])
        assert int(exec_id.hex[:12], 16) == int(started.timestamp() * 1000)
        starts.append(exec_id.hex[:12])
    assert starts == sorted(starts) and len({body["id"] for body in bodies}) == 3


def test_execution_ids_started_in_one_millisecond_differ():
    started = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)
    ids = {execution_id(started) for _ in range(1000)}
    assert len(ids) == 1000 and len({exec_id[:14] for exec_id in ids}) == 1


def test_the_exec_id_form_reports_the_approval_of_a_clawshield_receipt(make_client, approver):
    client = make_client(**approver.settings())
    artifact = approver.v2("echo", {"a": 1})
    response = execute(client, "echo", {"a": 1}, nonce="named", approval_artifact=artifact).json()
    by_id = {
        "exec_id": response["id"],
        "receipt": response["receipt"],
        "result": response["result"],
    }
    verdict = client.post("/receipts/verify", json=by_id).json()
    assert verdict["valid"] is True and verdict["mode"] == "clawshield"
    assert verdict["exec_id"] == response["id"] and verdict["status"] == "succeeded"
    assert (
        verdict["approval"]["id"]
        == json.loads(base64.b64decode(artifact["payload"]))["approval_id"]
    )
    assert verdict["approval"]["format"] == "openexec-v2"
    wrong = client.post("/receipts/verify", json={**by_id, "receipt": "0" * 64}).json()
    assert wrong["valid"] is False and wrong["exec_id"] == response["id"]


@pytest.mark.parametrize(
    "text",
    [
        '{"echo": {"msg": "evil", "msg": "hello", "n": 1.5}}',  # duplicate key, last one wins
        '{"echo": {"msg": "hello", "n": 1.5}, "echo": {"msg": "hello", "n": 1.5}}',
        '{"echo": {"msg": "hello", "n": NaN}}',
        '{"echo": {"msg": "hello\\ud800", "n": 1.5}}',
        "[" * 100 + "]" * 100,
    ],
)
def test_a_result_given_as_text_is_parsed_strictly(done, text):
    client, response = done
    lenient = {"exec_id": response["id"], "receipt": response["receipt"], "result": text}
    for body in (lenient, {"envelope": response["receipt_envelope"], "result": text}):
        verdict = client.post("/receipts/verify", json=body).json()
        assert verdict["valid"] is False, text
        assert "not acceptable JSON text" in verdict["reason"]
