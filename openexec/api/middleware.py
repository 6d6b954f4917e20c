"""ASGI middleware around the app: body size limit, and HEAD served as GET."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openexec.api.problems import problem_response
from openexec.engine import ExecutionEvent


class HeadAsGet:
    """Answer HEAD as GET without the body (RFC 9110 9.3.2): FastAPI routes answer only the
    methods they declare, so HEAD on a GET route was a 405. Served as the GET, a HEAD gets the
    same status and headers, Content-Length included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class BodyLimit:
    """Refuse request bodies over the limit with 413, whether declared or streamed. A refused
    ``POST /execute`` is told to ``observe`` like the route's own refusals (its log event and
    metrics), since the route never answers it."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        observe: Callable[[ExecutionEvent], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, started)
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
            await self._refuse(scope, receive, send, started)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        if self.observe is not None and scope["path"] == "/execute":
            duration = time.perf_counter() - started
            self.observe(
                ExecutionEvent(code="request_too_large", http_status=413, duration_s=duration)
            )
        response = problem_response(
            413, "request_too_large", f"The request body exceeds {self.max_bytes} bytes."
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
