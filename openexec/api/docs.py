"""The API's own documentation: the OpenAPI document with every error answer, and /docs and
/redoc served from an installed package, so they work offline."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from openexec.api.problems import PROBLEM_JSON
from openexec.models import Problem as ProblemBody

# The error answers each route can give, as the OpenAPI document lists them.
ERROR_ANSWERS: dict[tuple[str, str], dict[int, str]] = {
    ("/execute", "post"): {
        403: "Not approved (approval_*, with approval_request) or not allowed (action_not_allowed)",
        404: "No such action (unknown_action)",
        409: "The same nonce is still running (execution_in_progress); see Retry-After",
        413: "The body is over the limit (request_too_large)",
        415: "The body is not application/json (unsupported_media_type)",
        422: "Malformed request, payload or reused nonce (invalid_request, payload_invalid, "
        "nonce_reused), with errors where they apply",
        503: "The store is unavailable (storage_unavailable); outcome when an action ran",
    },
    ("/receipts/{exec_id}", "get"): {
        404: "No such execution (receipt_not_found) or no receipt yet (receipt_pending)",
    },
    ("/receipts/verify", "post"): {
        413: "The body is over the limit (request_too_large)",
        415: "The body is not application/json (unsupported_media_type)",
        422: "Malformed request (invalid_request), with errors where they apply",
    },
}
DOCS_ASSETS = "/docs-assets"


def install_docs(app: FastAPI) -> None:
    """The OpenAPI document with its error answers, and /docs and /redoc working offline."""
    install_error_answers(app)
    app.mount(
        DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # never sent to swagger.io to validate
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def install_error_answers(app: FastAPI) -> None:
    """Add ERROR_ANSWERS and the Problem schema to the OpenAPI document. Done on the document,
    not on the routes: FastAPI lists a route's response models as application/json, and these
    answers are application/problem+json."""
    generate = app.openapi  # caches the document it builds, so this runs once

    def openapi() -> dict[str, Any]:
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in schemas:
            schemas.update(problem_schemas())
            for (path, method), answers in ERROR_ANSWERS.items():
                responses = document["paths"][path][method]["responses"]
                responses.update({str(s): problem_answer(d) for s, d in answers.items()})
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def problem_schemas() -> dict[str, Any]:
    """The Problem schema and the models it refers to, as OpenAPI components."""
    schema = ProblemBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs", {}), "Problem": schema}


def problem_answer(description: str) -> dict[str, Any]:
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {"description": description, "content": content}
