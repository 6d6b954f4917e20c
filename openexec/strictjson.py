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
