"""What ``Client`` and ``AsyncClient`` share, without any I/O: which requests to send, when to
send one again and after how long, and how to read the answers.

Writing this once is what keeps the two clients' retry rules from drifting apart, and the rule
that matters most lives here: an ``execute`` call picks its nonce once, and every attempt of that
call sends the same body, so a retry is answered with the stored outcome instead of running the
action again.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from openexec.client.errors import (
    OpenExecError,
    ServiceUnreachable,
    UnexpectedResponse,
    problem_error,
)
from openexec.client.models import ActionInfo, Envelope, Execution, Health, ReceiptKey

T = TypeVar("T")

# No answer came, or not a whole one: the request may or may not have reached the service.
# (A connection dropped after the request was sent is a RemoteProtocolError or a ReadError.)
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may keep trying.

    ``attempts`` bounds the requests of one call and ``deadline_s`` its total time; waits
    between attempts grow from ``backoff_s``, doubling, with jitter, up to ``max_delay_s``.
    A ``Retry-After`` is waited as given, but at most ``max_delay_s``: on a 409 the service
    sends the time left on the execution's lease (its time limit plus a grace), the worst
    case, while most executions finish long before, and asking again with the same nonce
    reserves nothing."""

    attempts: int = 8
    deadline_s: float = 120.0
    backoff_s: float = 0.1
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not (self.deadline_s > 0 and self.backoff_s >= 0 and self.max_delay_s >= 0):
            raise ValueError("deadline_s must be positive; backoff_s and max_delay_s not negative")


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds; only the delay-seconds form (the service's) is read."""
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _problem_body(response: httpx.Response) -> dict[str, Any] | None:
    """The problem+json body, or None when the answer is not one."""
    if response.headers.get("content-type", "").split(";")[0].strip() != "application/problem+json":
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@dataclass
class Call(Generic[T]):
    """One client call: the request it sends on every attempt, and its attempts so far."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    policy: RetryPolicy
    timeout_s: float
    body: dict[str, Any] | None = None
    nonce: str | None = None
    clock: Callable[[], float] = time.monotonic
    made: int = 0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def begin(self) -> float:
        """Count an attempt; its timeout is the client's, cut to what is left of the deadline."""
        self.made += 1
        left = self.policy.deadline_s - (self.clock() - self.started)
        return max(0.001, min(self.timeout_s, left))

    def _wait(self, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when there must be none."""
        if self.made >= self.policy.attempts:
            return None
        if retry_after is not None:
            wait = min(retry_after, self.policy.max_delay_s)
        else:
            ceiling = min(self.policy.max_delay_s, self.policy.backoff_s * 2 ** (self.made - 1))
            wait = random.uniform(ceiling / 2, ceiling)
        if self.clock() - self.started + wait >= self.policy.deadline_s:
            return None
        return wait

    def after_error(self, error: Exception) -> float:
        """The wait before trying again after a transport error; raises ``ServiceUnreachable``
        (caused by ``error``) when no attempt is left."""
        wait = self._wait(None)
        if wait is None:
            raise ServiceUnreachable(
                None,
                None,
                f"No answer from the service after {self.made} attempt(s): {error!r}",
                nonce=self.nonce,
            ) from error
        return wait

    def after_response(self, response: httpx.Response) -> float | None:
        """The wait before trying again, or None when ``response`` is final: only a 409
        ``execution_in_progress`` and a 503 that ran nothing are worth asking again."""
        problem = _problem_body(response) or {}
        in_progress = response.status_code == 409 and problem.get("code") == "execution_in_progress"
        nothing_ran = response.status_code == 503 and "outcome" not in problem
        if not (in_progress or nothing_ran):
            return None
        return self._wait(retry_after_seconds(response))

    def finish(self, response: httpx.Response) -> T:
        """The parsed answer, or the exception for an error answer."""
        if response.is_success:
            return self.parse(response)
        raise self.error(response)

    def error(self, response: httpx.Response) -> OpenExecError:
        retry_after = retry_after_seconds(response)
        problem = _problem_body(response)
        if problem is None:
            return UnexpectedResponse(
                response.status_code,
                None,
                f"An answer that is not problem+json: {response.text[:256]!r}",
                nonce=self.nonce,
                retry_after=retry_after,
            )
        return problem_error(
            response.status_code, problem, nonce=self.nonce, retry_after=retry_after
        )


class Calls:
    """Builds the ``Call`` of each client method, with the client's policy and timeout."""

    def __init__(self, policy: RetryPolicy, timeout_s: float) -> None:
        self.policy = policy
        self.timeout_s = timeout_s

    def _get(self, path: str, parse: Callable[[httpx.Response], T]) -> Call[T]:
        return Call("GET", path, parse, self.policy, self.timeout_s)

    def execute(
        self,
        action: str,
        payload: Mapping[str, Any] | None,
        nonce: str | None,
        approval: Mapping[str, Any] | None,
    ) -> Call[Execution]:
        """One nonce for the whole call, made here once: every attempt sends this body."""
        nonce = nonce if nonce is not None else str(uuid.uuid4())
        body: dict[str, Any] = {"action": action, "payload": dict(payload or {}), "nonce": nonce}
        if approval is not None:
            body["approval_artifact"] = dict(approval)
        return Call(
            "POST",
            "/execute",
            lambda r: Execution.model_validate(r.json()),
            self.policy,
            self.timeout_s,
            body=body,
            nonce=nonce,
        )

    def actions(self) -> Call[list[ActionInfo]]:
        return self._get("/actions", lambda r: [ActionInfo.model_validate(a) for a in r.json()])

    def health(self) -> Call[Health]:
        return self._get("/health", lambda r: Health.model_validate(r.json()))

    def receipt(self, exec_id: str) -> Call[Envelope]:
        return self._get(
            f"/receipts/{_segment(exec_id)}", lambda r: Envelope.model_validate(r.json())
        )

    def receipt_keys(self) -> Call[list[ReceiptKey]]:
        return self._get(
            "/receipts/keys", lambda r: [ReceiptKey.model_validate(k) for k in r.json()]
        )

    def ledger_proof(self, exec_id: str) -> Call[str]:
        return self._get(f"/ledger/proof/{_segment(exec_id)}", lambda r: r.text)


def _segment(value: str) -> str:
    """``value`` as one path segment: an id cannot reach another route."""
    return quote(value, safe="")
