"""``Client``: the blocking client, on ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from openexec.client._core import RETRYABLE_ERRORS, Call, Calls, RetryPolicy
from openexec.client.models import ActionInfo, Envelope, Execution, Health, ReceiptKey

T = TypeVar("T")


class Client:
    """A client of one OpenExec service at ``base_url``.

    ``timeout_s`` bounds each attempt (longer than the slowest action's time limit, or a
    slow action is polled through 409s instead of answered); ``retry`` bounds each call.
    ``http_options`` go to ``httpx.Client`` (headers, TLS, proxies). Close it, or use it as
    a context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        **http_options: Any,
    ) -> None:
        self._calls = Calls(retry or RetryPolicy(), timeout_s)
        self._http = httpx.Client(base_url=base_url, **http_options)

    def _run(self, call: Call[T]) -> T:
        while True:
            timeout = call.begin()
            try:
                response = self._http.request(
                    call.method, call.path, json=call.body, timeout=timeout
                )
            except RETRYABLE_ERRORS as error:
                wait = call.after_error(error)
            else:
                next_wait = call.after_response(response)
                if next_wait is None:
                    return call.finish(response)
                wait = next_wait
            time.sleep(wait)

    def execute(
        self,
        action: str,
        payload: Mapping[str, Any] | None = None,
        nonce: str | None = None,
        approval: Mapping[str, Any] | None = None,
    ) -> Execution:
        """Run ``action`` once, or get the stored answer of the run ``nonce`` already made.

        Without ``nonce`` one is made for this call; each retry sends the same one, so a
        retry is answered with the replay and never runs the action twice. ``approval`` is a
        v1 artifact or v2 envelope (clawshield mode). An error raised carries ``.nonce``:
        sending the same request with it later is just as safe."""
        return self._run(self._calls.execute(action, payload, nonce, approval))

    def actions(self) -> list[ActionInfo]:
        """The actions this service allows, with their JSON Schemas."""
        return self._run(self._calls.actions())

    def health(self) -> Health:
        return self._run(self._calls.health())

    def receipt(self, exec_id: str) -> Envelope:
        """The stored receipt envelope of an execution."""
        return self._run(self._calls.receipt(exec_id))

    def receipt_keys(self) -> list[ReceiptKey]:
        """The public keys that verify this service's receipts, the signing key first."""
        return self._run(self._calls.receipt_keys())

    def ledger_proof(self, exec_id: str) -> str:
        """The execution's tlog-proof against the latest checkpoint, as text; raises
        ``LedgerPending`` until a checkpoint covers it."""
        return self._run(self._calls.ledger_proof(exec_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
