"""Canonical JSON, hashes and DSSE envelopes: the primitives approvals and receipts share."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import rfc8785
from anyio import to_thread
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from openexec.strictjson import MAX_SAFE_INTEGER

FIRST_ASTRAL = "\U00010000"
# Signatures one DSSE envelope may carry. Each is tried against every known key (a keyid is
# only a hint), so this bounds the work an unauthenticated envelope can ask for before it is
# refused: at most MAX_SIGNATURES x keys verifications.
MAX_SIGNATURES = 8
# Made once: json.dumps with options builds a new encoder on every call.
SORTED_COMPACT = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes.

    For values without floats whose keys lie in the Basic Multilingual Plane, JCS is exactly
    what the json module writes with sorted keys, compact separators and no ASCII escaping
    (the same escapes; code point order equals UTF-16 order there), and that is many times
    faster. Everything else goes to rfc8785; tests hold the two to the same bytes. Keys are
    checked on the written text, in one pass in C: no character beyond the BMP, no such key.
    """
    fast = _fast_canonical_json(value)
    return rfc8785.dumps(value) if fast is None else fast


async def canonical_json_async(value: Any) -> bytes:
    """``canonical_json`` for code on the event loop. The json module's path runs right here;
    rfc8785's pure-Python one (floats, keys beyond the BMP) takes about 0.3 s for a megabyte
    of floats, so it runs on a worker thread, and other requests are answered meanwhile."""
    fast = _fast_canonical_json(value)
    return await to_thread.run_sync(rfc8785.dumps, value) if fast is None else fast


def _fast_canonical_json(value: Any) -> bytes | None:
    """JCS by the json module, or None when the value needs rfc8785 (see canonical_json)."""
    if _only_strings_and_safe_integers(value):
        text = SORTED_COMPACT.encode(value)
        if text.isascii() or max(text) < FIRST_ASTRAL:
            return _utf8(text)
    return None


def canonical_json_of_text(value: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of an object the caller built from strings, nulls, booleans, lists and
    objects with ASCII keys, and no numbers: the service's own statements and records. The
    json module writes exactly JCS for those (see ``canonical_json``), so the walk that
    looks for numbers is skipped. A lone surrogate fails here as in ``canonical_json``."""
    return _utf8(SORTED_COMPACT.encode(value))


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: not representable, as rfc8785
        raise ValueError("input contains non-UTF-8 codepoints") from exc


def _only_strings_and_safe_integers(value: Any) -> bool:
    """True for JSON made of objects with string keys, arrays, strings, booleans, nulls and
    integers within ±(2**53 - 1): what the json module writes as JCS does."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) or item is None or item is True or item is False:
            continue
        if type(item) is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            return False
        if type(item) is dict:
            if not all(type(key) is str for key in item):
                return False
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
        else:  # floats, and anything rfc8785 should judge
            return False
    return True


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_sha256(action: str, payload: dict[str, Any]) -> str:
    """The identity of a request: SHA-256 of the JCS form of ``{"action", "payload"}``."""
    return request_sha256_of(action, canonical_json(payload))


def request_sha256_of(action: str, payload_jcs: bytes) -> str:
    """``request_sha256`` from the payload's JCS bytes, which a request needs on its own too
    (v2 approvals bind their hash): JCS writes ``{"action": a, "payload": p}`` as exactly
    these parts, "action" sorting before "payload", so the payload is canonicalised once."""
    return sha256_hex(b'{"action":%s,"payload":%s}' % (canonical_json(action), payload_jcs))


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return sha256_hex(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))[:16]


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def sign_envelope(
    private_key: Ed25519PrivateKey, keyid: str, payload_type: str, body: bytes
) -> dict:
    """A DSSE envelope over ``body`` with one Ed25519 signature; ``keyid`` is the key's
    ``key_id``, which a caller signing many envelopes computes once."""
    signature = private_key.sign(pae(payload_type, body))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode()}],
    }


class EnvelopeError(ValueError):
    """A DSSE envelope that is malformed, of the wrong type, or signed by no known key."""

    def __init__(self, reason: str, malformed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed


def open_envelope(
    envelope: Any,
    payload_type: str,
    keys: tuple[Ed25519PublicKey, ...],
    max_body_bytes: int | None = None,
) -> tuple[bytes, Ed25519PublicKey]:
    """Verify a DSSE envelope and return its payload bytes and the key that verified it.

    The signature is checked over the exact payload bytes before anything parses them;
    ``keyid`` is only a hint, so every known key is tried against every signature. The whole
    envelope is checked for shape and bounds (``MAX_SIGNATURES``, ``max_body_bytes``) before
    the first verification.
    """
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope must be a JSON object", malformed=True)
    if envelope.get("payloadType") != payload_type:
        raise EnvelopeError(f"payloadType must be {payload_type!r}", malformed=True)
    body = _b64(envelope.get("payload"), "payload")
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise EnvelopeError(f"payload is over {max_body_bytes} bytes", malformed=True)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise EnvelopeError("envelope has no signatures", malformed=True)
    if len(signatures) > MAX_SIGNATURES:
        raise EnvelopeError(f"envelope has over {MAX_SIGNATURES} signatures", malformed=True)
    decoded = []
    for entry in signatures:
        if not isinstance(entry, dict):
            raise EnvelopeError("each signature must be an object", malformed=True)
        decoded.append(_b64(entry.get("sig"), "sig"))
    message = pae(payload_type, body)
    for signature in decoded:
        for key in keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return body, key
    raise EnvelopeError("Invalid signature: no known key verifies the envelope")


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{field} must be a base64 string", malformed=True)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{field} is not valid base64", malformed=True) from None
