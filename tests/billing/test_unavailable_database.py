"""A webhook that arrives while PostgreSQL cannot be reached is answered UNAVAILABLE (HTTP 503
at the edge), so that Lemon Squeezy delivers it again, rather than INTERNAL or a 200 that loses
it (issue 9, part 6a). The real billing servicer and domain, over real gRPC, with a database URL
that nothing listens on."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.billing.v1 import billing_service_pb2 as pb
from pingvas.billing.v1 import billing_service_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from services.billing.app import BillingParts, build_billing
from services.billing.servicer import BillingServicer
from services.common.errors import DatabaseUnavailable
from services.common.keyring import token_verifier
from services.common.plans import user_plans
from services.common.rate_limits import principal_rate_limiter
from services.common.rpc import unavailable_dependency
from services.common.settings import DEV_LEMONSQUEEZY_WEBHOOK_SECRET
from services.embedded.process import free_port


@pytest.fixture
async def unreachable_billing(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BillingParts]:
    monkeypatch.delenv("PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET", raising=False)
    nowhere = f"postgresql://pingvas@127.0.0.1:{free_port()}/pingvas"
    parts = build_billing(env="dev", database_url=nowhere, system_database_url=nowhere, db_schema="nowhere")
    yield parts
    await parts.close()


@pytest.fixture
async def billing_channel(unreachable_billing: BillingParts) -> AsyncIterator[grpc.aio.Channel]:
    parts = unreachable_billing
    server = grpc.aio.server()
    servicer = BillingServicer(
        parts.database,
        parts.ledger,
        parts.plans,
        parts.billing,
        parts.webhooks,
        # Never reached either: the webhook is public, so no token is verified.
        token_verifier(parts.database, cache_seconds=300),
        # Never reached: the webhook is public, so no principal is rate-limited.
        principal_rate_limiter(
            Redis.from_url(f"redis://127.0.0.1:{free_port()}"), user_plans(parts.database)
        ),
    )
    pb_grpc.add_BillingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


async def test_a_webhook_while_the_database_is_unreachable_is_unavailable(
    billing_channel: grpc.aio.Channel,
) -> None:
    body = json.dumps(
        {
            "meta": {"event_name": "subscription_created", "custom_data": {"user_id": "x"}},
            "data": {"type": "subscriptions", "id": "1", "attributes": {"variant_id": 102}},
        }
    ).encode()
    signature = hmac.new(DEV_LEMONSQUEEZY_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    stub = pb_grpc.BillingServiceStub(billing_channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.HandleLemonSqueezyWebhook(
            pb.HandleLemonSqueezyWebhookRequest(body=httpbody_pb2.HttpBody(data=body)),
            metadata=(("x-signature", signature),),
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "DATABASE_UNAVAILABLE"


async def test_only_a_lost_database_is_unavailable(unreachable_billing: BillingParts) -> None:
    with pytest.raises(Exception) as caught:
        await unreachable_billing.database.ping()
    assert isinstance(unavailable_dependency(caught.value), DatabaseUnavailable)
    assert unavailable_dependency(ValueError("a bug")) is None
    assert unavailable_dependency(KeyError("another")) is None
