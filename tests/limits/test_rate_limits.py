"""Per-user request rates (OWASP API4): past its plan's rate a user is answered
RESOURCE_EXHAUSTED / HTTP 429 with ErrorInfo RATE_LIMITED and a RetryInfo saying when its window
ends, across every service; other users are not affected; and the user is admitted again once
the window has passed. The mesh gives Starter 4 requests per 2 seconds (tests/limits/conftest.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.billing.v1 import billing_service_pb2 as billing_pb
from pingvas.billing.v1 import billing_service_pb2_grpc as billing_grpc
from pingvas.user.v1 import user_service_pb2 as user_pb
from pingvas.user.v1 import user_service_pb2_grpc as user_grpc
from redis.asyncio import Redis
from support.generations import wait_for
from support.limits import STARTER_RATE, sign_up
from support.mesh import free_port

from services.common.auth import Principal
from services.common.database import Database
from services.common.plans import database_plans
from services.common.rate_limits import PrincipalRateLimiter, rate_limit_storage

pytestmark = pytest.mark.integration

REQUESTS, WINDOW_SECONDS = STARTER_RATE


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in grpc-status-details-bin"
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert [status.details[0].Unpack(info), status.details[1].Unpack(retry)] == [True, True]
    return info, retry


def first_refusal(call: Callable[[], object]) -> grpc.RpcError:
    """Call until refused. A fixed window may turn over once meanwhile, so the refusal comes
    within two windows' worth of requests."""
    for _ in range(2 * REQUESTS + 1):
        try:
            call()
        except grpc.RpcError as error:
            return error
    raise AssertionError(f"{2 * REQUESTS + 1} requests were all admitted at {REQUESTS}/{WINDOW_SECONDS}s")


def test_past_its_rate_a_user_gets_resource_exhausted_with_retry_info_then_recovers(
    limits_mesh: Any,
) -> None:
    limited, bystander = (
        sign_up(limits_mesh, "rate", plan="starter"),
        sign_up(limits_mesh, "rate-bystander", plan="starter"),
    )
    with grpc.insecure_channel(limits_mesh.gateway_target) as channel:
        users = user_grpc.UserServiceStub(channel)
        billing = billing_grpc.BillingServiceStub(channel)

        def get_user(account: Any = limited) -> object:
            return users.GetUser(
                user_pb.GetUserRequest(name="users/me"), metadata=account.metadata, timeout=30
            )

        error = first_refusal(get_user)
        refused_at = time.monotonic()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, retry = details(error)
        assert info.reason == "RATE_LIMITED"
        assert info.metadata["limit"] == str(REQUESTS)
        delay = retry.retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= WINDOW_SECONDS

        # The allowance is the user's across services, and only the user's.
        with pytest.raises(grpc.RpcError) as billing_refused:
            billing.GetCreditBalance(
                billing_pb.GetCreditBalanceRequest(), metadata=limited.metadata, timeout=30
            )
        assert billing_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        get_user(bystander)

        # Admitted again once the window the RetryInfo named has passed.
        wait_for(lambda: admitted(get_user), within=WINDOW_SECONDS + 30, message="never admitted again")
        assert time.monotonic() - refused_at >= delay - 0.1


def admitted(call: Callable[[], object]) -> bool:
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return False
    return True


def test_rest_callers_get_429_with_retry_info(limits_mesh: Any) -> None:
    account = sign_up(limits_mesh, "rate-rest", plan="starter")
    with httpx.Client(base_url=limits_mesh.gateway_url, timeout=30) as rest:
        replies = [rest.get("/api/v1/users/me", headers=account.headers) for _ in range(2 * REQUESTS + 1)]
    statuses = [reply.status_code for reply in replies]
    assert set(statuses) == {200, 429}, statuses
    refused = next(reply for reply in replies if reply.status_code == 429).json()
    by_type = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in refused["details"]}
    assert by_type["google.rpc.ErrorInfo"]["reason"] == "RATE_LIMITED"
    retry_delay = by_type["google.rpc.RetryInfo"]["retryDelay"]
    assert retry_delay.endswith("s") and 0 < float(retry_delay[:-1]) <= WINDOW_SECONDS


async def test_while_redis_is_unreachable_requests_are_admitted_uncounted(limits_mesh: Any) -> None:
    """Redis only delivers: losing it must not take the API down with it."""
    account = sign_up(limits_mesh, "rate-no-redis", plan="starter")
    database = Database(
        limits_mesh.app_database_url, schema=limits_mesh.schema, system_url=limits_mesh.system_database_url
    )
    try:
        limiter = PrincipalRateLimiter(
            rate_limit_storage(Redis.from_url(f"redis://127.0.0.1:{free_port()}")),
            rates_by_plan={"free": "1/minute", "starter": "1/minute"},
            plan_of=database_plans(database),
        )
        caller = Principal(user_id=uuid.UUID(account.user_id), email=account.email)
        for _ in range(3):
            await limiter.admit(caller)
    finally:
        await database.close()
