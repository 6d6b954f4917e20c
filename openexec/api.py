"""HTTP routes. Small routers; the engine decides, the API only translates."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openexec import __version__
from openexec.engine import Engine, Problem, validation_errors
from openexec.models import (
    ActionSummary,
    ExecuteRequest,
    ExecuteResponse,
    PluginSummary,
    ReceiptKey,
    VerifyRequest,
    VerifyResponse,
)
from openexec.receipts import NO_RESULT, public_key_pem, verify_envelope
from openexec.signing import key_id
from openexec.store import StoreUnavailable
from openexec.strictjson import BadJson, parse_json

Model = TypeVar("Model", bound=BaseModel)

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("openexec.api")

service = APIRouter(tags=["service"])
receipts = APIRouter(prefix="/receipts", tags=["receipts"])


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


async def read_model(request: Request, model: type[Model]) -> Model:
    """Parse the body with the bounded JSON parser, then validate it against ``model``."""
    if "json" not in request.headers.get("content-type", "application/json"):
        raise Problem(415, "unsupported_media_type", "Send the request body as application/json.")
    try:
        return model.model_validate(parse_json(await request.body()))
    except BadJson as exc:
        raise Problem(
            422, "invalid_request", f"The request body is not acceptable: {exc}."
        ) from None
    except ValidationError as exc:
        raise Problem(
            422,
            "invalid_request",
            "The request does not match the expected shape.",
            extra={"errors": validation_errors(exc)},
        ) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI description of a body the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


@service.get("/")
def root() -> dict[str, str]:
    return {"service": "OpenExec", "status": "running", "version": __version__}


@service.get("/health")
def health(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    registry = engine.registry
    answer: dict[str, Any] = {
        "status": "ok",
        "exec_mode": engine.settings.mode,
        "signature_verification": "enabled" if engine.verifier else "disabled",
        "restriction": "restricted" if registry.restricted else "open",
    }
    if registry.restricted:
        answer["allow_list"] = list(registry.allow_list)
    else:
        answer["warning"] = "No execution allow-list configured"
    answer["plugins"] = [plugin_summary(p).model_dump() for p in registry.plugins]
    answer["receipt_key_id"] = engine.signer.key_id
    answer["database"] = engine.store.kind
    return answer


@service.get("/ready")
async def ready(request: Request) -> JSONResponse:
    reason = await engine_of(request).unready_reason()
    if reason:
        return JSONResponse({"ready": False, "reason": reason}, 503)
    return JSONResponse({"ready": True})


@service.get("/version")
def version(request: Request) -> dict[str, Any]:
    return {
        "version": __version__,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "plugins": {p.name: p.version for p in engine_of(request).registry.plugins},
    }


@service.get("/actions")
def actions(request: Request) -> list[ActionSummary]:
    return [
        ActionSummary(
            name=registered.name,
            description=registered.description,
            plugin=registered.plugin_name,
            plugin_version=registered.plugin_version,
            input_schema=registered.input_schema,
        )
        for registered in engine_of(request).registry.allowed_actions()
    ]


async def execute(request: Request) -> Response:
    body = await read_model(request, ExecuteRequest)
    return Response(await engine_of(request).execute(body), media_type="application/json")


class DirectRoute(APIRoute):
    """A documented route whose endpoint takes the Request and returns the Response itself, so
    FastAPI's per-request dependency solving and response handling are skipped."""

    def get_route_handler(self) -> Any:
        return self.endpoint


def add_execute_route(app: FastAPI) -> None:
    """``POST /execute``, the hot path: on the app itself, first, as a ``DirectRoute``. Each
    router FastAPI walks through and its dependency solving cost this route about 50 µs a
    request, as much as the engine's own bookkeeping (bench/README.md)."""
    app.router.add_api_route(
        "/execute",
        execute,
        methods=["POST"],
        tags=["execution"],
        response_model=ExecuteResponse,
        openapi_extra=body_schema(ExecuteRequest),
        responses={403: {}, 404: {}, 409: {}, 413: {}, 422: {}, 503: {}},
        route_class_override=DirectRoute,
    )


@receipts.get("/keys")
def receipt_keys(request: Request) -> list[ReceiptKey]:
    return [
        ReceiptKey(key_id=key_id(key), public_key_pem=public_key_pem(key))
        for key in engine_of(request).signer.trusted_keys
    ]


@receipts.get("/{exec_id}")
async def receipt(exec_id: str, request: Request) -> JSONResponse:
    execution = await engine_of(request).execution(exec_id)
    if execution is None:
        raise Problem(404, "receipt_not_found", f"No execution with id {exec_id!r}.")
    if execution["receipt_envelope"] is None:
        raise Problem(404, "receipt_pending", "The execution is still running; no receipt yet.")
    return JSONResponse(json.loads(execution["receipt_envelope"]))


@receipts.post("/verify", openapi_extra=body_schema(VerifyRequest))
async def verify(request: Request) -> VerifyResponse:
    body = await read_model(request, VerifyRequest)
    engine = engine_of(request)
    keys = engine.signer.trusted_keys
    given = body.result if "result" in body.model_fields_set else NO_RESULT
    if body.envelope is not None:
        if body.exec_id is not None or body.receipt is not None:
            raise Problem(422, "invalid_request", "Send either an envelope or exec_id and receipt.")
        verdict = verify_envelope(body.envelope, keys, given)
        return VerifyResponse(
            valid=verdict.valid,
            reason=verdict.reason,
            exec_id=verdict.exec_id,
            status=verdict.status,
        )
    if body.exec_id is None or body.receipt is None or given is NO_RESULT:
        raise Problem(422, "invalid_request", "Send exec_id, receipt and result, or an envelope.")
    execution = await engine.execution(body.exec_id)
    if execution is None or execution["receipt_envelope"] is None:
        return VerifyResponse(valid=False, reason="no finished execution with that exec_id")
    verdict = verify_envelope(json.loads(execution["receipt_envelope"]), keys, given)
    if verdict.valid and verdict.receipt != body.receipt.lower():
        return VerifyResponse(valid=False, reason="receipt does not match the stored receipt")
    return VerifyResponse(valid=verdict.valid, reason=verdict.reason)


def plugin_summary(plugin: Any) -> PluginSummary:
    return PluginSummary(name=plugin.name, version=plugin.version, actions=list(plugin.actions))


def problem_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "status": status, "code": code, "detail": detail, **extra}
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
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return problem_response(
            500, "internal_error", "An unexpected error occurred; it is logged."
        )

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return problem_response(503, "storage_unavailable", "The store is unavailable.")


class BodyLimit:
    """Refuse request bodies over the limit with 413, whether declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, "request_too_large", f"The request body exceeds {self.max_bytes} bytes."
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
