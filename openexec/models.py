"""The API's vocabulary: the request and response models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """The answer to an execution, new or replayed; stored and returned unchanged on replay."""

    id: str
    action: str
    result: dict[str, Any] | None
    approved: bool
    receipt: str
    status: Literal["succeeded", "failed", "timed_out", "indeterminate"]
    error: ErrorInfo | None
    replayed: bool
    nonce: str
    tenant_id: str | None
    request_sha256: str
    receipt_envelope: dict[str, Any]


class PluginSummary(BaseModel):
    name: str
    version: str
    actions: list[str]


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


class VerifyResponse(BaseModel):
    valid: bool
    reason: str | None
    exec_id: str | None = None
    status: str | None = None
