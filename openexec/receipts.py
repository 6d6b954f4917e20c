"""Signed receipts: in-toto statements in DSSE envelopes, and their offline verification.

A receipt is evidence, not a log line: only the holder of the receipt key can make one, and
anyone with the public key can check it without asking the service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from openexec.keyfiles import create_key_file, read_private_key
from openexec.keyfiles import private_key_pem as private_key_pem  # where callers found it
from openexec.settings import ConfigError, Settings
from openexec.signing import (
    EnvelopeError,
    canonical_json,
    canonical_json_of_text,
    key_id,
    open_envelope,
    sha256_hex,
    sign_envelope,
)
from openexec.strictjson import BadJson, parse_json

RECEIPT_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:openexec:receipt:v1"
NO_RESULT: Any = object()


class ReceiptSigner:
    """Holds the receipt key, parsed once at startup, and every receipt key this service trusts:
    its own first, then the published keys of other instances or earlier rotations."""

    def __init__(
        self, private_key: Ed25519PrivateKey, published: tuple[Ed25519PublicKey, ...] = ()
    ) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        own = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        others = tuple(
            k for k in published if k.public_bytes(Encoding.Raw, PublicFormat.Raw) != own
        )
        self.trusted_keys: tuple[Ed25519PublicKey, ...] = (self.public_key, *others)

    def sign(self, predicate: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Sign a receipt predicate; return the envelope and the payload's SHA-256 (the receipt)."""
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [
                {
                    "name": f"openexec/execution/{predicate['exec_id']}",
                    "digest": {"sha256": predicate["request_sha256"]},
                }
            ],
            "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }
        body = canonical_json_of_text(statement)  # the predicate holds no numbers
        envelope = sign_envelope(self._private_key, self.key_id, RECEIPT_TYPE, body)
        return envelope, sha256_hex(body)


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def result_sha256(result: dict[str, Any] | None) -> str | None:
    return None if result is None else sha256_hex(canonical_json(result))


def load_receipt_signer(
    settings: Settings, signed_by: frozenset[str] = frozenset()
) -> ReceiptSigner:
    """Load the configured receipt key, or create one beside the database on first start.

    ``signed_by`` holds the ids of the keys the store's receipts may be signed with (the
    store's receipt_keys). A key is never created, nor the service started, while one of them
    is not among the trusted keys: receipts the store holds would stop verifying. Startup
    stops instead, so the operator restores the key (docs/operations.md).
    """
    path = settings.receipt_key_file
    if settings.receipt_key_path is None and not path.exists():
        if signed_by:
            raise ConfigError(
                "OPENEXEC_RECEIPT_KEY",
                f"the store holds receipts signed by key {', '.join(sorted(signed_by))}, "
                f"but the receipt key {str(path)!r} is missing: restore it from the backup "
                "taken with the database (a new key would leave those receipts "
                "unverifiable)",
            )
        create_key_file(path)
    private_key = read_private_key(path, "OPENEXEC_RECEIPT_KEY", "receipt key")
    signer = ReceiptSigner(private_key, settings.receipt_public_keys)
    unknown = sorted(signed_by - {key_id(k) for k in signer.trusted_keys})
    if unknown:
        raise ConfigError(
            "OPENEXEC_RECEIPT_KEY",
            f"the store holds receipts signed by key {', '.join(unknown)}, which is neither "
            f"this receipt key ({signer.key_id}) nor listed in OPENEXEC_RECEIPT_PUBLIC_KEYS: "
            "restore that key, or list its public key if it was rotated out",
        )
    return signer


@dataclass(frozen=True)
class Verdict:
    """What a check of a receipt found. Past the signature, the statement's ``exec_id``,
    ``status``, ``mode`` and ``approval`` (null, or ``{id, format, sha256, key_id}``) are
    reported even when the result given does not match, so a caller can see what was signed."""

    valid: bool
    reason: str | None = None
    exec_id: str | None = None
    status: str | None = None
    mode: str | None = None
    approval: dict[str, Any] | None = None
    receipt: str | None = None


def verify_envelope(
    envelope: Any, keys: tuple[Ed25519PublicKey, ...], result: Any = NO_RESULT
) -> Verdict:
    """Check a receipt envelope offline: a known key signed it, it is well formed, and when
    ``result`` is given (a JSON value, or JSON text) it is the result the receipt names."""
    try:
        body, _ = open_envelope(envelope, RECEIPT_TYPE, keys)
    except EnvelopeError as exc:
        return Verdict(False, exc.reason)
    try:
        statement = json.loads(body)
        predicate = statement["predicate"]
        subject = statement["subject"][0]
        exec_id, status = predicate["exec_id"], predicate["status"]
        signed = {
            "exec_id": exec_id,
            "status": status,
            "mode": predicate["mode"],
            "approval": predicate["approval"],
        }
        consistent = (
            statement["_type"] == STATEMENT_TYPE
            and statement["predicateType"] == PREDICATE_TYPE
            and subject["name"] == f"openexec/execution/{exec_id}"
            and subject["digest"]["sha256"] == predicate["request_sha256"]
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return Verdict(False, "the signed payload is not an OpenExec receipt statement")
    if not consistent:
        return Verdict(False, "the signed payload is not an OpenExec receipt statement")
    receipt = sha256_hex(body)
    if result is not NO_RESULT:
        reason = _result_mismatch(result, predicate.get("result_sha256"))
        if reason:
            return Verdict(False, reason, receipt=receipt, **signed)
    return Verdict(True, None, receipt=receipt, **signed)


def _result_mismatch(result: Any, expected: str | None) -> str | None:
    """Why ``result`` is not the one the receipt names, or None. A result given as JSON text
    is parsed as strictly as a request body: duplicate keys, NaN or a lone surrogate would
    otherwise let two texts that read differently pass as one result."""
    if isinstance(result, str):
        try:
            result = parse_json(result.encode("utf-8", "surrogatepass"))
        except BadJson as exc:
            return f"result is not acceptable JSON text: {exc}"
    try:
        actual = result_sha256(result)
    except (TypeError, ValueError, RecursionError):
        return "result cannot be canonicalised as JSON"
    if actual != expected:
        return "result does not match the receipt's result_sha256"
    return None
