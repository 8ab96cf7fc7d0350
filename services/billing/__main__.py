"""Composition root of the billing service: settings -> clients -> domain -> gRPC server, plus
two background loops: the expiry job (daily as a CronJob in production, more often here) and
the email outbox sender."""

from __future__ import annotations

import asyncio

from pingvas.billing.v1 import billing_service_pb2 as pb
from pingvas.billing.v1 import billing_service_pb2_grpc as pb_grpc

from services.billing.app import build_billing
from services.billing.email import mailer_from_settings, run_email_sender
from services.billing.servicer import BillingServicer
from services.common.keyring import token_verifier
from services.common.plans import user_plans
from services.common.rate_limits import principal_rate_limiter
from services.common.redis_pool import shared_redis
from services.common.server import GrpcServer, configure_logging, periodically, serve_until_terminated
from services.common.settings import BillingSettings, EmailSettings, JwksSettings
from services.common.startup import enforce_environment, load_settings
from services.common.telemetry import start_telemetry


async def main() -> None:
    settings = load_settings(BillingSettings)
    configure_logging(settings.log_level, "billing")
    telemetry = start_telemetry("pingvas-billing")
    parts = build_billing(
        env=settings.env,
        database_url=settings.database_url,
        system_database_url=settings.system_database_url,
        db_schema=settings.db_schema,
        grace_period_days=settings.grace_period_days,
    )
    await enforce_environment(settings, parts.database, component="billing")
    mailer = mailer_from_settings(EmailSettings(), settings.home)
    server = GrpcServer(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        max_receive_message_bytes=settings.max_receive_message_bytes,
    )
    servicer = BillingServicer(
        parts.database,
        parts.ledger,
        parts.plans,
        parts.billing,
        parts.webhooks,
        token_verifier(parts.database, cache_seconds=JwksSettings().cache_seconds),
        principal_rate_limiter(shared_redis(settings), user_plans(parts.database)),
    )
    pb_grpc.add_BillingServiceServicer_to_server(servicer, server.server)
    server.add_services([pb.DESCRIPTOR.services_by_name["BillingService"].full_name])

    async def send_emails(stop: asyncio.Event) -> None:
        await run_email_sender(parts.database, parts.outbox, mailer, stop, settings.email_interval_seconds)

    await serve_until_terminated(
        server,
        ready=parts.database.ping,
        grace=settings.shutdown_grace_seconds,
        background=[
            periodically(settings.expire_interval_seconds, parts.billing.expire_lapsed, "expiry"),
            send_emails,
        ],
        cleanup=[parts.close, telemetry.shutdown],
    )


if __name__ == "__main__":
    asyncio.run(main())
