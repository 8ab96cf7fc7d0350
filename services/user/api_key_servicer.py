"""ApiKeyService over gRPC: proto in, domain call, proto out.

Its access (a user's token, never an API key) is the contract's declaration, enforced by the
decorators (services/common/access.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.user.v1 import api_key_resources_pb2 as resources
from pingvas.user.v1 import api_key_service_pb2 as pb
from pingvas.user.v1 import api_key_service_pb2_grpc as pb_grpc

from services.common.auth import Principal, TokenVerifier
from services.common.errors import FieldViolation, InvalidInput
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, unary
from services.user.api_keys import RESOURCE_PREFIX, ApiKey, ApiKeys
from services.user.servicer import ERROR_DOMAIN

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _timestamp(moment: Any) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _expiry(request: pb.CreateApiKeyRequest) -> datetime | None:
    if not request.HasField("expire_time"):
        return None
    try:
        expires_at: datetime = request.expire_time.ToDatetime(tzinfo=UTC)
        return expires_at
    except (ValueError, OverflowError):
        raise InvalidInput([FieldViolation("expire_time", "must be a valid time")]) from None


def api_key_to_proto(key: ApiKey) -> resources.ApiKey:
    return resources.ApiKey(
        name=f"{RESOURCE_PREFIX}{key.id}",
        id=str(key.id),
        display_name=key.display_name,
        scopes=list(key.scopes),
        prefix=key.prefix,
        create_time=_timestamp(key.created_at),
        last_use_time=_timestamp(key.last_used_at),
        expire_time=_timestamp(key.expires_at),
        default_webhook_url=key.default_webhook_url or "",
    )


class ApiKeyServicer(pb_grpc.ApiKeyServiceServicer, Endpoint):
    def __init__(self, keys: ApiKeys, tokens: TokenVerifier, rate_limiter: PrincipalRateLimiter) -> None:
        Endpoint.__init__(
            self,
            service=pb.DESCRIPTOR.services_by_name["ApiKeyService"],
            tokens=tokens,
            error_domain=ERROR_DOMAIN,
            rate_limiter=rate_limiter,
        )
        self.keys = keys

    @unary
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, caller: Principal, context: Context
    ) -> pb.CreateApiKeyResponse:
        created = await self.keys.create(
            caller.user_id,
            display_name=request.display_name,
            scopes=list(request.scopes),
            expires_at=_expiry(request),
            default_webhook_url=request.default_webhook_url,
        )
        return pb.CreateApiKeyResponse(
            api_key=api_key_to_proto(created.key),
            secret=created.secret,
            webhook_signing_secret=created.webhook_signing_secret or "",
        )

    @unary
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, caller: Principal, context: Context
    ) -> pb.ListApiKeysResponse:
        keys, next_token = await self.keys.page(
            caller.user_id, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_to_proto(k) for k in keys], next_page_token=next_token
        )

    @unary
    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, caller: Principal, context: Context
    ) -> pb.DeleteApiKeyResponse:
        await self.keys.revoke(caller.user_id, request.name)
        return pb.DeleteApiKeyResponse()

    @unary
    async def RotateApiKeyWebhookSecret(
        self, request: pb.RotateApiKeyWebhookSecretRequest, caller: Principal, context: Context
    ) -> pb.RotateApiKeyWebhookSecretResponse:
        secret = await self.keys.rotate_webhook_secret(caller.user_id, request.name)
        return pb.RotateApiKeyWebhookSecretResponse(webhook_signing_secret=secret)
