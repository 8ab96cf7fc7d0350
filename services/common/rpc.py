"""The one place where gRPC meets the domain.

Servicer methods are decorated with `unary`, `server_stream` or `public_unary`. The decorator
reads what the contract declares about the method (its access class and API-key scope,
services/common/access.py), authenticates the caller (unless the method is public or a webhook),
holds it to its plan's request rate, refuses an API key without the declared scope, enforces the
contract's field rules, runs the method, and turns domain errors into a `google.rpc.Status` with
one `ErrorInfo` (plus `BadRequest` for invalid input, `RetryInfo` for a refused rate). A database that cannot be reached is UNAVAILABLE, so callers retry; other
unexpected exceptions are logged and answered INTERNAL without details.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.envoy import REST_STATUS_HEADER
from services.common import errors
from services.common.access import AccessClass, MethodAccess, method_access
from services.common.auth import Principal, TokenVerifier
from services.common.rate_limits import PrincipalRateLimiter
from services.common.validation import validate

log = logging.getLogger(__name__)

_CODES: dict[type[errors.DomainError], tuple[grpc.StatusCode, int | None]] = {
    errors.InvalidInput: (grpc.StatusCode.INVALID_ARGUMENT, None),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, None),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, None),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, None),
    errors.InsufficientCredits: (grpc.StatusCode.FAILED_PRECONDITION, 402),
    errors.QueueFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    errors.TooManyStreams: (grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    errors.RateLimited: (grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, None),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, None),
}


def unavailable_dependency(error: BaseException) -> errors.Unavailable | None:
    """PostgreSQL unreachable, or its connection lost: UNAVAILABLE (HTTP 503), so that the caller
    retries (Lemon Squeezy redelivers a webhook it did not get a 2xx for), never an INTERNAL
    that reads as a bug, nor a 200 that would lose the delivery. None for anything else."""
    lost = isinstance(
        error,
        (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            ConnectionError,  # refused or reset before SQLAlchemy could wrap it
        ),
    ) or (isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated)
    if not lost:
        return None
    return errors.DatabaseUnavailable("the database is unavailable; retry later")


# Set by the decorators on the handlers they make: whether the handler verifies a bearer.
_AUTHENTICATES = "__pingvas_authenticates__"


class Endpoint:
    """Base of every servicer: what the decorators need to authenticate, authorize, rate-limit
    and report errors. `service` is the contract's service the servicer implements: its methods'
    access declarations are read once, here, and a servicer whose decorators disagree with them
    (a USER method left `public_unary`, a PUBLIC one made `unary`) fails to construct, so the
    process never starts serving it."""

    def __init__(
        self,
        *,
        service: ServiceDescriptor,
        tokens: TokenVerifier,
        error_domain: str,
        rate_limiter: PrincipalRateLimiter,
    ) -> None:
        self.tokens = tokens
        self.error_domain = error_domain
        self.rate_limiter = rate_limiter
        self.access: dict[str, MethodAccess] = {m.name: method_access(m) for m in service.methods}
        for name, access in self.access.items():
            implementation = getattr(type(self), name, None)
            authenticates = getattr(implementation, _AUTHENTICATES, None)
            if authenticates is None:
                # The generated base's method would answer UNIMPLEMENTED to anyone, unchecked.
                raise TypeError(
                    f"{type(self).__name__}.{name} is not implemented: decorate it with one of "
                    "services.common.rpc's decorators"
                )
            if authenticates != access.authenticates_bearer:
                raise TypeError(
                    f"{type(self).__name__}.{name}: the contract declares access class "
                    f"{AccessClass.Name(access.access_class)}, which {'needs' if access.authenticates_bearer else 'forbids'} "
                    f"a verified bearer; decorate it with "
                    f"{'unary or server_stream' if access.authenticates_bearer else 'public_unary'}"
                )


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _status_for(error: errors.DomainError, domain: str) -> tuple[grpc.Status, int | None]:
    code, http_status = next(
        (_CODES[kind] for kind in type(error).__mro__ if kind in _CODES),
        (grpc.StatusCode.FAILED_PRECONDITION, None),
    )
    details = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata))
    details.append(info)
    if isinstance(error, errors.InvalidInput):
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
        details.append(bad_request)
    if isinstance(error, errors.RateLimited):
        retry = any_pb2.Any()
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromMilliseconds(max(1, math.ceil(error.retry_after_seconds * 1000)))
        retry.Pack(retry_info)
        details.append(retry)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status), http_status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.DomainError, domain: str) -> None:
    status, http_status = _status_for(error, domain)
    trailing = tuple(status.trailing_metadata)
    if http_status is not None:
        # The REST edge turns it into the HTTP status, for the one mapping gRPC's table lacks:
        # FAILED_PRECONDITION/INSUFFICIENT_CREDITS -> 402.
        trailing += ((REST_STATUS_HEADER, str(http_status)),)
    await context.abort(status.code, status.details, trailing)


async def _abort_internal(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    incident = errors.new_incident_id()
    log.exception("unexpected error in %s (incident %s)", method, incident)
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (incident {incident})")
    await context.abort(grpc.StatusCode.INTERNAL, status.message)


Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
E = TypeVar("E", bound=Endpoint)


async def _caller(endpoint: Endpoint, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Principal:
    """The verified caller, within its rate (counted before authorization and validation: refused
    and bad requests count too), and allowed to call `method` by its declaration."""
    caller = await endpoint.tokens.verify_authorization_header(_metadata_value(context, "authorization"))
    await endpoint.rate_limiter.admit(caller)
    endpoint.access[method].authorize(caller)
    return caller


@contextlib.asynccontextmanager
async def _answering_errors(
    endpoint: Endpoint, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[None]:
    """Domain errors become their status; anything unexpected becomes INTERNAL, logged."""
    try:
        yield
    except errors.DomainError as error:
        await _abort(context, error, endpoint.error_domain)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as error:
        if (unavailable := unavailable_dependency(error)) is None:
            await _abort_internal(context, method)
        else:
            log.warning("%s: %s (%s)", method, unavailable.message, type(error).__name__)
            await _abort(context, unavailable, endpoint.error_domain)


def unary(
    method: Callable[[E, Req, Principal, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[E, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """An authenticated unary RPC: the method receives the verified caller."""

    @functools.wraps(method)
    async def handler(self: E, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        async with _answering_errors(self, context, method.__name__):
            caller = await _caller(self, context, method.__name__)
            validate(request)
            return await method(self, request, caller, context)
        raise AssertionError("unreachable: context.abort raises")

    setattr(handler, _AUTHENTICATES, True)
    return handler


def public_unary(
    method: Callable[[E, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[E, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """A unary RPC that needs no access token (sign-in, signed URLs, signed webhooks)."""

    @functools.wraps(method)
    async def handler(self: E, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        async with _answering_errors(self, context, method.__name__):
            validate(request)
            return await method(self, request, context)
        raise AssertionError("unreachable: context.abort raises")

    setattr(handler, _AUTHENTICATES, False)
    return handler


def server_stream(
    method: Callable[[E, Req, Principal, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[E, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """An authenticated server-streaming RPC."""

    @functools.wraps(method)
    async def handler(
        self: E, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        async with _answering_errors(self, context, method.__name__):
            caller = await _caller(self, context, method.__name__)
            validate(request)
            async for item in method(self, request, caller, context):
                yield item

    setattr(handler, _AUTHENTICATES, True)
    return handler
