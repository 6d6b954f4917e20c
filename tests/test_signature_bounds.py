"""The work one unauthenticated request can ask for is bounded before anything is verified.

Each signature of a DSSE envelope is tried against every configured key (a keyid is only a
hint). Unbounded, one v2 approval or one ``/receipts/verify`` envelope with thousands of
signatures kept a worker's event loop verifying for seconds while every other request
waited. The keys here count their verifications, so the bound is shown by what the service
did, not by how long it took.
"""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from openexec.approvals import MAX_V2_PAYLOAD_BYTES
from openexec.signing import MAX_SIGNATURES
from tests.approval_helpers import dsse_sign, v2_claims
from tests.conftest import execute, stored_rows

FLOOD = 5000


class CountingKey:
    """A public key that counts ``verify`` calls; everything else goes to the real key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.verifications = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.verifications += 1
        self._key.verify(signature, data)

    def public_bytes(self, *args, **kwargs) -> bytes:
        return self._key.public_bytes(*args, **kwargs)


def junk_signatures(count: int) -> list[dict]:
    """Signatures that pass the cheap checks (S below the group order, as an attacker would
    write them) and so cost a full verification each."""
    return [
        {"keyid": "", "sig": base64.b64encode(os.urandom(63) + b"\x01").decode()}
        for _ in range(count)
    ]


@pytest.fixture
def shield(make_client, approver):
    """A clawshield app whose three approver keys (one real) and receipt keys count."""
    others = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    client = make_client(**approver.settings(clawshield_public_keys=(*others, approver.public_key)))
    verifier = client.app.state.engine.verifier
    verifier.keys = tuple(CountingKey(key) for key in verifier.keys)
    signer = client.app.state.engine.signer
    signer.trusted_keys = tuple(CountingKey(key) for key in signer.trusted_keys)
    return client


def approver_verifications(client) -> int:
    return sum(key.verifications for key in client.app.state.engine.verifier.keys)


def receipt_verifications(client) -> int:
    return sum(key.verifications for key in client.app.state.engine.signer.trusted_keys)


def test_a_v2_approval_with_thousands_of_signatures_is_refused_unverified(shield, approver):
    envelope = approver.v2("echo", {})
    envelope["signatures"] = junk_signatures(FLOOD) + envelope["signatures"]
    answer = execute(shield, "echo", {}, nonce="flood", approval_artifact=envelope)
    assert answer.status_code == 403 and answer.json()["code"] == "approval_malformed"
    assert str(MAX_SIGNATURES) in answer.json()["detail"]
    assert approver_verifications(shield) == 0
    assert stored_rows(shield) == []


def test_the_most_signatures_allowed_cost_at_most_one_check_per_signature_and_key(shield, approver):
    envelope = approver.v2("echo", {})
    envelope["signatures"] = junk_signatures(MAX_SIGNATURES - 1) + envelope["signatures"]
    answer = execute(shield, "echo", {}, nonce="most", approval_artifact=envelope)
    assert answer.status_code == 200, answer.text
    assert approver_verifications(shield) <= MAX_SIGNATURES * 3

    only_junk = approver.v2("echo", {}, nonce="junk")
    only_junk["signatures"] = junk_signatures(MAX_SIGNATURES)
    before = approver_verifications(shield)
    answer = execute(shield, "echo", {}, nonce="junk", approval_artifact=only_junk)
    assert answer.json()["code"] == "approval_invalid_signature"
    assert approver_verifications(shield) - before == MAX_SIGNATURES * 3


def test_a_v2_payload_over_the_bound_is_refused_unverified(shield, approver):
    claims = v2_claims("echo", {}, approval_id="x" * 200, aud="a" * MAX_V2_PAYLOAD_BYTES)
    envelope = dsse_sign(approver.private_key, str(claims).encode())
    answer = execute(shield, "echo", {}, nonce="big", approval_artifact=envelope)
    assert answer.status_code == 403 and answer.json()["code"] == "approval_malformed"
    assert approver_verifications(shield) == 0


def test_a_receipt_envelope_with_thousands_of_signatures_is_invalid_unverified(shield, approver):
    executed = execute(shield, "echo", {}, nonce="r", approval_artifact=approver.v2("echo", {}))
    envelope = executed.json()["receipt_envelope"]
    before = receipt_verifications(shield)
    flooded = {**envelope, "signatures": junk_signatures(FLOOD) + envelope["signatures"]}
    verdict = shield.post("/receipts/verify", json={"envelope": flooded})
    assert verdict.status_code == 200
    assert verdict.json()["valid"] is False and str(MAX_SIGNATURES) in verdict.json()["reason"]
    assert receipt_verifications(shield) == before
    # the genuine envelope still verifies, with one check
    assert shield.post("/receipts/verify", json={"envelope": envelope}).json()["valid"] is True
    assert receipt_verifications(shield) == before + 1
