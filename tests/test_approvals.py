"""Approval verification: every rejection code, key rotation, tampering, time windows, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from openexec import approvals
from openexec.approvals import Approval, ApprovalError, ApprovalVerifier
from openexec.settings import Settings, parse_public_keys
from tests import approval_helpers as spec

KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
THIRD_KEY = Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
ACTION = "echo"
PAYLOAD = {"msg": "hello", "n": 1}
NONCE = "nonce-1"
V1_FIELDS = ["approval_id", "tenant_id", "action_hash", "issued_at", "expires_at", "signature"]
V2_CLAIMS = ["v", "approval_id", "tenant_id", "action", "payload_sha256"]
V2_CLAIMS += ["nonce", "aud", "iat", "nbf", "exp"]
WRONG_TYPES = [None, 1, 1.5, True, [], {}]


def verifier(**overrides: object) -> ApprovalVerifier:
    options: dict = {
        "keys": (KEY.public_key(),),
        "tenant_id": None,
        "service_id": "svc",
        "clock_skew_s": 60,
    }
    options.update(overrides)
    return ApprovalVerifier(**options)


def rejection(artifact: object, *, check: ApprovalVerifier | None = None, **request: object) -> str:
    """Verify an artifact that must fail and return the error code (the detail must be set)."""
    call = {"action": ACTION, "payload": PAYLOAD, "nonce": NONCE, **request}
    with pytest.raises(ApprovalError) as caught:
        (check or verifier()).verify(artifact, **call)
    assert caught.value.detail
    return caught.value.code


def v1(**fields: object) -> dict:
    return spec.mint_v1(KEY, ACTION, PAYLOAD, **fields)


def v2(key: Ed25519PrivateKey = KEY, **claims: object) -> dict:
    return spec.mint_v2(key, ACTION, PAYLOAD, **claims)


def v2_signed_claims(claims: object, key: Ed25519PrivateKey = KEY) -> dict:
    """A correctly signed envelope around any claims: reaches the checks after the signature."""
    try:
        body = rfc8785.dumps(claims)
    except (ValueError, TypeError):
        body = json.dumps(claims).encode()
    return spec.dsse_sign(key, body)


def pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def window(not_before: datetime | None, expires_at: datetime) -> Approval:
    return Approval(
        "id", None, "clawshield-v1", "0" * 64, "1" * 64, "k", not_before, expires_at, None
    )


# --- valid artifacts -------------------------------------------------------------------------


def test_valid_v1_and_v2_verify() -> None:
    assert verifier().verify(v1(), ACTION, PAYLOAD, NONCE).format == "clawshield-v1"
    assert verifier().verify(v2(), ACTION, PAYLOAD, NONCE).format == "openexec-v2"


def test_verify_ignores_the_time_window() -> None:
    """An expired approval must still verify so a finished execution can replay."""
    old = v1(issued_at="2000-01-01T00:00:00Z", expires_at="2000-01-01T00:05:00Z")
    assert verifier().verify(old, ACTION, PAYLOAD, NONCE).approval_id == "appr-1"
    assert verifier().verify(v2(iat=0, exp=1), ACTION, PAYLOAD, NONCE).approval_id == "appr-2"


def test_from_settings() -> None:
    configured = Settings(
        mode="clawshield",
        clawshield_public_keys=(KEY.public_key(),),
        tenant_id="acme",
        service_id="svc",
        clock_skew_s=5,
    )
    check = ApprovalVerifier.from_settings(configured)
    assert check.verify(v2(tenant_id="acme", aud="svc"), ACTION, PAYLOAD, NONCE).tenant_id == "acme"
    assert rejection(v2(tenant_id="other"), check=check) == "approval_tenant_mismatch"
    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    check.check_window(window(None, expiry), expiry + timedelta(seconds=5))
    with pytest.raises(ApprovalError):
        check.check_window(window(None, expiry), expiry + timedelta(seconds=6))


# --- each rejection code ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "artifact",
    [None, "artifact", 1, 1.5, True, [], [v1()], {}, {"unrelated": 1}],
    ids=repr,
)
def test_not_an_artifact_is_malformed(artifact: object) -> None:
    assert rejection(artifact) == "approval_malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"signature": "not base64!"},
        {"signature": "AAA"},
        {"issued_at": "yesterday"},
        {"expires_at": "2030-13-01T00:00:00Z"},
        {"expires_at": ""},
        {"expires_at": "9999-12-31T23:00:00-05:00"},
        {"approval_id": ""},
        {"approval_id": "x" * 256},
        {"tenant_id": "t" * 256},
        {"approval_id": "\ud800"},
        {"extra": "unsigned"},
    ],
    ids=repr,
)
def test_v1_malformed(changes: dict) -> None:
    assert rejection({**v1(), **changes}) == "approval_malformed"


@pytest.mark.parametrize(
    "envelope_changes",
    [
        {"payloadType": "application/json"},
        {"payload": "%%%"},
        {"signatures": []},
        {"signatures": "sig"},
        {"signatures": [{"keyid": "k", "sig": "%%%"}]},
        {"signatures": [{"keyid": 1, "sig": "AA=="}]},
        {"signatures": [{"sig": "AA==", "extra": 1}]},
        {"signatures": ["sig"]},
        {"extra": "unsigned"},
    ],
    ids=repr,
)
def test_v2_envelope_malformed(envelope_changes: dict) -> None:
    assert rejection({**v2(), **envelope_changes}) == "approval_malformed"


def test_v2_keyid_is_only_a_hint() -> None:
    envelope = v2()
    envelope["signatures"][0]["keyid"] = "not-the-key-id"
    assert verifier().verify(envelope, ACTION, PAYLOAD, NONCE).approval_id == "appr-2"
    del envelope["signatures"][0]["keyid"]
    assert verifier().verify(envelope, ACTION, PAYLOAD, NONCE).approval_id == "appr-2"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe{}",
        '{"v":2}'.encode("utf-16"),
        b"[]",
        b'"claims"',
        b'{"v":NaN}',
        b'{"v":2,"v":2}',
        b"[" * 100_000,
    ],
    ids=lambda body: repr(body[:20]),
)
def test_v2_payload_not_json_object_is_malformed(body: bytes) -> None:
    assert rejection(spec.dsse_sign(KEY, body)) == "approval_malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"v": 1},
        {"v": 3},
        {"v": "2"},
        {"v": True},
        {"approval_id": ""},
        {"approval_id": "x" * 256},
        {"tenant_id": ""},
        {"tenant_id": "t" * 256},
        {"nonce": ""},
        {"aud": ""},
        {"iat": True},
        {"iat": 1.5},
        {"iat": "1893456000"},
        {"iat": None},
        {"exp": None},
        {"exp": -1},
        {"exp": 253_402_300_800},
        {"nbf": False},
        {"nbf": 2**53 + 1},
        {"extra": "field"},
    ],
    ids=repr,
)
def test_v2_claims_malformed(changes: dict) -> None:
    claims = {**spec.v2_claims(ACTION, PAYLOAD), **changes}
    assert rejection(v2_signed_claims(claims)) == "approval_malformed"


def test_v2_claims_must_be_in_jcs_form() -> None:
    claims = spec.v2_claims(ACTION, PAYLOAD)
    assert verifier().verify(v2_signed_claims(claims), ACTION, PAYLOAD, NONCE)
    spaced = json.dumps(claims, sort_keys=True).encode()
    assert rejection(spec.dsse_sign(KEY, spaced)) == "approval_malformed"
    unsorted = json.dumps(claims, separators=(",", ":")).encode()
    assert rejection(spec.dsse_sign(KEY, unsorted)) == "approval_malformed"
    float_version = json.dumps({**claims, "v": 2.0}, sort_keys=True, separators=(",", ":"))
    assert rejection(spec.dsse_sign(KEY, float_version.encode())) == "approval_malformed"


def test_invalid_signature() -> None:
    for artifact in (spec.mint_v1(OTHER_KEY, ACTION, PAYLOAD), v2(OTHER_KEY)):
        with pytest.raises(ApprovalError) as caught:
            verifier().verify(artifact, ACTION, PAYLOAD, NONCE)
        assert caught.value.code == "approval_invalid_signature"
        assert "Invalid signature" in caught.value.detail
        assert rejection(artifact, check=verifier(keys=())) == "approval_invalid_signature"


@pytest.mark.parametrize("fmt", ["v1", "v2"])
@pytest.mark.parametrize(
    "request_changes",
    [
        {"action": "add"},
        {"action": "echo.x"},
        {"payload": {}},
        {"payload": {"msg": "hello", "n": 2}},
        {"payload": {"msg": "hello", "n": 1, "extra": None}},
    ],
    ids=repr,
)
def test_hash_mismatch(fmt: str, request_changes: dict) -> None:
    request = {"action": ACTION, "payload": PAYLOAD, "nonce": NONCE, **request_changes}
    with pytest.raises(ApprovalError) as caught:
        verifier().verify(v1() if fmt == "v1" else v2(), **request)
    assert caught.value.code == "approval_hash_mismatch"
    assert "hash mismatch" in caught.value.detail


@pytest.mark.parametrize(
    ("fmt", "payload"), [("v1", {"x": {1, 2}}), ("v2", {"x": {1, 2}}), ("v2", {"big": 2**60})]
)
def test_unhashable_payload_is_a_hash_mismatch(fmt: str, payload: dict) -> None:
    """A payload the approver could not have hashed cannot be what it approved."""
    assert rejection(v1() if fmt == "v1" else v2(), payload=payload) == "approval_hash_mismatch"


@pytest.mark.parametrize(
    ("artifact", "configured", "expected"),
    [
        (lambda: v1(tenant_id="acme"), "acme", "acme"),
        (lambda: v1(tenant_id="acme"), None, "acme"),
        (lambda: v1(tenant_id=""), None, None),
        (lambda: v2(tenant_id="acme"), "acme", "acme"),
        (lambda: v2(tenant_id="acme"), None, "acme"),
        (lambda: v2(tenant_id=None), None, None),
    ],
)
def test_tenant_accepted(artifact, configured: str | None, expected: str | None) -> None:
    approval = verifier(tenant_id=configured).verify(artifact(), ACTION, PAYLOAD, NONCE)
    assert approval.tenant_id == expected


@pytest.mark.parametrize(
    "artifact",
    [
        lambda: v1(tenant_id="other"),
        lambda: v1(tenant_id=""),
        lambda: v1(tenant_id="ACME"),
        lambda: v2(tenant_id="other"),
        lambda: v2(tenant_id=None),
    ],
)
def test_tenant_mismatch(artifact) -> None:
    with pytest.raises(ApprovalError) as caught:
        verifier(tenant_id="acme").verify(artifact(), ACTION, PAYLOAD, NONCE)
    assert caught.value.code == "approval_tenant_mismatch"
    assert "Tenant mismatch" in caught.value.detail


def test_v2_nonce_binding() -> None:
    assert verifier().verify(v2(nonce=NONCE), ACTION, PAYLOAD, NONCE).nonce == NONCE
    assert verifier().verify(v2(nonce=None), ACTION, PAYLOAD, "any").nonce is None
    assert rejection(v2(nonce=NONCE), nonce="other") == "approval_nonce_mismatch"


def test_v2_audience_binding() -> None:
    assert verifier(service_id="svc").verify(v2(aud="svc"), ACTION, PAYLOAD, NONCE)
    assert verifier(service_id=None).verify(v2(aud=None), ACTION, PAYLOAD, NONCE)
    assert verifier(service_id="svc").verify(v2(aud=None), ACTION, PAYLOAD, NONCE)
    for service in ("other", None):
        code = rejection(v2(aud="svc"), check=verifier(service_id=service))
        assert code == "approval_audience_mismatch"


# --- time window -----------------------------------------------------------------------------

START = datetime(2030, 1, 1, tzinfo=UTC)
END = datetime(2030, 1, 1, 0, 5, tzinfo=UTC)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize("skew", [0, 60])
def test_check_window_boundaries(skew: int) -> None:
    check = verifier(clock_skew_s=skew)
    leeway = timedelta(seconds=skew)
    for now in (START - leeway, START, END, END + leeway):
        check.check_window(window(START, END), now)
    with pytest.raises(ApprovalError) as caught:
        check.check_window(window(START, END), END + leeway + TICK)
    assert caught.value.code == "approval_expired"
    assert "expired" in caught.value.detail
    with pytest.raises(ApprovalError) as caught:
        check.check_window(window(START, END), START - leeway - TICK)
    assert caught.value.code == "approval_not_yet_valid"
    assert "not yet valid" in caught.value.detail


def test_check_window_without_start_and_with_naive_now() -> None:
    check = verifier(clock_skew_s=0)
    check.check_window(window(None, END), datetime(1970, 1, 1, tzinfo=UTC))
    check.check_window(window(START, END), datetime(2030, 1, 1, 0, 5))
    with pytest.raises(ApprovalError):
        check.check_window(window(START, END), datetime(2030, 1, 1, 0, 5, 1))


def test_check_window_on_verified_artifacts() -> None:
    check = verifier(clock_skew_s=10)
    for artifact in (v1(), v2(), v2(nbf=1_893_456_100)):
        approval = check.verify(artifact, ACTION, PAYLOAD, NONCE)
        check.check_window(approval, approval.not_before)
        with pytest.raises(ApprovalError) as caught:
            check.check_window(approval, approval.not_before - timedelta(seconds=11))
        assert caught.value.code == "approval_not_yet_valid"
        with pytest.raises(ApprovalError) as caught:
            check.check_window(approval, END + timedelta(seconds=11))
        assert caught.value.code == "approval_expired"


def test_check_window_at_the_edges_of_time() -> None:
    far = window(datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    verifier(clock_skew_s=0).check_window(far, datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(ApprovalError):
        verifier(clock_skew_s=0).check_window(window(None, START), datetime.max.replace(tzinfo=UTC))


# --- key rotation ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_key_rotation(fmt: str) -> None:
    keys = parse_public_keys(pem(KEY) + pem(OTHER_KEY))
    assert len(keys) == 2
    check = verifier(keys=keys)
    mint = spec.mint_v1 if fmt == "v1" else spec.mint_v2
    for key in (OTHER_KEY, KEY):  # each approval names the key that verified it
        approval = check.verify(mint(key, ACTION, PAYLOAD), ACTION, PAYLOAD, NONCE)
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert approval.key_id == hashlib.sha256(raw).hexdigest()[:16]
    code = rejection(mint(THIRD_KEY, ACTION, PAYLOAD), check=check)
    assert code == "approval_invalid_signature"


# --- tampering -------------------------------------------------------------------------------


def _v1_variants() -> list[tuple[str, dict]]:
    original = v1(tenant_id="acme")
    variants = []
    for field in V1_FIELDS:
        changed = dict(original)
        changed[field] = original[field][:-1] + ("0" if original[field][-1] != "0" else "1")
        variants.append((f"{field} changed", changed))
        variants.append((f"{field} extended", {**original, field: original[field] + "x"}))
        removed = {name: value for name, value in original.items() if name != field}
        variants.append((f"{field} removed", removed))
        for wrong in WRONG_TYPES:
            variants.append((f"{field} = {wrong!r}", {**original, field: wrong}))
    return variants


@pytest.mark.parametrize(("label", "artifact"), _v1_variants(), ids=[v[0] for v in _v1_variants()])
def test_v1_every_field_tampered_is_rejected(label: str, artifact: dict) -> None:
    rejection(artifact, check=verifier(tenant_id="acme"))


def _flipped_signatures(signature: str) -> list[str]:
    raw = base64.b64decode(signature)
    return [
        base64.b64encode(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]).decode()
        for i in range(len(raw))
    ]


def test_v1_every_signature_byte_flipped_is_rejected() -> None:
    original = v1()
    variants = _flipped_signatures(original["signature"])
    assert len(variants) == 64
    for signature in variants:
        assert rejection({**original, "signature": signature}) == "approval_invalid_signature"


def test_v2_every_signature_and_payload_byte_flipped_is_rejected() -> None:
    original = v2()
    signatures = _flipped_signatures(original["signatures"][0]["sig"])
    assert len(signatures) == 64
    for sig in signatures:
        envelope = {**original, "signatures": [{**original["signatures"][0], "sig": sig}]}
        assert rejection(envelope) == "approval_invalid_signature"
    payloads = _flipped_signatures(original["payload"])
    assert len(payloads) > 100
    for body in payloads:
        assert rejection({**original, "payload": body}) == "approval_invalid_signature"


def test_v2_every_envelope_field_tampered_is_rejected() -> None:
    original = v2()
    for field in ("payloadType", "payload", "signatures"):
        rejection({name: value for name, value in original.items() if name != field})
        for wrong in WRONG_TYPES:
            rejection({**original, field: wrong})
    rejection({**original, "payloadType": original["payloadType"] + "x"})
    rejection({**original, "payload": original["payload"][:-4]})


def _v2_claim_variants() -> list[tuple[str, dict]]:
    """Each claim changed (not re-signed), removed or given a wrong type (both re-signed)."""
    claims = spec.v2_claims(ACTION, PAYLOAD, tenant_id="acme", nonce=NONCE, aud="svc", nbf=1)
    original = spec.dsse_sign(KEY, rfc8785.dumps(claims))
    variants = []
    for field in V2_CLAIMS:
        value = claims[field]
        changed = value + 1 if isinstance(value, int) else value + "x"
        forged = rfc8785.dumps({**claims, field: changed})
        envelope = {**original, "payload": base64.b64encode(forged).decode()}
        variants.append((f"{field} changed", envelope))
        removed = {name: value for name, value in claims.items() if name != field}
        variants.append((f"{field} removed", v2_signed_claims(removed)))
        for wrong in WRONG_TYPES:
            if (wrong is None and field in ("nonce", "aud", "nbf")) or (
                type(wrong) is int and field in ("iat", "nbf", "exp")
            ):
                continue  # a valid value there, merely a different approval
            variants.append((f"{field} = {wrong!r}", v2_signed_claims({**claims, field: wrong})))
    return variants


@pytest.mark.parametrize(
    ("label", "artifact"), _v2_claim_variants(), ids=[v[0] for v in _v2_claim_variants()]
)
def test_v2_every_claim_tampered_is_rejected(label: str, artifact: dict) -> None:
    rejection(artifact, check=verifier(tenant_id="acme"))


def test_v2_resigned_binding_claims_are_rejected() -> None:
    """Even with a valid signature, a claim binding another request is refused."""
    claims = spec.v2_claims(ACTION, PAYLOAD, tenant_id="acme", nonce=NONCE, aud="svc")
    check = verifier(tenant_id="acme")
    expected = {
        "action": "approval_hash_mismatch",
        "payload_sha256": "approval_hash_mismatch",
        "tenant_id": "approval_tenant_mismatch",
        "nonce": "approval_nonce_mismatch",
        "aud": "approval_audience_mismatch",
    }
    for field, code in expected.items():
        artifact = v2_signed_claims({**claims, field: claims[field] + "x"})
        assert rejection(artifact, check=check) == code


# --- fuzzing: nothing but ApprovalError, whatever arrives -------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _only_approval_errors(artifact: object, check: ApprovalVerifier | None = None) -> None:
    check = check or verifier(tenant_id="acme")
    try:
        approval = check.verify(artifact, ACTION, PAYLOAD, NONCE)
    except ApprovalError:
        return
    with contextlib.suppress(ApprovalError):
        check.check_window(approval, datetime(2030, 1, 1, tzinfo=UTC))


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_fuzz_arbitrary_json(artifact: object) -> None:
    _only_approval_errors(artifact)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={field: JSON for field in V1_FIELDS}))
def test_fuzz_v1_shaped(fields: dict) -> None:
    _only_approval_errors(fields)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(V1_FIELDS), st.text()))
def test_fuzz_v1_strings(replacements: dict) -> None:
    """A valid artifact with some fields replaced by arbitrary text."""
    _only_approval_errors({**v1(tenant_id="acme"), **replacements})


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({}, optional={"payloadType": JSON, "payload": JSON, "signatures": JSON})
)
def test_fuzz_v2_envelope_shaped(envelope: dict) -> None:
    _only_approval_errors(envelope)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_v2_signed_bytes(body: bytes) -> None:
    _only_approval_errors(spec.dsse_sign(KEY, body))


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            field: st.one_of(st.just(value), JSON, st.integers(min_value=-(2**64), max_value=2**64))
            for field, value in spec.v2_claims(ACTION, PAYLOAD, tenant_id="acme").items()
        },
    ),
    st.sampled_from([None, "svc"]),
)
def test_fuzz_v2_signed_claims(claims: dict, service: str | None) -> None:
    _only_approval_errors(v2_signed_claims(claims), verifier(tenant_id="acme", service_id=service))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.floats(min_value=0, max_value=1e6),
)
def test_fuzz_check_window(
    start: datetime | None, end: datetime, now: datetime, skew: float
) -> None:
    with contextlib.suppress(ApprovalError):
        verifier(clock_skew_s=skew).check_window(window(start, end), now)


# --- minting guards --------------------------------------------------------------------------


def test_mint_refuses_what_verify_would_reject() -> None:
    with pytest.raises(ValueError):
        approvals.mint_v1(KEY, ACTION, PAYLOAD, ttl_s=0)
    with pytest.raises(ValueError):
        approvals.mint_v2(KEY, ACTION, PAYLOAD, ttl_s=0)
    for field in ("tenant_id", "nonce", "aud"):
        with pytest.raises(ValueError):
            approvals.mint_v2(KEY, ACTION, PAYLOAD, **{field: ""})


def test_minted_artifacts_verify_and_are_valid_now() -> None:
    check = verifier(tenant_id="acme", clock_skew_s=0)
    now = datetime.now(UTC)
    for artifact in (
        approvals.mint_v1(KEY, ACTION, PAYLOAD, tenant_id="acme", issued_at=now),
        approvals.mint_v2(
            KEY, ACTION, PAYLOAD, tenant_id="acme", nonce=NONCE, aud="svc", iat=int(now.timestamp())
        ),
    ):
        approval = check.verify(artifact, ACTION, PAYLOAD, NONCE)
        check.check_window(approval, now)
        assert approval.expires_at - approval.not_before == timedelta(seconds=300)
