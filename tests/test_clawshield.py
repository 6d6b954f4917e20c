"""Clawshield mode through the HTTP API: approvals gate every execution, each backs one."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
import rfc8785

from openexec import engine as engine_module
from openexec.testing import Approver
from tests.approval_helpers import mint_v1, mint_v2, v1_action_hash
from tests.conftest import as_replay, execute, journal, stored_rows
from tests.support.processes import Uvicorn


@pytest.fixture
def shield(make_client, approver):
    return make_client(**approver.settings())


def run(client, action, payload, nonce, artifact):
    return execute(client, action, payload, nonce=nonce, approval_artifact=artifact)


def refused(response, code: str, fragment: str | None = None) -> None:
    """A 403 with ``code`` that carries a consistent ``approval_request`` (docs/api.md)."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    if fragment:
        assert fragment in response.json()["detail"]
    asked = response.json()["approval_request"]
    action, payload = asked["action"], asked["payload"]
    canonical = rfc8785.dumps({"action": action, "payload": payload})
    assert asked["request_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert asked["v1_action_hash"] == v1_action_hash(action, payload)
    assert asked["v2_payload_sha256"] == hashlib.sha256(rfc8785.dumps(payload)).hexdigest()
    assert {"nonce", "tenant_id", "aud"} <= asked.keys()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_approved_request_runs_and_is_receipted(shield, approver, version):
    payload = {"note": "approved é"}
    artifact = getattr(approver, version)("probe.bump", payload, tenant_id="acme")
    body = run(shield, "probe.bump", payload, "ok-1", artifact).json()
    assert body["status"] == "succeeded" and body["approved"] is True
    assert body["tenant_id"] == "acme" and len(journal(shield)) == 1
    verdict = shield.post("/receipts/verify", json={"envelope": body["receipt_envelope"]}).json()
    assert verdict["valid"] is True
    health = shield.get("/health").json()
    assert health["exec_mode"] == "clawshield" and health["signature_verification"] == "enabled"


def test_receipt_names_the_approval(shield, approver):
    import base64
    import json

    artifact = approver.v1("echo", {"x": 1})
    body = run(shield, "echo", {"x": 1}, "named", artifact).json()
    predicate = json.loads(base64.b64decode(body["receipt_envelope"]["payload"]))["predicate"]
    assert predicate["mode"] == "clawshield"
    approval = predicate["approval"]
    assert approval["id"] == artifact["approval_id"] and approval["format"] == "clawshield-v1"
    assert len(approval["sha256"]) == 64 and len(approval["key_id"]) == 16


def test_no_artifact_is_refused(shield):
    refused(
        execute(shield, "echo", {}, nonce="bare"),
        "approval_required",
        "ClawShield mode requires an approval artifact",
    )
    assert stored_rows(shield) == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_approval_for_another_payload_or_action_is_refused(shield, approver, version):
    mint = getattr(approver, version)
    refused(
        run(shield, "probe.bump", {"note": "b"}, "m1", mint("probe.bump", {"note": "a"})),
        "approval_hash_mismatch",
        "hash mismatch",
    )
    refused(
        run(shield, "probe.bump", {"note": "a"}, "m2", mint("echo", {"note": "a"})),
        "approval_hash_mismatch",
        "hash mismatch",
    )
    assert stored_rows(shield) == [] and journal(shield) == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_approval_signed_by_an_unknown_key_is_refused(shield, version):
    stranger = Approver()
    artifact = getattr(stranger, version)("probe.bump", {})
    refused(
        run(shield, "probe.bump", {}, "s1", artifact),
        "approval_invalid_signature",
        "Invalid signature",
    )
    assert stored_rows(shield) == [] and journal(shield) == []


def test_expired_and_future_approvals_are_refused(shield, approver):
    past = datetime.now(UTC) - timedelta(hours=1)
    refused(
        run(shield, "echo", {}, "t1", approver.v1("echo", {}, issued_at=past, ttl_s=60)),
        "approval_expired",
        "expired",
    )
    future = datetime.now(UTC) + timedelta(hours=1)
    refused(
        run(shield, "echo", {}, "t2", approver.v1("echo", {}, issued_at=future)),
        "approval_not_yet_valid",
        "not yet valid",
    )
    old = int(past.timestamp())
    refused(
        run(shield, "echo", {}, "t3", approver.v2("echo", {}, iat=old, ttl_s=60)),
        "approval_expired",
        "expired",
    )
    soon = int(future.timestamp())
    refused(
        run(shield, "echo", {}, "t4", approver.v2("echo", {}, nbf=soon)),
        "approval_not_yet_valid",
        "not yet valid",
    )
    assert stored_rows(shield) == []


def test_clock_skew_leeway_applies(make_client, approver):
    client = make_client(**approver.settings(clock_skew_s=600))
    expired_a_minute_ago = datetime.now(UTC) - timedelta(seconds=120)
    artifact = approver.v1("echo", {}, issued_at=expired_a_minute_ago, ttl_s=60)
    assert run(client, "echo", {}, "skew", artifact).status_code == 200


def test_tenant_must_match_when_configured(make_client, approver):
    client = make_client(**approver.settings(tenant_id="acme"))
    refused(
        run(client, "echo", {}, "x1", approver.v1("echo", {}, tenant_id="other")),
        "approval_tenant_mismatch",
        "Tenant mismatch",
    )
    refused(
        run(client, "echo", {}, "x2", approver.v2("echo", {}, tenant_id="other")),
        "approval_tenant_mismatch",
        "Tenant mismatch",
    )
    assert (
        run(client, "echo", {}, "x3", approver.v2("echo", {}, tenant_id="acme")).status_code == 200
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_one_approval_backs_one_execution(shield, approver, version):
    artifact = getattr(approver, version)("probe.bump", {"note": "one"})
    first = run(shield, "probe.bump", {"note": "one"}, "first", artifact)
    assert first.status_code == 200
    refused(run(shield, "probe.bump", {"note": "one"}, "second", artifact), "approval_already_used")
    assert len(journal(shield)) == 1 and len(stored_rows(shield)) == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_replay_with_the_same_approval_works_even_after_it_expired(
    shield, approver, version, monkeypatch
):
    artifact = getattr(approver, version)("probe.bump", {"note": "r"}, ttl_s=60)
    first = run(shield, "probe.bump", {"note": "r"}, "replay", artifact).json()
    later = datetime.now(UTC) + timedelta(days=1)
    monkeypatch.setattr(engine_module, "utc_now", lambda: later)
    again = run(shield, "probe.bump", {"note": "r"}, "replay", artifact)
    assert again.status_code == 200 and as_replay(again.json()) == {**first, "replayed": True}
    # but the expired approval cannot back anything new
    refused(run(shield, "probe.bump", {"note": "r"}, "fresh", artifact), "approval_expired")
    assert len(journal(shield)) == 1


def test_same_nonce_and_request_with_another_approval_is_nonce_reused(shield, approver):
    run(shield, "echo", {}, "dup", approver.v1("echo", {}))
    response = run(shield, "echo", {}, "dup", approver.v1("echo", {}))
    assert response.status_code == 422 and response.json()["code"] == "nonce_reused"


def test_v2_nonce_and_audience_binding(make_client, approver):
    client = make_client(**approver.settings(service_id="openexec-prod"))
    refused(
        run(client, "echo", {}, "n-a", approver.v2("echo", {}, nonce="n-b")),
        "approval_nonce_mismatch",
    )
    refused(
        run(client, "echo", {}, "n-c", approver.v2("echo", {}, aud="openexec-staging")),
        "approval_audience_mismatch",
    )
    good = approver.v2("echo", {}, nonce="n-d", aud="openexec-prod")
    assert run(client, "echo", {}, "n-d", good).status_code == 200


@pytest.mark.parametrize(
    "artifact", [{}, {"approval_id": "a"}, {"payloadType": "x"}, {"anything": 1}]
)
def test_malformed_artifacts_are_refused(shield, artifact):
    refused(run(shield, "echo", {}, "mal", artifact), "approval_malformed")


def test_control_characters_in_approval_ids_are_malformed(shield, approver):
    for fields in ({"approval_id": "a\x00b"}, {"tenant_id": "acme\x00"}, {"approval_id": "a\nb"}):
        refused(
            run(shield, "echo", {}, "ctl-v1", approver.v1("echo", {}, **fields)),
            "approval_malformed",
        )
        refused(
            run(shield, "echo", {}, "ctl-v2", approver.v2("echo", {}, **fields)),
            "approval_malformed",
        )
    assert stored_rows(shield) == []


def test_key_rotation_accepts_any_configured_key(make_client):
    old, new = Approver(), Approver()
    client = make_client(mode="clawshield", clawshield_public_keys=(old.public_key, new.public_key))
    assert run(client, "echo", {}, "old", old.v1("echo", {})).status_code == 200
    assert run(client, "echo", {}, "new", new.v2("echo", {})).status_code == 200
    refused(
        run(client, "echo", {}, "gone", Approver().v1("echo", {})), "approval_invalid_signature"
    )


def v1_tampered(artifact: dict) -> list[dict]:
    variants = []
    for field, value in artifact.items():
        for replacement in (value[:-1] + ("0" if value[-1] != "0" else "1"), "", None, 7):
            variants.append({**artifact, field: replacement})
        variants.append({k: v for k, v in artifact.items() if k != field})
    return variants


def test_every_tampered_v1_artifact_is_refused_and_nothing_runs(shield, approver):
    artifact = approver.v1("probe.bump", {"note": "t"}, tenant_id="acme")
    for number, variant in enumerate(v1_tampered(artifact)):
        response = run(shield, "probe.bump", {"note": "t"}, f"tamper-{number}", variant)
        assert response.status_code == 403, (variant, response.text)
    assert journal(shield) == [] and stored_rows(shield) == []
    assert run(shield, "probe.bump", {"note": "t"}, "genuine", artifact).status_code == 200


def altered(text: str) -> str:
    """The text with its first character changed, always to a different one."""
    return ("B" if text[0] == "A" else "A") + text[1:]


def test_every_tampered_v2_envelope_is_refused_and_nothing_runs(shield, approver):
    envelope = approver.v2("probe.bump", {"note": "t"})
    variants = []
    for field in ("payloadType", "payload"):
        variants.append({**envelope, field: altered(envelope[field])})
        variants.append({k: v for k, v in envelope.items() if k != field})
    broken = copy.deepcopy(envelope)
    broken["signatures"][0]["sig"] = altered(broken["signatures"][0]["sig"])
    variants += [broken, {**envelope, "signatures": []}]
    for number, variant in enumerate(variants):
        response = run(shield, "probe.bump", {"note": "t"}, f"v2-tamper-{number}", variant)
        assert response.status_code == 403, response.text
    assert journal(shield) == [] and stored_rows(shield) == []


def test_one_approval_backs_one_execution_across_workers(tmp_path, approver):
    """Many nonces race to use one approval against two uvicorn workers: exactly one wins."""
    env = {
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": approver.public_key_pem,
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "files"),
    }
    server = Uvicorn("tests.support.server:app", env, workers=2, log=tmp_path / "uvicorn.log")
    try:
        payload = {"note": "contested", "hold_s": 0.2}
        artifact = approver.v2("probe.bump", payload)
        bodies = [
            {
                "action": "probe.bump",
                "payload": payload,
                "nonce": f"race-{i}",
                "approval_artifact": artifact,
            }
            for i in range(40)
        ]
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(40) as pool:
            responses = list(
                pool.map(lambda b: client.post(f"{server.url}/execute", json=b), bodies)
            )
    finally:
        server.stop()
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(403) == 39
    assert {r.json()["code"] for r in responses if r.status_code == 403} == {
        "approval_already_used"
    }
    assert len((tmp_path / "files" / "journal.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("look_first", [False, True], ids=["reserve first", "look first"])
def test_the_order_of_reserving_and_looking_changes_no_answer(
    shield, approver, look_first, monkeypatch
):
    """The engine reserves a new request before looking it up, or looks first while most
    requests are retries (TakenRate); every answer is the same either way."""
    shield.app.state.engine._taken.mostly = look_first
    artifact = approver.v1("probe.bump", {"note": "a"}, ttl_s=60)
    first = run(shield, "probe.bump", {"note": "a"}, "n1", artifact)
    assert first.status_code == 200 and first.json()["replayed"] is False
    again = run(shield, "probe.bump", {"note": "a"}, "n1", artifact)
    assert again.status_code == 200
    assert as_replay(again.json()) == {**first.json(), "replayed": True}
    other = run(shield, "probe.bump", {"note": "b"}, "n1", approver.v1("probe.bump", {"note": "b"}))
    assert other.status_code == 422 and other.json()["code"] == "nonce_reused"
    refused(run(shield, "probe.bump", {"note": "a"}, "n2", artifact), "approval_already_used")
    later = datetime.now(UTC) + timedelta(days=1)
    monkeypatch.setattr(engine_module, "utc_now", lambda: later)
    expired = run(shield, "probe.bump", {"note": "a"}, "n1", artifact)
    assert expired.status_code == 200 and expired.json() == again.json()
    refused(run(shield, "probe.bump", {"note": "a"}, "n3", artifact), "approval_expired")
    assert len(journal(shield)) == 1 and len(stored_rows(shield)) == 1


def test_taken_rate_looks_first_while_most_requests_are_retries():
    rate = engine_module.TakenRate()
    for _ in range(rate.WINDOW - 1):
        rate.note(True)
    assert rate.mostly is False  # decided once per window
    rate.note(True)
    assert rate.mostly is True
    for taken in [True] * (rate.WINDOW // 2) + [False] * (rate.WINDOW // 2):
        rate.note(taken)
    assert rate.mostly is False  # half is not most


def test_approval_request_is_what_to_sign_and_signing_it_runs_the_request(make_client, approver):
    client = make_client(**approver.settings(tenant_id="acme", service_id="openexec-prod"))
    payload = {"note": "asked", "n": [1, 2.5, "é"]}
    answer = run(client, "echo", payload, "ask-1", None)
    refused(answer, "approval_required")
    asked = answer.json()["approval_request"]
    assert asked["action"] == "echo" and asked["payload"] == payload
    assert asked["nonce"] == "ask-1"
    assert asked["tenant_id"] == "acme" and asked["aud"] == "openexec-prod"
    assert stored_rows(client) == []  # asking reserves nothing

    now = datetime.now(UTC)
    v1 = mint_v1(
        approver.private_key,
        asked["action"],
        asked["payload"],
        approval_id="from-request-v1",
        tenant_id=asked["tenant_id"],
        issued_at=now.isoformat(),
        expires_at=(now + timedelta(minutes=5)).isoformat(),
    )
    assert v1["action_hash"] == asked["v1_action_hash"]
    assert run(client, "echo", payload, "ask-1", v1).status_code == 200

    v2 = mint_v2(
        approver.private_key,
        "echo",
        payload,
        approval_id="from-request-v2",
        tenant_id=asked["tenant_id"],
        nonce="ask-2",
        aud=asked["aud"],
        iat=int(now.timestamp()),
        exp=int(now.timestamp()) + 300,
    )
    body = json.loads(base64.b64decode(v2["payload"]))
    assert body["payload_sha256"] == asked["v2_payload_sha256"]
    assert run(client, "echo", payload, "ask-2", v2).status_code == 200
