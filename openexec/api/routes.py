"""The routes: small routers whose handlers parse, ask the engine, and translate its answer."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from openexec import __version__
from openexec.api.problems import quote
from openexec.engine import Engine, ExecutionEvent, Problem, validation_errors
from openexec.models import (
    ActionSummary,
    ExecuteRequest,
    ExecuteResponse,
    PluginSummary,
    ReceiptKey,
    VerifyRequest,
    VerifyResponse,
)
from openexec.receipts import NO_RESULT, Verdict, public_key_pem, verify_envelope
from openexec.signing import key_id
from openexec.strictjson import BadJson, parse_json

Model = TypeVar("Model", bound=BaseModel)


service = APIRouter(tags=["service"])
receipts = APIRouter(prefix="/receipts", tags=["receipts"])


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


async def read_model(request: Request, model: type[Model]) -> Model:
    """Parse the body with the bounded JSON parser, then validate it against ``model``."""
    if not is_json(request.headers.getlist("content-type")):
        raise Problem(
            415,
            "unsupported_media_type",
            "Send the request body as application/json (charset=utf-8 is the only parameter).",
        )
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


# RFC 9110's optional white space: str.strip() would also drop control and non-ASCII spaces.
HTTP_WHITESPACE = " \t"


def is_json(content_types: list[str]) -> bool:
    """True for one ``Content-Type: application/json`` whose only parameter, if any, is
    ``charset=utf-8`` (names and values case-insensitive, the value quoted or not; empty
    parameters, as in ``application/json;``, are allowed by RFC 9110 and ignored).

    A browser page may POST text/plain, form and multipart bodies to any site without a CORS
    preflight, so a substring test for "json" (or a missing header taken as JSON) let a page
    drive this API; no page can send application/json cross-site without asking first."""
    if len(content_types) != 1:
        return False
    media_type, *parameters = content_types[0].split(";")
    if media_type.strip(HTTP_WHITESPACE).lower() != "application/json":
        return False
    given = [p.strip(HTTP_WHITESPACE).lower() for p in parameters if p.strip(HTTP_WHITESPACE)]
    return given in ([], ["charset=utf-8"], ['charset="utf-8"'])


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
        "status": "healthy",
        "exec_mode": engine.settings.mode,
        "signature_verification": "enabled" if engine.verifier else "disabled",
        "restriction": "restricted" if registry.restricted else "open",
    }
    if registry.restricted:
        answer["allow_list"] = list(registry.allow_list)
    else:
        answer["warning"] = "No execution allow-list configured"
    answer["plugins"] = [PluginSummary.of(p).model_dump() for p in registry.plugins]
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
    started = time.perf_counter()
    event = ExecutionEvent()
    try:
        body = await read_model(request, ExecuteRequest)
        event.action = body.action
        answer = await engine_of(request).execute(body, event)
    except Problem as refusal:
        event.refused(refusal.code, refusal.status)
        observe_execution(request, event, started)
        raise
    except ClientDisconnect:  # answered by problems.py; a refusal nobody reads, not an error
        event.refused("client_disconnected", 400)
        observe_execution(request, event, started)
        raise
    observe_execution(request, event, started)
    return Response(answer, media_type="application/json")


def observe_execution(request: Request, event: ExecutionEvent, started: float) -> None:
    """Hand the answer's event to its log line and metrics (``create_app``)."""
    event.duration_s = time.perf_counter() - started
    request.app.state.observe_execution(event)


class DirectRoute(APIRoute):
    """A documented route whose endpoint takes the Request and returns the Response itself, so
    FastAPI's per-request dependency solving and response handling are skipped."""

    def get_route_handler(self) -> Any:
        return self.endpoint


def add_execute_route(app: FastAPI) -> None:
    """``POST /execute``, the hot path: on the app itself, first, as a ``DirectRoute``. Each
    router FastAPI walks through and its dependency solving cost this route about 50 µs a
    request, as much as the engine's own bookkeeping (docs/performance.md)."""
    app.router.add_api_route(
        "/execute",
        execute,
        methods=["POST"],
        tags=["execution"],
        response_model=ExecuteResponse,
        openapi_extra=body_schema(ExecuteRequest),
        route_class_override=DirectRoute,
    )


@receipts.get("/keys")
def receipt_keys(request: Request) -> list[ReceiptKey]:
    return trusted_receipt_keys(request)


def trusted_receipt_keys(request: Request) -> list[ReceiptKey]:
    return [
        ReceiptKey(key_id=key_id(key), public_key_pem=public_key_pem(key))
        for key in engine_of(request).signer.trusted_keys
    ]


@receipts.post("/verify", openapi_extra=body_schema(VerifyRequest))
async def verify(request: Request) -> VerifyResponse:
    body = await read_model(request, VerifyRequest)
    engine = engine_of(request)
    keys = engine.signer.trusted_keys
    given = body.result if "result" in body.model_fields_set else NO_RESULT
    if body.envelope is not None:
        if body.exec_id is not None or body.receipt is not None:
            raise Problem(422, "invalid_request", "Send either an envelope or exec_id and receipt.")
        return verdict_response(await checked(body.envelope, keys, given))
    if body.exec_id is None or body.receipt is None or given is NO_RESULT:
        raise Problem(422, "invalid_request", "Send exec_id, receipt and result, or an envelope.")
    execution = await engine.execution(body.exec_id)
    if execution is None or execution["receipt_envelope"] is None:
        return VerifyResponse(valid=False, reason="no finished execution with that exec_id")
    verdict = await checked(json.loads(execution["receipt_envelope"]), keys, given)
    if verdict.valid and verdict.receipt != body.receipt.lower():
        verdict = replace(verdict, valid=False, reason="receipt does not match the stored receipt")
    return verdict_response(verdict)


async def checked(envelope: Any, keys: tuple[Any, ...], given: Any) -> Verdict:
    """``verify_envelope`` on a worker thread: hashing a given result with floats takes
    rfc8785's pure-Python path, about 0.3 s a megabyte, which would stall the event loop."""
    return await to_thread.run_sync(verify_envelope, envelope, keys, given)


def verdict_response(verdict: Verdict) -> VerifyResponse:
    """The verdict with what the signed statement says, in both forms of /receipts/verify."""
    return VerifyResponse(
        valid=verdict.valid,
        reason=verdict.reason,
        exec_id=verdict.exec_id,
        status=verdict.status,
        mode=verdict.mode,
        approval=verdict.approval,
    )


# Routes match in order: these two come after POST /receipts/verify, so that any other method
# on /receipts/verify is a 405 naming POST, not a lookup of an execution called "verify".


@receipts.get("/verify", include_in_schema=False)
def verify_by_get() -> None:
    """GET (and so HEAD) /receipts/verify is a 405, not a receipt lookup: execution ids are
    UUIDs, and a client that GETs the verify route has got the method wrong."""
    raise StarletteHTTPException(405, headers={"Allow": "POST"})


@receipts.get("/{exec_id}")
async def receipt(exec_id: str, request: Request) -> JSONResponse:
    execution = await engine_of(request).execution(exec_id)
    if execution is None:
        raise Problem(404, "receipt_not_found", f"No execution with id {quote(exec_id)}.")
    if execution["receipt_envelope"] is None:
        raise Problem(404, "receipt_pending", "The execution is still running; no receipt yet.")
    return JSONResponse(json.loads(execution["receipt_envelope"]))
