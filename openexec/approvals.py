"""Approval artifacts: verifying (and, for tools and tests, minting) what the approver signed.

Two formats are accepted (docs/approvals.md):

* ``clawshield-v1``: ``{"approval_id", "tenant_id", "action_hash", "issued_at", "expires_at",
  "signature"}``, byte-compatible with what ClawShield issues.
* ``openexec-v2``: a DSSE envelope whose JCS payload binds action, payload hash, tenant,
  nonce and audience.

Decisions where the formats leave room, all failing closed:

* A v1 ``tenant_id`` of ``""`` means "no tenant": the Approval's ``tenant_id`` is None. When a
  tenant is configured, such an approval is a tenant mismatch. In v2 "no tenant" is ``null``,
  so an empty ``tenant_id``, ``nonce`` or ``aud`` there is malformed.
* Unknown fields are rejected as ``approval_malformed``: in v1 and in the DSSE envelope they
  would be unsigned data recorded as part of the approval; in the v2 payload they might carry
  a constraint this version does not know how to enforce.
* Every v2 payload field is required (nullable ones as explicit ``null``) and the payload
  bytes must be exactly the JCS form of what they encode, so one approval has one encoding.
* ``approval_id`` is 1-255 characters and ``tenant_id`` at most 255, like nonces.
* Mismatched v2 ``nonce`` and ``aud`` get their own codes, ``approval_nonce_mismatch`` and
  ``approval_audience_mismatch``. An ``aud`` with no ``OPENEXEC_SERVICE_ID`` configured is
  a mismatch.
* An approval is expired when ``now`` is more than the clock-skew leeway past its expiry,
  and not yet valid when its start is more than the leeway ahead of ``now``.
* Single use holds on what was signed. A v1 signature covers the plain concatenation of five
  fields, so moving the cut between ``approval_id`` and ``tenant_id`` (or between the times)
  keeps it valid while the artifact names another id. An approval is therefore consumed under
  its ``approval_id`` and under ``signed_sha256``, the SHA-256 of the exact bytes its signature
  covers (v1: the concatenation; v2: the DSSE pre-authentication encoding): two artifacts
  with the same signed bytes are one approval, whichever key signed them.
* A v2 envelope carries at most ``MAX_SIGNATURES`` signatures and a payload of at most
  ``MAX_V2_PAYLOAD_BYTES``, refused before any signature is checked: each signature is tried
  against every configured key, so an unauthenticated request could otherwise make the event
  loop verify thousands of times.

``verify`` and ``check_window`` raise nothing but ``ApprovalError``, whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from openexec.signing import (
    MAX_SIGNATURES,
    EnvelopeError,
    canonical_json,
    canonical_json_of_text,
    key_id,
    open_envelope,
    pae,
    request_sha256_of,
    sha256_hex,
    sign_envelope,
)
from openexec.strictjson import BadJson, parse_json

if TYPE_CHECKING:
    from openexec.models import ExecuteRequest
    from openexec.settings import Settings

APPROVAL_V2_TYPE = "application/vnd.openexec.approval.v2+json"
FORMAT_V1 = "clawshield-v1"
FORMAT_V2 = "openexec-v2"
MAX_ID_LENGTH = 255
MAX_UNIX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime can hold
MAX_V2_PAYLOAD_BYTES = 8192  # the claims are ten short fields; 1-2 KB in practice

# Python's json.dumps(sort_keys=True, separators=(",", ":")), ASCII escapes included; made once.
V1_BINDING_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
V1_SIGNED_FIELDS = ("approval_id", "tenant_id", "action_hash", "issued_at", "expires_at")
V1_FIELDS = frozenset({*V1_SIGNED_FIELDS, "signature"})
V2_ENVELOPE_FIELDS = frozenset({"payloadType", "payload", "signatures"})
V2_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})
V2_FIELDS = frozenset(
    {
        "v",
        "approval_id",
        "tenant_id",
        "action",
        "payload_sha256",
        "nonce",
        "aud",
        "iat",
        "nbf",
        "exp",
    }
)


class ApprovalError(Exception):
    """An approval that does not authorise this request; the API answers 403 with ``code``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _malformed(detail: str) -> ApprovalError:
    return ApprovalError("approval_malformed", detail)


@dataclass(frozen=True)
class Approval:
    """A verified approval: what the receipt references and what single-use is keyed on."""

    approval_id: str
    tenant_id: str | None
    format: str
    sha256: str
    signed_sha256: str  # SHA-256 of the bytes the signature covers: consumed with approval_id
    key_id: str
    not_before: datetime | None
    expires_at: datetime
    nonce: str | None


