"""An approval minter written from docs/approvals.md alone, independent of openexec.approvals.

The compatibility tests mint with this and verify with openexec, so a shared misreading of
the format cannot make both sides agree by accident. Only json, hashlib, base64,
cryptography and rfc8785 (for v2's JCS) are used.
"""

from __future__ import annotations

import base64
import hashlib
import json

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

V2_PAYLOAD_TYPE = "application/vnd.openexec.approval.v2+json"


def v1_canonical_text(action: str, payload: dict) -> str:
    """Keys sorted at every level, no spaces, non-ASCII escaped as \\uXXXX."""
    return json.dumps({"action": action, "payload": payload}, sort_keys=True, separators=(",", ":"))


def v1_action_hash(action: str, payload: dict) -> str:
    return hashlib.sha256(v1_canonical_text(action, payload).encode("utf-8")).hexdigest()


def mint_v1(
    key: Ed25519PrivateKey,
    action: str,
    payload: dict,
    *,
    approval_id: str = "appr-1",
    tenant_id: str = "",
    issued_at: str = "2030-01-01T00:00:00Z",
    expires_at: str = "2030-01-01T00:05:00Z",
) -> dict:
    """A v1 artifact; the times are passed as strings so tests control their exact spelling."""
    action_hash = v1_action_hash(action, payload)
    message = (approval_id + tenant_id + action_hash + issued_at + expires_at).encode("utf-8")
    return {
        "approval_id": approval_id,
        "tenant_id": tenant_id,
        "action_hash": action_hash,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "signature": base64.b64encode(key.sign(message)).decode("ascii"),
    }


def v2_claims(
    action: str,
    payload: dict,
    *,
    approval_id: str = "appr-2",
    tenant_id: str | None = None,
    nonce: str | None = None,
    aud: str | None = None,
    iat: int = 1_893_456_000,  # 2030-01-01T00:00:00Z
    nbf: int | None = None,
    exp: int = 1_893_456_300,
) -> dict:
    return {
        "v": 2,
        "approval_id": approval_id,
        "tenant_id": tenant_id,
        "action": action,
        "payload_sha256": hashlib.sha256(rfc8785.dumps(payload)).hexdigest(),
        "nonce": nonce,
        "aud": aud,
        "iat": iat,
        "nbf": nbf,
        "exp": exp,
    }


def dsse_sign(key: Ed25519PrivateKey, body: bytes, payload_type: str = V2_PAYLOAD_TYPE) -> dict:
    """A DSSE envelope: Ed25519 over "DSSEv1 SP len(type) SP type SP len(body) SP body"."""
    type_bytes = payload_type.encode("utf-8")
    pae = b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(body), body)
    raw_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [
            {
                "keyid": hashlib.sha256(raw_public).hexdigest()[:16],
                "sig": base64.b64encode(key.sign(pae)).decode("ascii"),
            }
        ],
    }


def mint_v2(key: Ed25519PrivateKey, action: str, payload: dict, **claims: object) -> dict:
    """A v2 envelope over the JCS form of the claims; keyword arguments go to ``v2_claims``."""
    return dsse_sign(key, rfc8785.dumps(v2_claims(action, payload, **claims)))
