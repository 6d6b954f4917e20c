"""The API's vocabulary: request and response models, and the bounded JSON parser before them."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_DEPTH = 64
MAX_SAFE_INTEGER = 2**53 - 1  # RFC 8785 (I-JSON) cannot represent larger integers exactly
NONCE_PATTERN = r"^[\x21-\x7e]{1,255}$"


class BadJson(ValueError):
    """The body is not JSON this service accepts; the message says why."""


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded depth,
    integers within ±(2**53-1) and no lone surrogates, so canonical hashing can never fail later."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise BadJson("the body is not UTF-8") from None
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BadJson:
        raise
    except ValueError as exc:
        raise BadJson(f"malformed JSON: {exc}") from None
    _check_bounds(value)
    return value


def _reject_constant(name: str) -> None:
    raise BadJson(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise BadJson("duplicate key in a JSON object")
    return result


def _check_bounds(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_SAFE_INTEGER:
            raise BadJson("integers must lie within ±(2**53-1)")
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadJson("numbers must be finite (1e400 overflows)")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("a string holds an unpaired surrogate escape") from None


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