class ApprovalVerifier:
    """Checks approval artifacts against the configured approver keys, tenant and service."""

    def __init__(
        self,
        keys: tuple[Ed25519PublicKey, ...],
        tenant_id: str | None,
        service_id: str | None,
        clock_skew_s: float,
    ) -> None:
        self.keys = tuple(keys)
        self._key_ids = tuple(key_id(key) for key in self.keys)  # named in every Approval
        self.tenant_id = tenant_id
        self.service_id = service_id
        self.clock_skew = timedelta(seconds=clock_skew_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApprovalVerifier:
        return cls(
            keys=settings.clawshield_public_keys,
            tenant_id=settings.tenant_id,
            service_id=settings.service_id,
            clock_skew_s=settings.clock_skew_s,
        )

    def verify(
        self,
        artifact: object,
        action: str,
        payload: dict,
        nonce: str,
        payload_jcs: bytes | None = None,
    ) -> Approval:
        """Step 2: format, signature, binding to action and payload (v2: nonce, aud), tenant.

        The time window is deliberately not checked here: an expired approval must still
        replay a finished execution, so the engine checks it later with ``check_window``.
        ``payload_jcs``, the payload's JCS bytes when the caller has them, saves making them.
        """
        if not isinstance(artifact, dict):
            raise _malformed("The approval artifact must be a JSON object.")
        if V2_ENVELOPE_FIELDS & artifact.keys():
            approval = self._verify_v2(artifact, action, payload, nonce, payload_jcs)
        elif V1_FIELDS & artifact.keys():
            approval = self._verify_v1(artifact, action, payload)
        else:
            raise _malformed(
                "The approval artifact is neither a ClawShield v1 artifact nor a v2 DSSE envelope."
            )
        if self.tenant_id is not None and approval.tenant_id != self.tenant_id:
            raise ApprovalError(
                "approval_tenant_mismatch",
                "Tenant mismatch: the approval is for a different tenant.",
            )
        return approval

    def approval_request(self, request: ExecuteRequest, payload_jcs: bytes) -> dict[str, Any]:
        """What a governance layer signs to approve exactly ``request`` here: the request,
        this service's tenant and audience, and the hashes each format binds (from the
        payload's JCS bytes, made once per request)."""
        return {
            "action": request.action,
            "payload": request.payload,
            "nonce": request.nonce,
            "tenant_id": self.tenant_id,
            "aud": self.service_id,
            "request_sha256": request_sha256_of(request.action, payload_jcs),
            "v1_action_hash": _v1_binding_hash(request.action, request.payload),
            "v2_payload_sha256": sha256_hex(payload_jcs),
        }

    def check_window(self, approval: Approval, now: datetime) -> None:
        """Step 4: reject an approval outside its validity window, allowing clock skew."""
        now = _as_utc(now)
        # Differences of aware datetimes cannot overflow, unlike adding the leeway to a bound.
        if now - approval.expires_at > self.clock_skew:
            raise ApprovalError(
                "approval_expired",
                f"The approval expired at {approval.expires_at.isoformat()}.",
            )
        if approval.not_before is not None and approval.not_before - now > self.clock_skew:
            raise ApprovalError(
                "approval_not_yet_valid",
                f"The approval is not yet valid: it starts at {approval.not_before.isoformat()}.",
            )

    def _verify_v1(self, artifact: dict, action: str, payload: dict) -> Approval:
        _check_fields(artifact, V1_FIELDS, "v1 approval artifact")
        for field in V1_FIELDS:
            if not isinstance(artifact[field], str):
                raise _malformed(f"The v1 approval field {field!r} must be a string.")
        approval_id = _check_id(artifact["approval_id"], "approval_id")
        tenant_id = artifact["tenant_id"]
        if tenant_id:
            _check_id(tenant_id, "tenant_id")
        not_before = _parse_iso_time(artifact["issued_at"], "issued_at")
        expires_at = _parse_iso_time(artifact["expires_at"], "expires_at")
        signature = _decode_base64(artifact["signature"])
        try:
            message = _v1_signed_bytes(artifact)
        except UnicodeEncodeError:
            raise _malformed("The v1 approval fields are not valid Unicode text.") from None
        verified_by = self._verifying_key_id(signature, message)
        if artifact["action_hash"] != _v1_binding_hash(action, payload):
            raise ApprovalError(
                "approval_hash_mismatch",
                "Action hash mismatch: the approval is for a different action or payload.",
            )
        return Approval(
            approval_id=approval_id,
            tenant_id=tenant_id or None,
            format=FORMAT_V1,
            sha256=sha256_hex(canonical_json_of_text(artifact)),  # six checked strings
            signed_sha256=sha256_hex(message),
            key_id=verified_by,
            not_before=not_before,
            expires_at=expires_at,
            nonce=None,
        )

    def _verifying_key_id(self, signature: bytes, message: bytes) -> str:
        """The id of the first configured key that verifies ``signature`` (several allow key
        rotation)."""
        for key, kid in zip(self.keys, self._key_ids, strict=True):
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return kid
        raise ApprovalError(
            "approval_invalid_signature",
            "Invalid signature: no configured approver key verifies this approval.",
        )

    def _verify_v2(
        self, envelope: dict, action: str, payload: dict, nonce: str, payload_jcs: bytes | None
    ) -> Approval:
        _check_fields(envelope, V2_ENVELOPE_FIELDS, "v2 approval envelope")
        signatures = envelope["signatures"]
        if isinstance(signatures, list):
            if len(signatures) > MAX_SIGNATURES:
                raise _malformed(f"A v2 approval carries at most {MAX_SIGNATURES} signatures.")
            for entry in signatures:
                if not isinstance(entry, dict) or not entry.keys() <= V2_SIGNATURE_FIELDS:
                    raise _malformed("Each v2 signature must be an object with 'keyid' and 'sig'.")
                if not isinstance(entry.get("keyid", ""), str):
                    raise _malformed("A v2 signature 'keyid' must be a string.")
        try:
            body, verified_by = open_envelope(
                envelope, APPROVAL_V2_TYPE, self.keys, max_body_bytes=MAX_V2_PAYLOAD_BYTES
            )
        except EnvelopeError as exc:
            if exc.malformed:
                raise _malformed(f"The v2 approval envelope is malformed: {exc.reason}.") from None
            raise ApprovalError(
                "approval_invalid_signature",
                "Invalid signature: no configured approver key verifies this approval.",
            ) from None
        claims = _parse_v2_claims(body)
        if claims["action"] != action:
            raise ApprovalError(
                "approval_hash_mismatch",
                "Action hash mismatch: the approval is for a different action.",
            )
        bound = _v2_payload_hash(payload) if payload_jcs is None else sha256_hex(payload_jcs)
        if claims["payload_sha256"] != bound:
            raise ApprovalError(
                "approval_hash_mismatch",
                "Payload hash mismatch: the approval is for a different payload.",
            )
        if claims["nonce"] is not None and claims["nonce"] != nonce:
            raise ApprovalError(
                "approval_nonce_mismatch",
                "Nonce mismatch: the approval is bound to a different nonce.",
            )
        if claims["aud"] is not None and claims["aud"] != self.service_id:
            raise ApprovalError(
                "approval_audience_mismatch",
                "Audience mismatch: the approval is for a different service.",
            )
        return Approval(
            approval_id=claims["approval_id"],
            tenant_id=claims["tenant_id"],
            format=FORMAT_V2,
            sha256=_artifact_sha256(envelope),
            signed_sha256=sha256_hex(pae(APPROVAL_V2_TYPE, body)),
            key_id=next(
                kid for key, kid in zip(self.keys, self._key_ids, strict=True) if key is verified_by
            ),
            not_before=_from_unix(claims["iat"] if claims["nbf"] is None else claims["nbf"]),
            expires_at=_from_unix(claims["exp"]),
            nonce=claims["nonce"],
        )


def mint_v1(
    private_key: Ed25519PrivateKey,
    action: str,
    payload: dict,
    *,
    tenant_id: str = "",
    ttl_s: float = 300,
    approval_id: str | None = None,
    issued_at: datetime | None = None,
) -> dict:
    """A ClawShield v1 artifact, as ClawShield would issue it."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = _as_utc(issued_at or datetime.now(UTC))
    artifact = {
        "approval_id": approval_id or str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "action_hash": _v1_binding_hash(action, payload),
        "issued_at": issued.isoformat(),
        "expires_at": (issued + timedelta(seconds=ttl_s)).isoformat(),
    }
    artifact["signature"] = base64.b64encode(private_key.sign(_v1_signed_bytes(artifact))).decode()
    return artifact


def mint_v2(
    private_key: Ed25519PrivateKey,
    action: str,
    payload: dict,
    *,
    tenant_id: str | None = None,
    ttl_s: int = 300,
    nonce: str | None = None,
    aud: str | None = None,
    approval_id: str | None = None,
    iat: int | None = None,
    nbf: int | None = None,
) -> dict:
    """An OpenExec v2 approval envelope; ``iat``/``nbf`` are Unix seconds (``iat``: now)."""
    if not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError("ttl_s must be a positive whole number of seconds")
    if "" in (tenant_id, nonce, aud):
        raise ValueError("tenant_id, nonce and aud must be None or non-empty")
    issued = int(datetime.now(UTC).timestamp()) if iat is None else iat
    claims = {
        "v": 2,
        "approval_id": approval_id or str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "action": action,
        "payload_sha256": _v2_payload_hash(payload),
        "nonce": nonce,
        "aud": aud,
        "iat": issued,
        "nbf": nbf,
        "exp": issued + ttl_s,
    }
    keyid = key_id(private_key.public_key())
    return sign_envelope(private_key, keyid, APPROVAL_V2_TYPE, canonical_json(claims))


def _v1_signed_bytes(fields: dict) -> bytes:
    """What a v1 signature covers: the fields concatenated exactly as written, times included."""
    return "".join(fields[name] for name in V1_SIGNED_FIELDS).encode("utf-8")


def _v1_binding_hash(action: str, payload: dict) -> str:
    """The v1 ``action_hash``: exactly Python's default ``json.dumps`` with sorted keys."""
    try:
        text = V1_BINDING_JSON.encode({"action": action, "payload": payload})
    except (TypeError, ValueError, RecursionError):
        raise ApprovalError(
            "approval_hash_mismatch", "Action hash mismatch: the payload cannot be hashed."
        ) from None
    return sha256_hex(text.encode("utf-8"))


def _v2_payload_hash(payload: dict) -> str:
    try:
        return sha256_hex(canonical_json(payload))
    except (ValueError, RecursionError):
        raise ApprovalError(
            "approval_hash_mismatch", "Payload hash mismatch: the payload cannot be hashed."
        ) from None


def _artifact_sha256(artifact: dict) -> str:
    """The approval's identity in receipts: the JCS hash of the artifact as received."""
    try:
        return sha256_hex(canonical_json(artifact))
    except (ValueError, RecursionError):
        raise _malformed("The approval artifact cannot be canonicalised as JSON.") from None


def _check_fields(obj: dict, expected: frozenset[str], what: str) -> None:
    missing = expected - obj.keys()
    if missing:
        raise _malformed(f"The {what} is missing {', '.join(sorted(missing))}.")
    extra = obj.keys() - expected
    if extra:
        names = ", ".join(sorted(repr(name) for name in extra))
        raise _malformed(f"The {what} has unknown fields: {names}.")


def _check_id(value: str, field: str) -> str:
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise _malformed(f"The approval {field} must be 1-{MAX_ID_LENGTH} characters.")
    if not value.isprintable():  # control characters (NUL above all) are no identifier
        raise _malformed(f"The approval {field} must not contain control characters.")
    return value


def _as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive time is taken to be UTC already (docs/approvals.md), never local time."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_iso_time(text: str, field: str) -> datetime:
    """ISO 8601 to aware UTC; a time without an offset is UTC (docs/approvals.md)."""
    try:
        return _as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise _malformed(f"The approval {field} is not an ISO 8601 time.") from None


def _from_unix(seconds: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("The approval signature is not valid base64.") from None


def _parse_v2_claims(body: bytes) -> dict[str, Any]:
    """Parse and type-check the signed v2 payload; it must be exactly its own JCS form."""
    try:
        claims = parse_json(body)
    except BadJson:
        raise _malformed("The v2 approval payload is not valid JSON.") from None
    if not isinstance(claims, dict):
        raise _malformed("The v2 approval payload must be a JSON object.")
    _check_fields(claims, V2_FIELDS, "v2 approval payload")
    if type(claims["v"]) is not int or claims["v"] != 2:
        raise _malformed('The v2 approval payload must have "v": 2.')
    for field in ("approval_id", "action", "payload_sha256"):
        if not isinstance(claims[field], str):
            raise _malformed(f"The v2 approval field {field!r} must be a string.")
    for field in ("tenant_id", "nonce", "aud"):
        if claims[field] is not None and not (isinstance(claims[field], str) and claims[field]):
            raise _malformed(f"The v2 approval field {field!r} must be null or a non-empty string.")
    for field in ("iat", "nbf", "exp"):
        value = claims[field]
        if value is None and field == "nbf":
            continue
        if type(value) is not int or not 0 <= value <= MAX_UNIX_TIME:
            raise _malformed(
                f"The v2 approval field {field!r} must be integer Unix seconds up to year 9999."
            )
    _check_id(claims["approval_id"], "approval_id")
    if claims["tenant_id"] is not None:
        _check_id(claims["tenant_id"], "tenant_id")
    try:
        canonical = canonical_json(claims)
    except ValueError:
        raise _malformed("The v2 approval payload is not representable as JCS.") from None
    if canonical != body:
        raise _malformed("The v2 approval payload is not in JCS canonical form.")
    return claims
