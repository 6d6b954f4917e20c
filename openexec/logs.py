"""Log lines: one format (``OPENEXEC_LOG_FORMAT``, text or JSON) for OpenExec's own lines and
uvicorn's, and the ``execution`` event every ``POST /execute`` answer logs.

The app configures logging itself when it is built, in each worker, after uvicorn set up its
loggers and before it serves: so ``uvicorn main:app`` with no log configuration gets the
format too. What it changes is only what nobody else chose: the handlers of uvicorn's loggers
that carry uvicorn's default formatters get ours (their streams and levels stay uvicorn's, so
``--log-level`` and ``--no-access-log`` still apply), a handler goes on the root logger only
when it has none, and the ``openexec`` logger gets uvicorn's level (``info`` by default) only
when none was set. A ``--log-config`` that names other formatters is left alone.

Events carry identifiers and hashes only, never a payload, a result or a secret.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import sys
import time
from json.encoder import encode_basestring_ascii as quoted
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import ColourizedFormatter

from openexec.engine import ExecutionEvent

EVENTS = logging.getLogger("openexec.execution")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Where a line's event name and fields travel on its LogRecord (``extra``); a name no
# LogRecord attribute has.
EVENT = "openexec_event"
FIELDS = "openexec_fields"
# What uvicorn's access lines carry as their arguments, in order.
ACCESS_FIELDS = ("client_addr", "method", "path", "http_version", "status_code")
# The outcomes an operator should look at; every other answer is INFO.
WARNING_STATUSES = frozenset({"timed_out", "indeterminate"})


def configure_logging(log_format: str) -> None:
    """Give uvicorn's default handlers and the root logger the chosen format (module doc)."""
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for name in UVICORN_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler.formatter, ColourizedFormatter | TextFormatter | JsonFormatter):
                handler.setFormatter(formatter)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, ServiceHandler)), None)
    if handler is None and not root.handlers:
        handler = ServiceHandler()
        root.addHandler(handler)
    if handler is not None:
        handler.setFormatter(formatter)
    service = logging.getLogger("openexec")
    if service.level == logging.NOTSET:
        uvicorn_level = logging.getLogger("uvicorn.error").level
        service.setLevel(uvicorn_level or logging.INFO)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's own logging configuration with this format's formatter: what ``openexec
    serve`` gives uvicorn, so that the lines of its supervisor, which never loads the app,
    are in the format too. An unknown format gets text; the workers then refuse it."""
    config = copy.deepcopy(LOGGING_CONFIG)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    factory = {"()": f"{formatter.__module__}.{formatter.__qualname__}"}
    config["formatters"] = {name: dict(factory) for name in config["formatters"]}
    return config


class ServiceHandler(logging.StreamHandler):
    """The root logger's handler when the operator configured none: standard error."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)


def log_execution(event: ExecutionEvent) -> None:
    """The ``execution`` event of one answer: an outcome (new or replayed) or a refusal. The
    fields are built only when the level lets the line through."""
    warn = event.status in WARNING_STATUSES or event.http_status >= 500
    level = logging.WARNING if warn else logging.INFO
    if not EVENTS.isEnabledFor(level):
        return
    fields: dict[str, Any] = {"exec_id": event.exec_id, "action": event.action}
    if event.code is None:
        fields["status"] = event.status
        fields["error_code"] = event.error_code
    else:
        fields["code"] = event.code
        fields["http_status"] = event.http_status
    fields["duration_ms"] = round(event.duration_s * 1000, 3)
    fields["tenant_id"] = event.tenant_id
    fields["approval_id"] = event.approval_id
    fields["replayed"] = event.replayed
    EVENTS.log(level, "execution", extra={EVENT: "execution", FIELDS: fields})


def rfc3339(record: logging.LogRecord) -> str:
    """The record's time in UTC, RFC 3339 with milliseconds."""
    return f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z"


@functools.lru_cache(maxsize=4)  # lines come many a second: strftime once a second, not a line
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _shown(value: Any) -> str:
    """A field's value as JSON (the event fields are strings, numbers, booleans or null);
    the C string encoder, as a line has several fields."""
    if isinstance(value, str):
        return quoted(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger> <message>``, an event's fields after the message as
    ``name=<JSON value>``: quoted, so a field (a requested action name) cannot forge a line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, FIELDS, None)
        if not fields:
            return line
        shown = " ".join(f"{name}={_shown(value)}" for name, value in fields.items())
        return f"{line} {shown}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``, ``pid`` (the
    worker's), then an event's name and fields, uvicorn's access fields, or the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": rfc3339(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        event = getattr(record, EVENT, None)
        if event is not None:
            line["event"] = event
            line.update(getattr(record, FIELDS))
        elif (
            record.name == "uvicorn.access"
            and isinstance(record.args, tuple)
            and len(record.args) == len(ACCESS_FIELDS)
        ):
            line.update(zip(ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)  # ASCII: no character a reader splits lines at
