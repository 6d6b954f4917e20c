"""Byte-compatibility: artifacts minted from the documented formats verify in openexec.

v1 must match what ClawShield already issues, so its hash input is pinned to hand-written
bytes here rather than to anything computed by the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec import approvals
from openexec.approvals import ApprovalVerifier
from tests import approval_helpers as spec

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PAYLOADS = [
    {},
    {"msg": "h\u00e9"},
    {"text": "日本語", "emoji": "\U0001f600", "mixed": "a\u00e9\u65e5\U0001f600z"},
    {"outer": {"inner": {"deep": [1, 2, {"k": "v"}]}, "b": 1, "a": 2}},
    {"list": [3, 1, 2], "empty_list": [], "empty_obj": {}},
    {"floats": [1.5, 1e-7, 10.0, -0.0, 2.5e20, 123456.789]},
    {"t": True, "f": False, "n": None},
    {"escapes": 'quote " backslash \\ newline \n tab \t ctrl \x01 slash /'},
    {"Z": 1, "a": 2, "_": 3, "é": 4, "10": 5, "9": 6},
]


def verifier(**overrides: object) -> ApprovalVerifier:
    options: dict = {
        "keys": (KEY.public_key(),),
        "tenant_id": None,
        "service_id": None,
        "clock_skew_s": 60,
    }
    options.update(overrides)
    return ApprovalVerifier(**options)


def test_pinned_v1_vector_simple() -> None:
    text = '{"action":"echo","payload":{"msg":"h\\u00e9"}}'
    assert spec.v1_canonical_text("echo", {"msg": "hé"}) == text
    expected = "861d51476e27acde53d0a61e8cbe4d498bc1b94dbdcc4d616a9216ebb371a294"
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == expected
    assert spec.v1_action_hash("echo", {"msg": "hé"}) == expected
    assert approvals.mint_v1(KEY, "echo", {"msg": "hé"})["action_hash"] == expected


def test_pinned_v1_vector_floats_nesting_and_astral_characters() -> None:
    payload = {
        "e": {"y": "日本", "x": "😀"},
        "d": [True, False, None],
        "c": 10.0,
        "b": 1e-7,
        "a": 1.5,
    }
    text = (
        '{"action":"add","payload":{"a":1.5,"b":1e-07,"c":10.0,"d":[true,false,null],'
        '"e":{"x":"\\ud83d\\ude00","y":"\\u65e5\\u672c"}}}'
    )
    expected = "243785c9936610f265cdd2765d518e83423b05a1083c431f60edb138f5d331b9"
    assert spec.v1_canonical_text("add", payload) == text
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == expected
    assert approvals.mint_v1(KEY, "add", payload)["action_hash"] == expected


@pytest.mark.parametrize("payload", PAYLOADS)
def test_spec_minted_v1_verifies(payload: dict) -> None:
    artifact = spec.mint_v1(KEY, "echo", payload, approval_id="id-1", tenant_id="acme")
    approval = verifier(tenant_id="acme").verify(artifact, "echo", payload, "nonce-1")
    assert approval.approval_id == "id-1"
    assert approval.tenant_id == "acme"
    assert approval.format == "clawshield-v1"
    assert approval.nonce is None
    assert approval.sha256 == hashlib.sha256(rfc8785.dumps(artifact)).hexdigest()
    assert approval.key_id == spec.dsse_sign(KEY, b"")["signatures"][0]["keyid"]
    assert approval.not_before == datetime(2030, 1, 1, tzinfo=UTC)
    assert approval.expires_at == datetime(2030, 1, 1, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_openexec_minted_v1_matches_spec_minter_byte_for_byte(payload: dict) -> None:
    """Ed25519 is deterministic, so identical inputs must give identical artifacts."""
    minted = approvals.mint_v1(
        KEY,
        "echo",
        payload,
        approval_id="id-1",
        tenant_id="acme",
        ttl_s=300,
        issued_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    expected = spec.mint_v1(
        KEY,
        "echo",
        payload,
        approval_id="id-1",
        tenant_id="acme",
        issued_at=minted["issued_at"],
        expires_at=minted["expires_at"],
    )
    assert minted == expected
    assert datetime.fromisoformat(minted["issued_at"]) == datetime(2030, 1, 1, tzinfo=UTC)


def test_v1_payload_key_order_does_not_matter() -> None:
    artifact = spec.mint_v1(KEY, "echo", {"a": 1, "b": {"d": 1, "c": 2}})
    verifier().verify(artifact, "echo", {"b": {"c": 2, "d": 1}, "a": 1}, "n")


def test_v1_integer_and_float_payloads_are_distinct() -> None:
    """json.dumps writes 10.0 and 10 differently, so they are different approvals."""
    artifact = spec.mint_v1(KEY, "add", {"a": 10.0})
    verifier().verify(artifact, "add", {"a": 10.0}, "n")
    with pytest.raises(approvals.ApprovalError) as caught:
        verifier().verify(artifact, "add", {"a": 10}, "n")
    assert caught.value.code == "approval_hash_mismatch"


@pytest.mark.parametrize(
    ("issued_at", "expires_at", "start", "end"),
    [
        (
            "2030-01-01T00:00:00",
            "2030-01-01T00:05:00",
            datetime(2030, 1, 1, tzinfo=UTC),
            datetime(2030, 1, 1, 0, 5, tzinfo=UTC),
        ),
        (
            "2030-01-01T02:00:00+02:00",
            "2029-12-31T19:05:00-05:00",
            datetime(2030, 1, 1, tzinfo=UTC),
            datetime(2030, 1, 1, 0, 5, tzinfo=UTC),
        ),
        (
            "2030-01-01T00:00:00.123456Z",
            "2030-01-01T00:05:00.5+00:00",
            datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
            datetime(2030, 1, 1, 0, 5, 0, 500000, tzinfo=UTC),
        ),
        (
            "2030-01-01 05:30:00+05:30",
            "2030-01-01 00:05:00",
            datetime(2030, 1, 1, tzinfo=UTC),
            datetime(2030, 1, 1, 0, 5, tzinfo=UTC),
        ),
    ],
)
def test_v1_time_spellings(issued_at: str, expires_at: str, start: datetime, end: datetime) -> None:
    """Naive times are UTC; offsets are honoured; the signature covers the text as written."""
    artifact = spec.mint_v1(KEY, "echo", {}, issued_at=issued_at, expires_at=expires_at)
    approval = verifier().verify(artifact, "echo", {}, "n")
    assert approval.not_before == start
    assert approval.expires_at == end
    assert approval.not_before.utcoffset().total_seconds() == 0


def test_v1_empty_tenant_means_no_tenant() -> None:
    approval = verifier().verify(spec.mint_v1(KEY, "echo", {}, tenant_id=""), "echo", {}, "n")
    assert approval.tenant_id is None


@pytest.mark.parametrize("payload", PAYLOADS)
def test_spec_minted_v2_round_trip_with_nonce_and_audience(payload: dict) -> None:
    artifact = spec.mint_v2(
        KEY, "echo", payload, approval_id="id-2", tenant_id="acme", nonce="n-1", aud="svc-a"
    )
    check = verifier(tenant_id="acme", service_id="svc-a")
    approval = check.verify(artifact, "echo", payload, "n-1")
    assert approval.approval_id == "id-2"
    assert approval.tenant_id == "acme"
    assert approval.format == "openexec-v2"
    assert approval.nonce == "n-1"
    assert approval.sha256 == hashlib.sha256(rfc8785.dumps(artifact)).hexdigest()
    assert approval.key_id == artifact["signatures"][0]["keyid"]
    assert approval.not_before == datetime(2030, 1, 1, tzinfo=UTC)
    assert approval.expires_at == datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
    for code, nonce, service in [
        ("approval_nonce_mismatch", "n-2", "svc-a"),
        ("approval_audience_mismatch", "n-1", "svc-b"),
    ]:
        with pytest.raises(approvals.ApprovalError) as caught:
            verifier(tenant_id="acme", service_id=service).verify(artifact, "echo", payload, nonce)
        assert caught.value.code == code


def test_v2_nbf_is_the_start_when_set() -> None:
    artifact = spec.mint_v2(KEY, "echo", {}, nbf=1_893_456_100)
    approval = verifier().verify(artifact, "echo", {}, "n")
    assert approval.not_before == datetime(2030, 1, 1, 0, 1, 40, tzinfo=UTC)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_openexec_minted_v2_matches_spec_minter_byte_for_byte(payload: dict) -> None:
    minted = approvals.mint_v2(
        KEY,
        "echo",
        payload,
        approval_id="id-2",
        tenant_id="acme",
        nonce="n-1",
        aud="svc-a",
        iat=1_893_456_000,
        ttl_s=300,
    )
    expected = spec.mint_v2(
        KEY, "echo", payload, approval_id="id-2", tenant_id="acme", nonce="n-1", aud="svc-a"
    )
    assert minted == expected
    claims = json.loads(base64.b64decode(minted["payload"]))
    assert claims == spec.v2_claims(
        "echo", payload, approval_id="id-2", tenant_id="acme", nonce="n-1", aud="svc-a"
    )
