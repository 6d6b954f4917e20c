"""Typed answers of the service (docs/api.md), as the client returns them.

Unknown fields are kept (``extra="allow"``) rather than refused, so a newer service does not
break an older client; the models are frozen because they are records of what was answered.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class Signature(_Answer):
    """One DSSE signature: ``keyid`` is a hint, ``sig`` standard base64 Ed25519."""

    keyid: str
    sig: str


class Envelope(_Answer):
    """A DSSE envelope (a receipt). ``as_json()`` gives back the exact JSON object the
    service sent, which is what offline verifiers take."""

    payload_type: str = Field(alias="payloadType")
    payload: str
    signatures: list[Signature]

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class OutcomeError(_Answer):
    """Why an execution did not succeed: an ``ActionError``'s code, or ``timed_out``,
    ``internal_error``, ``indeterminate``."""

    code: str
    message: str


class Execution(_Answer):
    """The answer of ``POST /execute``: a new execution (``replayed`` false) or a replay of
    one. A failed, timed-out or indeterminate execution is an answer too, not an exception:
    it was recorded and receipted."""

    id: str
    action: str
    result: dict[str, Any] | None
    approved: bool
    receipt: str
    status: Literal["succeeded", "failed", "timed_out", "indeterminate"]
    error: OutcomeError | None
    replayed: bool
    ledger_index: int | None = None
    nonce: str
    tenant_id: str | None
    request_sha256: str
    receipt_envelope: Envelope

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class ActionInfo(_Answer):
    """One allowed action of ``GET /actions``; ``input_schema`` is its JSON Schema."""

    name: str
    description: str
    plugin: str
    plugin_version: str
    input_schema: dict[str, Any]


class PluginInfo(_Answer):
    """One pack of ``GET /health``: its actions and settings (secrets redacted)."""

    name: str
    version: str
    actions: list[str]
    settings: dict[str, Any] = {}
    effective: dict[str, Any] | None = None


class Health(_Answer):
    """``GET /health``: how the service is configured."""

    status: str
    exec_mode: Literal["demo", "clawshield"]
    signature_verification: Literal["enabled", "disabled"]
    restriction: Literal["open", "restricted"]
    allow_list: list[str] | None = None
    warning: str | None = None
    plugins: list[PluginInfo]
    receipt_key_id: str
    database: str


class ReceiptKey(_Answer):
    """A receipt public key of ``GET /receipts/keys``."""

    key_id: str
    algorithm: Literal["ed25519"]
    public_key_pem: str
