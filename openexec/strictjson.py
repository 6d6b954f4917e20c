"""Strict JSON parsing for everything that arrives from outside: request bodies, approval
payloads, CLI input. One parser, so no two places can read the same bytes differently."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64
MAX_SAFE_INTEGER = 2**53 - 1  # RFC 8785 (I-JSON) cannot represent larger integers exactly


class BadJson(ValueError):
    """The body is not JSON this service accepts; the message says why."""


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded depth,
    integers within ±(2**53-1) and no lone surrogates, so canonical hashing can never fail later."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_safe_integer,
            parse_float=_finite_number,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError:
        raise BadJson("the body is not UTF-8") from None
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BadJson:
        raise
    except ValueError as exc:
        raise BadJson(f"malformed JSON: {exc}") from None
    # UTF-8 cannot encode a lone surrogate, so only a \u escape can write one; and nothing
    # nests deeper than its text has brackets. Most bodies need no second look.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_depth_and_text(value)
    return value


def _reject_constant(name: str) -> None:
    raise BadJson(f"{name} is not valid JSON")


def _safe_integer(digits: str) -> int:
    value = int(digits)
    if abs(value) > MAX_SAFE_INTEGER:
        raise BadJson("integers must lie within ±(2**53-1)")
    return value


def _finite_number(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise BadJson("numbers must be finite (1e400 overflows)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise BadJson("duplicate key in a JSON object")
    return result


def _check_depth_and_text(value: Any) -> None:
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


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("a string holds an unpaired surrogate escape") from None
