"""Signed receipts: in-toto statements in DSSE envelopes, and their offline verification.

A receipt is evidence, not a log line: only the holder of the receipt key can make one, and
anyone with the public key can check it without asking the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

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

RECEIPT_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:openexec:receipt:v1"
DEFAULT_KEY_NAME = "openexec-receipt-key.pem"
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


def load_receipt_signer(settings: Settings) -> ReceiptSigner:
    """Load the configured receipt key, or create one beside the database on first start."""
    path = settings.receipt_key_path
    if path is None:
        sqlite_path = settings.sqlite_path
        path = (sqlite_path.parent if sqlite_path else Path.cwd()) / DEFAULT_KEY_NAME
        if not path.exists():
            _create_key_file(path)
    private_key = _read_private_key(path, "OPENEXEC_RECEIPT_KEY")
    return ReceiptSigner(private_key, settings.receipt_public_keys)


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _create_key_file(path: Path) -> None:
    """Write a new key with mode 0600; when several workers race, the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".receipt-key-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(private_key_pem(Ed25519PrivateKey.generate()))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker published one first
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read_private_key(path: Path, variable: str) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(
            variable, f"cannot read receipt key {str(path)!r}: {exc.strerror}"
        ) from None
    except (ValueError, TypeError):
        raise ConfigError(
            variable, f"{str(path)!r} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(variable, f"{str(path)!r} is not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str | None = None
    exec_id: str | None = None
    status: str | None = None
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
            return Verdict(False, reason, exec_id, status, receipt)
    return Verdict(True, None, exec_id, status, receipt)


def _result_mismatch(result: Any, expected: str | None) -> str | None:
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except (ValueError, RecursionError):
            return "result is not valid JSON"
    try:
        actual = result_sha256(result)
    except (TypeError, ValueError, RecursionError):
        return "result cannot be canonicalised as JSON"
    if actual != expected:
        return "result does not match the receipt's result_sha256"
    return None
