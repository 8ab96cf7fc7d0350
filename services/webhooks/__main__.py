"""Composition root of the webhook deliverer: settings -> database, images -> guard, sender, outbox ->
the delivery loop, with a gRPC health server for `pingvas up` and Kubernetes' probes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from services.common.server import GrpcServer, configure_logging, serve_until_terminated
from services.common.settings import CloudFrontSettings, ObjectStoreSettings, WebhookSettings
from services.common.startup import load_settings, open_service_database
from services.common.storage import open_image_store
from services.common.telemetry import start_telemetry
from services.webhooks.deliverer import RetrySchedule, WebhookDeliverer
from services.webhooks.endpoints import WebhookUrlRules
from services.webhooks.guard import DestinationGuard
from services.webhooks.outbox import WebhookOutbox
from services.webhooks.sealing import SecretSealer
from services.webhooks.sender import WebhookSender


async def main() -> None:
    settings = load_settings(WebhookSettings)
    configure_logging(settings.log_level, "webhooks")
    telemetry = start_telemetry("pingvas-webhooks")
    database = await open_service_database(settings, "webhooks")
    images, close_images = await open_image_store(
        ObjectStoreSettings(), url_ttl_seconds=settings.image_url_ttl_seconds, cloudfront=CloudFrontSettings()
    )
    deliverer = WebhookDeliverer(
        database=database,
        outbox=WebhookOutbox(),
        sender=WebhookSender(
            DestinationGuard(WebhookUrlRules.for_environment(settings.env)),
            timeout_seconds=settings.webhook_timeout_seconds,
        ),
        sealer=SecretSealer(settings.jwt_secret),
        images=images,
        schedule=RetrySchedule(
            delays=[timedelta(seconds=delay) for delay in settings.webhook_retry_delays_seconds],
            window=timedelta(seconds=settings.webhook_retry_window_seconds),
        ),
        claim_hold=timedelta(seconds=settings.webhook_claim_seconds),
        batch_size=settings.webhook_batch_size,
    )
    server = GrpcServer(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        max_receive_message_bytes=settings.max_receive_message_bytes,
    )

    async def deliver(stop: asyncio.Event) -> None:
        await deliverer.run(stop, settings.webhook_poll_interval_seconds)

    await serve_until_terminated(
        server,
        ready=database.ping,
        grace=settings.shutdown_grace_seconds,
        # A send in flight finishes (its timeout bounds it); an unrecorded one is sent again.
        drain_seconds=settings.webhook_timeout_seconds,
        background=[deliver],
        cleanup=[database.close, close_images, telemetry.shutdown],
    )


if __name__ == "__main__":
    asyncio.run(main())
