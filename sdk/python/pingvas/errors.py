"""Typed exceptions for what the Pingvas API answers, in place of a raw `grpc.RpcError`.

Every error the server sends is a `google.rpc.Status` with one `google.rpc.ErrorInfo` (a stable
UPPER_SNAKE `reason`), a `google.rpc.BadRequest` for invalid input and a `google.rpc.RetryInfo`
for a refused request rate, carried in the `grpc-status-details-bin` trailer. `from_rpc_error`
reads them into the exception that names the case, so callers branch on types and fields:

    try:
        client.generate("a fox", width=60)
    except pingvas.InvalidArgument as error:
        for violation in error.field_violations:
            print(violation.field, violation.description)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its path (e.g. `generation.width`) and what is wrong."""

    field: str
    description: str


class PingvasError(Exception):
    """Base of every error the SDK raises for an API call.

    `code` is the failed call's gRPC status code name (e.g. "NOT_FOUND"; each subclass has its
    own), or GENERATION_FAILED / GENERATION_CANCELLED for a generation that ended without an
    image; `reason` is the ErrorInfo's reason (e.g. "INSUFFICIENT_CREDITS"; empty when the server
    sent none, as for a transport failure) and `metadata` the ErrorInfo's metadata.
    """

    default_code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.reason})" if self.reason else "")


class InvalidArgument(PingvasError):
    """The request is invalid; `field_violations` names each field to fix."""

    default_code = "INVALID_ARGUMENT"

    field_violations: Sequence[FieldViolation] = ()


class NotFound(PingvasError):
    """The resource does not exist, or is not the caller's."""

    default_code = "NOT_FOUND"


class Unauthenticated(PingvasError):
    """The API key or access token is missing, invalid, revoked or expired."""

    default_code = "UNAUTHENTICATED"


class PermissionDenied(PingvasError):
    """The caller may not do this (e.g. an API key without the method's scope)."""

    default_code = "PERMISSION_DENIED"


class FailedPrecondition(PingvasError):
    """The request cannot be done in the resource's current state."""

    default_code = "FAILED_PRECONDITION"


class InsufficientCredits(FailedPrecondition):
    """The account's available credits do not cover the generation (HTTP 402 over REST).

    `needed` and `available` are the credits the generation would hold and those left, when the
    server said so; None otherwise.
    """

    @property
    def needed(self) -> int | None:
        return _as_int(self.metadata.get("needed"))

    @property
    def available(self) -> int | None:
        return _as_int(self.metadata.get("available"))


class ResourceExhausted(PingvasError):
    """A limit was reached: too many live generations, open streams, or requests.

    `retry_after` is how many seconds the server asks the caller to wait before trying again
    (its RetryInfo), or None when it did not say.
    """

    default_code = "RESOURCE_EXHAUSTED"

    retry_after: float | None = None


class RateLimited(ResourceExhausted):
    """More requests than the plan's rate allows; `retry_after` says when the window ends."""


class Unavailable(PingvasError):
    """The service could not be reached or is restarting; the call may be retried."""

    default_code = "UNAVAILABLE"


class DeadlineExceeded(PingvasError):
    """The call did not finish within its deadline."""

    default_code = "DEADLINE_EXCEEDED"


class Internal(PingvasError):
    """An unexpected server failure; the message carries the incident id for support."""

    default_code = "INTERNAL"


class GenerationFailed(PingvasError):
    """`Client.generate`'s generation ended FAILED (code e.g. "INFERENCE_FAILED"); nothing was
    charged. `generation_id` and `incident_id` are for support."""

    def __init__(self, message: str, *, generation_id: str, failure_code: str, incident_id: str) -> None:
        super().__init__(message, code="GENERATION_FAILED", reason=failure_code)
        self.generation_id = generation_id
        self.failure_code = failure_code
        self.incident_id = incident_id


class GenerationCancelled(PingvasError):
    """`Client.generate`'s generation was cancelled (by another call) before its image was made."""

    def __init__(self, message: str, *, generation_id: str) -> None:
        super().__init__(message, code="GENERATION_CANCELLED")
        self.generation_id = generation_id


_BY_CODE: dict[grpc.StatusCode, type[PingvasError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}
_BY_REASON: dict[str, type[PingvasError]] = {
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "RATE_LIMITED": RateLimited,
}


def from_rpc_error(error: grpc.RpcError) -> PingvasError:
    """The typed exception for a failed call (sync or `grpc.aio`), read from its status code,
    message and the rich error details in its trailers."""
    # A failed sync call is also a grpc.Call, an aio one a grpc.aio.AioRpcError: both have these.
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else None) or str(error)
    trailers_of = getattr(error, "trailing_metadata", None)
    status = _rich_status(trailers_of() if callable(trailers_of) else None)
    return _typed(code, message, status)


def _typed(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> PingvasError:
    info = error_details_pb2.ErrorInfo()
    bad_request = error_details_pb2.BadRequest()
    retry_info = error_details_pb2.RetryInfo()
    has_retry_info = False
    for detail in status.details if status is not None else ():
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
        elif detail.Is(retry_info.DESCRIPTOR):
            detail.Unpack(retry_info)
            has_retry_info = True
    kind = _BY_REASON.get(info.reason) or _BY_CODE.get(code, PingvasError)
    error = kind(message, code=code.name, reason=info.reason, domain=info.domain, metadata=info.metadata)
    if isinstance(error, InvalidArgument):
        error.field_violations = [
            FieldViolation(v.field, v.description) for v in bad_request.field_violations
        ]
    if isinstance(error, ResourceExhausted) and has_retry_info:
        error.retry_after = retry_info.retry_delay.ToTimedelta().total_seconds()
    return error


def _rich_status(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    """The google.rpc.Status the server put in the trailers, if any."""
    for key, value in trailing_metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
