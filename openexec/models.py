"""The API's vocabulary: the request and response models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from openexec.plugins import PluginInfo

NONCE_PATTERN = r"^[\x21-\x7e]{1,255}$"


class ExecuteRequest(BaseModel):
    """What an agent asks to run."""

    model_config = ConfigDict(extra="forbid", strict=True)

    action: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    nonce: str = Field(pattern=NONCE_PATTERN, description="1–255 printable ASCII, no whitespace")
    approval_artifact: dict[str, Any] | None = None

    @field_validator("payload", mode="before")
    @classmethod
    def _null_payload_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class ErrorInfo(BaseModel):
    code: str
    message: str


class ExecuteResponse(BaseModel):
    """The answer to an execution, new or replayed; stored and returned unchanged on replay,
    but for ``replayed`` and ``ledger_index`` (null until the ledger integrates it)."""

    id: str
    action: str
    result: dict[str, Any] | None
    approved: bool
    receipt: str
    status: Literal["succeeded", "failed", "timed_out", "indeterminate"]
    error: ErrorInfo | None
    replayed: bool
    ledger_index: int | None
    nonce: str
    tenant_id: str | None
    request_sha256: str
    receipt_envelope: dict[str, Any]


class PluginSummary(BaseModel):
    """A loaded plugin, its actions, its effective settings by variable name (secret ones
    shown as ``"**********"``), and what it made of them (``PackSettings.effective``)."""

    name: str
    version: str
    actions: list[str]
    settings: dict[str, Any]
    effective: dict[str, Any]

    @classmethod
    def of(cls, plugin: PluginInfo) -> PluginSummary:
        return cls(
            name=plugin.name,
            version=plugin.version,
            actions=list(plugin.actions),
            settings=dict(plugin.settings),
            effective=dict(plugin.effective),
        )


class ActionSummary(BaseModel):
    name: str
    description: str
    plugin: str
    plugin_version: str
    input_schema: dict[str, Any]


class ReceiptKey(BaseModel):
    key_id: str
    algorithm: Literal["ed25519"] = "ed25519"
    public_key_pem: str


class VerifyRequest(BaseModel):
    """Either ``exec_id``, ``receipt`` and ``result``, or an ``envelope`` (``result`` optional)."""

    model_config = ConfigDict(extra="forbid")

    exec_id: str | None = Field(default=None, max_length=64)
    receipt: str | None = Field(default=None, max_length=128)
    result: Any = None
    envelope: dict[str, Any] | None = None


class ApprovalReference(BaseModel):
    """The approval a receipt names: its id, format, the artifact's SHA-256 and the key id of
    the approver key that verified it."""

    id: str
    format: Literal["clawshield-v1", "openexec-v2"]
    sha256: str
    key_id: str


class VerifyResponse(BaseModel):
    """A verdict, and what the signed statement says (null when no signature verified)."""

    valid: bool
    reason: str | None
    exec_id: str | None = None
    status: str | None = None
    mode: Literal["demo", "clawshield"] | None = None
    approval: ApprovalReference | None = None


class ValidationIssue(BaseModel):
    """One reason a request does not match its model; ``loc`` is the path to the field."""

    loc: list[str | int]
    msg: str
    type: str


class ApprovalRequest(BaseModel):
    """What a governance layer must sign to approve exactly the refused request."""

    action: str
    payload: dict[str, Any]
    nonce: str
    tenant_id: str | None
    aud: str | None
    request_sha256: str
    v1_action_hash: str
    v2_payload_sha256: str


class Problem(BaseModel):
    """An error answer, sent as ``application/problem+json`` (RFC 9457 problem details).

    ``code`` is the machine-readable reason; ``detail`` one human sentence of at most 256
    characters, quoting at most 64 of an input value. ``errors`` lists at most 20 validation
    errors (``invalid_request``, ``payload_invalid``); ``approval_request`` comes with every 403
    ``approval_*``; ``outcome`` with the 503 that reports an execution whose outcome could not
    be recorded."""

    type: str = Field(description='always "about:blank"')
    status: int
    code: str
    detail: str
    errors: list[ValidationIssue] | None = None
    approval_request: ApprovalRequest | None = None
    outcome: dict[str, Any] | None = None
