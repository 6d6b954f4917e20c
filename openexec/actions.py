"""The vocabulary plugin authors write against: Action, Context, ActionError."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
MAX_ACTION_NAME = 64
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Handler = Callable[[Any, "Context"], dict[str, Any] | Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Action:
    """One action a plugin offers: a name, the handler that runs it, and its input model.

    The payload is validated against ``input`` before anything is reserved, so a
    handler only ever sees a valid ``input`` instance.
    """

    name: str
    handler: Handler
    input: type[BaseModel]
    description: str
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if len(self.name) > MAX_ACTION_NAME or not ACTION_NAME.match(self.name):
            raise ValueError(
                f"action name {self.name!r} must be lowercase dotted words "
                f"(e.g. 'files.read'), at most {MAX_ACTION_NAME} characters"
            )
        if not callable(self.handler):
            raise ValueError(f"action {self.name!r}: handler is not callable")
        if not (isinstance(self.input, type) and issubclass(self.input, BaseModel)):
            raise ValueError(f"action {self.name!r}: input must be a pydantic model class")
        if not self.description or not self.description.strip():
            raise ValueError(f"action {self.name!r}: description is required")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"action {self.name!r}: timeout_s must be positive")


@dataclass(frozen=True)
class Context:
    """What a handler may know about the execution it serves. No database, no network."""

    exec_id: str
    nonce: str
    tenant_id: str | None
    action: str
    mode: str
    started_at: datetime
    logger: logging.Logger


class ActionError(Exception):
    """An expected failure: recorded as a failed execution carrying ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        if not ERROR_CODE.match(code):
            raise ValueError(f"ActionError code {code!r} must be a short snake_case word")
        if not isinstance(message, str):  # it is signed into the receipt as text
            raise TypeError(f"ActionError message must be a string, not {type(message).__name__}")
        super().__init__(message)
        self.code = code
        self.message = message
