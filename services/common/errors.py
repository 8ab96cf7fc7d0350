"""Domain errors: plain exceptions that know nothing of gRPC.

`services.common.rpc` turns each into a gRPC status with one `google.rpc.ErrorInfo` (and a
`google.rpc.BadRequest` for invalid input), in that one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def new_incident_id() -> str:
    """A short random id that names one unexpected failure. The user sees only the id; the log
    holds the detail under it, so support can find one from the other."""
    return secrets.token_hex(6)


class DomainError(Exception):
    """Base of every error a caller is meant to see. `reason` is UPPER_SNAKE and stable."""

    reason = "DOMAIN_ERROR"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidInput(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}")


class NotFound(DomainError):
    reason = "NOT_FOUND"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class InsufficientCredits(DomainError):
    """The caller's available credits do not cover a generation's hold (HTTP 402 at the edge)."""

    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, *, needed: int, available: int) -> None:
        super().__init__(
            f"insufficient credits: this generation needs {needed}, {available} available",
            metadata={"needed": str(needed), "available": str(available)},
        )
        self.needed = needed
        self.available = available


class QueueFull(DomainError):
    reason = "QUEUE_FULL"


class TooManyGenerations(QueueFull):
    """The caller has as many generations queued or running as its plan allows."""

    reason = "TOO_MANY_GENERATIONS"


class TooManyStreams(DomainError):
    """The caller (or this replica) holds as many open watch streams as its cap allows."""

    reason = "TOO_MANY_STREAMS"


class RateLimited(DomainError):
    """The caller made more requests than its plan's rate allows; `retry_after_seconds` says
    when the window that refused it ends (a RetryInfo at the edge)."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_seconds: float, metadata: Mapping[str, str]) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class IdempotencyKeyReused(FailedPrecondition):
    """A request id sent again with different parameters (Stripe's idempotency_error)."""

    reason = "IDEMPOTENCY_KEY_REUSED"


class Unavailable(DomainError):
    """A dependency outside Pingvas (Lemon Squeezy, SES) failed; the caller may retry."""

    reason = "UPSTREAM_UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    """PostgreSQL could not be reached or dropped the connection; the caller may retry."""

    reason = "DATABASE_UNAVAILABLE"


@dataclass
class Violations:
    """Collects field violations and raises them together, so a caller fixes everything at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidInput(self.items)
