"""Error answers: every refusal leaves as application/problem+json, its echo of input bounded."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from openexec.engine import Problem
from openexec.store import StoreUnavailable

PROBLEM_JSON = "application/problem+json"

# What an error answer may echo of the caller's input: a quoted value or an error's field name
# at most ECHO_LIMIT characters, a detail at most DETAIL_LIMIT, at most ERRORS_LIMIT errors.
ECHO_LIMIT = 64
DETAIL_LIMIT = 256
ERRORS_LIMIT = 20


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def quote(value: str) -> str:
    """Caller input as a detail quotes it: repr'd, at most ECHO_LIMIT characters of it."""
    return repr(shorten(value))


def bounded_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first ERRORS_LIMIT validation errors, names and messages shortened: a ``loc`` can
    name a caller's own field (an unexpected key), and a body of thousands of them would
    otherwise come back whole."""
    return [
        {
            **error,
            "loc": [shorten(part) if isinstance(part, str) else part for part in error["loc"]],
            "msg": shorten(error["msg"], DETAIL_LIMIT),
        }
        for error in errors[:ERRORS_LIMIT]
    ]


def problem_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An application/problem+json answer. The detail and errors are bounded here, for every
    message, including those composed elsewhere that quote input (approval field names)."""
    if "errors" in extra:
        extra["errors"] = bounded_errors(extra["errors"])
    body = {
        "type": "about:blank",
        "status": status,
        "code": code,
        "detail": shorten(detail, DETAIL_LIMIT),
        **extra,
    }
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json; an unexpected one is a bug, but still JSON."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return problem_response(422, "invalid_request", "The request is invalid.", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return problem_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            allowing_head(exc.headers),
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        """The client hung up before sending its whole body: nothing ran and nobody reads the
        answer, so nothing is logged; a traceback per hang-up let anyone flood the log."""
        return problem_response(
            400, "client_disconnected", "The client closed the connection mid-request."
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        """Starlette re-raises the error after this answer, so the server logs its traceback;
        logging it here as well wrote every traceback twice."""
        return problem_response(
            500, "internal_error", "An unexpected error occurred; it is logged."
        )

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return problem_response(503, "storage_unavailable", "The store is unavailable.")


def allowing_head(headers: dict[str, str] | None) -> dict[str, str] | None:
    """A 405's ``Allow`` with HEAD beside GET: HeadAsGet answers HEAD wherever GET is."""
    allowed = (headers or {}).get("Allow", "").split(", ")
    if "GET" not in allowed or "HEAD" in allowed:
        return headers
    return {**(headers or {}), "Allow": ", ".join([*allowed, "HEAD"])}
