"""One exception class per problem code the service answers with (docs/api.md#errors).

Everything the client raises is an ``OpenExecError``, so an agent can catch one type; the
subclasses let it tell a refusal it must show a person (``ApprovalRequired``) from one it can
fix itself (``PayloadInvalid``) without comparing strings. Every instance keeps the whole
problem body, so fields the service adds later are not lost to an older client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

_BY_CODE: dict[str, type[OpenExecError]] = {}


class OpenExecError(Exception):
    """An answer that is not the one asked for, or no answer at all.

    ``status`` and ``code`` are the problem's (None when no answer came); ``problem`` is the
    whole body; ``nonce`` is set when ``execute`` raised it, so the same request can be sent
    again later without any risk of running twice; ``retry_after`` is the ``Retry-After``
    header in seconds, when the service sent one."""

    problem_code: ClassVar[str | None] = None

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        """``class X(OpenExecError, code="...")`` makes X the class for that problem code."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.problem_code = code
            _BY_CODE[code] = cls

    def __init__(
        self,
        status: int | None,
        code: str | None,
        detail: str,
        problem: Mapping[str, Any] | None = None,
        *,
        nonce: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if status is not None else detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem: dict[str, Any] = dict(problem or {})
        self.nonce = nonce
        self.retry_after = retry_after


class ServiceUnreachable(OpenExecError):
    """No answer after every attempt: timeouts or connection errors (the last is the cause).

    An ``execute`` that raises this may or may not have run: send the same request again with
    ``nonce=error.nonce`` to learn which; it will not run twice."""


class UnexpectedResponse(OpenExecError):
    """An error answer that is not problem+json: something between the client and the
    service (a proxy, a load balancer) answered, not OpenExec."""


class ClientDisconnected(OpenExecError, code="client_disconnected"):
    """400: the service saw the request body end early."""


class ApprovalError(OpenExecError):
    """A 403 refusal of the approval; every one carries what an approver must sign."""

    @property
    def approval_request(self) -> dict[str, Any] | None:
        """``action``, ``payload``, ``nonce``, ``tenant_id``, ``aud``, ``request_sha256``,
        ``v1_action_hash`` and ``v2_payload_sha256``: forward it to the approver."""
        return self.problem.get("approval_request")


class ApprovalRequired(ApprovalError, code="approval_required"):
    """403: clawshield mode and no approval was sent."""


class ApprovalMalformed(ApprovalError, code="approval_malformed"):
    """403: the artifact is not a well-formed v1 artifact or v2 envelope."""


class ApprovalInvalidSignature(ApprovalError, code="approval_invalid_signature"):
    """403: no approver key the service trusts verifies the artifact."""


class ApprovalHashMismatch(ApprovalError, code="approval_hash_mismatch"):
    """403: the artifact approves another action or payload."""


class ApprovalTenantMismatch(ApprovalError, code="approval_tenant_mismatch"):
    """403: the artifact's tenant is not the service's."""


class ApprovalNonceMismatch(ApprovalError, code="approval_nonce_mismatch"):
    """403: a v2 approval bound to another nonce."""


class ApprovalAudienceMismatch(ApprovalError, code="approval_audience_mismatch"):
    """403: a v2 approval for another service."""


class ApprovalExpired(ApprovalError, code="approval_expired"):
    """403: the approval's time window has passed."""


class ApprovalNotYetValid(ApprovalError, code="approval_not_yet_valid"):
    """403: the approval's time window has not begun."""


class ApprovalAlreadyUsed(ApprovalError, code="approval_already_used"):
    """403: the approval already backed another execution."""


class ActionNotAllowed(OpenExecError, code="action_not_allowed"):
    """403: the action is installed but not in the service's allow-list."""


class UnknownAction(OpenExecError, code="unknown_action"):
    """404: no action of that name is registered."""


class ReceiptNotFound(OpenExecError, code="receipt_not_found"):
    """404: no execution with that id."""


class ReceiptPending(OpenExecError, code="receipt_pending"):
    """404: the execution is still running, so it has no receipt yet."""


class LedgerPending(OpenExecError, code="ledger_pending"):
    """404: no signed checkpoint covers the execution yet; ask again later."""


class NotFound(OpenExecError, code="not_found"):
    """404: no such route (the client and the service disagree on the API, or the ledger is
    off), tile or receipt bundle."""


class MethodNotAllowed(OpenExecError, code="method_not_allowed"):
    """405: the route exists, the method does not."""


class CheckpointUnknown(OpenExecError, code="checkpoint_unknown"):
    """409: a cosignature for a checkpoint this ledger never signed."""


class ExecutionInProgress(OpenExecError, code="execution_in_progress"):
    """409: the same nonce is still running, and the attempts or the deadline ran out while
    waiting for it; ``retry_after`` says how long its lease has left."""


class RequestTooLarge(OpenExecError, code="request_too_large"):
    """413: the body is over the service's limit."""


class UnsupportedMediaType(OpenExecError, code="unsupported_media_type"):
    """415: the body was not sent as application/json."""


class ValidationFailed(OpenExecError):
    """A 422 that lists what failed validation."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """At most 20 ``{loc, msg, type}``, without the input values."""
        return list(self.problem.get("errors") or [])


class InvalidRequest(ValidationFailed, code="invalid_request"):
    """422: malformed JSON, or a body of the wrong shape."""


class PayloadInvalid(ValidationFailed, code="payload_invalid"):
    """422: the payload fails the action's input model; nothing was reserved."""


class CosignatureMalformed(OpenExecError, code="cosignature_malformed"):
    """422: not a cosigned checkpoint."""


class CosignatureInvalid(OpenExecError, code="cosignature_invalid"):
    """422: no valid line of a listed witness."""


class NonceReused(OpenExecError, code="nonce_reused"):
    """422: the nonce was already used for a different request (or another approval)."""


class InternalError(OpenExecError, code="internal_error"):
    """500: an error the service did not foresee."""


class StorageUnavailable(OpenExecError, code="storage_unavailable"):
    """503: the store is down. Without ``outcome`` nothing ran (and the client retried until
    its attempts or deadline ran out); with it the action ran and its outcome could not be
    recorded, which no retry would change."""

    @property
    def outcome(self) -> dict[str, Any] | None:
        """``{id, status, result, error}``, unsigned, when the action ran."""
        return self.problem.get("outcome")


def problem_error(
    status: int,
    problem: Mapping[str, Any],
    *,
    nonce: str | None = None,
    retry_after: float | None = None,
) -> OpenExecError:
    """The exception for a problem body: its code's class, or ``OpenExecError`` for a code
    this client does not know yet (a newer service)."""
    code = problem.get("code")
    kind = _BY_CODE.get(code, OpenExecError) if isinstance(code, str) else OpenExecError
    detail = problem.get("detail")
    return kind(
        status,
        code if isinstance(code, str) else None,
        detail if isinstance(detail, str) else "",
        problem,
        nonce=nonce,
        retry_after=retry_after,
    )


PROBLEM_CLASSES: Mapping[str, type[OpenExecError]] = _BY_CODE
