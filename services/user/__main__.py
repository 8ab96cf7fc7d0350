"""Composition root of the user service: settings -> database -> domain -> gRPC server."""

from __future__ import annotations

import asyncio

from pingvas.user.v1 import api_key_service_pb2 as api_key_pb
from pingvas.user.v1 import api_key_service_pb2_grpc as api_key_pb_grpc
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc

from services.billing.ledger import CreditLedger
from services.common.keyring import SigningKeyring, TokenIssuer, token_verifier
from services.common.plans import user_plans
from services.common.rate_limits import principal_rate_limiter
from services.common.redis_pool import shared_redis
from services.common.server import GrpcServer, configure_logging, serve_until_terminated
from services.common.settings import JwksSettings, OAuthSettings, PlanSettings, UserSettings
from services.common.startup import load_settings, open_service_database
from services.common.telemetry import start_telemetry
from services.user.accounts import UserAccounts
from services.user.api_key_servicer import ApiKeyServicer
from services.user.api_keys import ApiKeys
from services.user.oauth import OAuthSignIn, SignInAttempts
from services.user.servicer import UserServicer
from services.user.sessions import Sessions
from services.webhooks.endpoints import WebhookUrlRules
from services.webhooks.sealing import SecretSealer


async def main() -> None:
    settings = load_settings(UserSettings)
    configure_logging(settings.log_level, "user")
    telemetry = start_telemetry("pingvas-user")
    database = await open_service_database(settings, "user")
    accounts = UserAccounts(database, CreditLedger(), free_grant_credits=PlanSettings().free_grant_credits)
    oauth = load_settings(OAuthSettings)
    redis = shared_redis(settings)
    jwks = JwksSettings()
    keyring = SigningKeyring(
        database,
        secret=settings.jwt_secret,
        publication_lead_seconds=jwks.cache_seconds,
        rotation_seconds=settings.signing_key_rotation_seconds,
        token_ttl_seconds=settings.token_ttl_seconds,
    )
    sessions = Sessions(
        database,
        secret=settings.jwt_secret,
        ttl_seconds=settings.refresh_token_ttl_seconds,
        reuse_interval_seconds=settings.refresh_reuse_interval_seconds,
    )

    async def ready() -> None:
        await database.ping()
        # A signing key exists before the first sign-in is served.
        await keyring.maintain()

    server = GrpcServer(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        max_receive_message_bytes=settings.max_receive_message_bytes,
    )
    tokens = token_verifier(database, cache_seconds=jwks.cache_seconds)
    rate_limiter = principal_rate_limiter(redis, user_plans(database))
    pb_grpc.add_UserServiceServicer_to_server(
        UserServicer(
            accounts,
            tokens,
            TokenIssuer(keyring, ttl_seconds=settings.token_ttl_seconds),
            sessions,
            rate_limiter,
            OAuthSignIn(oauth, SignInAttempts(redis, ttl_seconds=oauth.attempt_ttl_seconds)),
            dev_login_enabled=settings.dev_login_enabled,
        ),
        server.server,
    )
    api_key_pb_grpc.add_ApiKeyServiceServicer_to_server(
        ApiKeyServicer(
            ApiKeys(
                database,
                webhook_rules=WebhookUrlRules.for_environment(settings.env),
                sealer=SecretSealer(settings.jwt_secret),
            ),
            tokens,
            rate_limiter,
        ),
        server.server,
    )
    server.add_services(
        [
            pb.DESCRIPTOR.services_by_name["UserService"].full_name,
            api_key_pb.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
        ]
    )
    await serve_until_terminated(
        server,
        ready=ready,
        grace=settings.shutdown_grace_seconds,
        cleanup=[database.close, telemetry.shutdown],
    )


if __name__ == "__main__":
    asyncio.run(main())
