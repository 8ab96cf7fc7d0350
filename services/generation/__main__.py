"""Composition root of the generation service: settings -> clients -> domain -> gRPC server."""

from __future__ import annotations

import asyncio
import logging

from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.billing.ledger import CreditLedger
from services.billing.pricing import Pricing
from services.common.keyring import token_verifier
from services.common.plans import user_plans
from services.common.rate_limits import principal_rate_limiter
from services.common.redis_pool import redis_client, shared_redis
from services.common.server import (
    GrpcServer,
    configure_logging,
    periodically,
    serve_until_terminated,
)
from services.common.settings import (
    MIN_STREAMS_PER_USER,
    CloudFrontSettings,
    GenerationSettings,
    JwksSettings,
    ModelStoreSettings,
    ObjectStoreSettings,
    SchedulerSettings,
    WatchSettings,
)
from services.common.startup import load_settings, open_service_database
from services.common.storage import open_image_store
from services.common.telemetry import start_telemetry
from services.generation.acceptance import Acceptance
from services.generation.catalog import ModelCatalog
from services.generation.delivery import Delivery
from services.generation.event_hub import EVENT_HUB_CLIENT_NAME, EventHub
from services.generation.events import EventLog
from services.generation.generations import Generations
from services.generation.inputs import InputImages
from services.generation.model_store import open_model_store
from services.generation.queue import TierQueue
from services.generation.queue_metrics import QueueDepthEndpoint, QueueDepthGauge
from services.generation.repository import GenerationRepository
from services.generation.runs import Runs
from services.generation.servicer import GenerationServicer
from services.generation.stream_slots import StreamSlots
from services.generation.watching import Watching
from services.webhooks.endpoints import WebhookUrlRules

log = logging.getLogger("services.generation")


async def main() -> None:
    settings = load_settings(GenerationSettings)
    scheduler = SchedulerSettings()
    watch_settings = WatchSettings()
    configure_logging(settings.log_level, "generation")
    telemetry = start_telemetry("pingvas-generation")
    database = await open_service_database(settings, "generation")
    redis = shared_redis(settings)
    repository = GenerationRepository()
    ledger = CreditLedger()
    queue = TierQueue(redis)
    events = EventLog(redis)
    delivery = Delivery(queue, events)
    pricing = Pricing(settings.credits_per_gpu_second, settings.hold_seconds_per_step)
    object_store = ObjectStoreSettings()
    images, close_images = await open_image_store(
        object_store, url_ttl_seconds=settings.image_url_ttl_seconds, cloudfront=CloudFrontSettings()
    )
    # The models the bucket's manifests list; a name not known yet makes the catalog read them again.
    model_store = ModelStoreSettings()
    models, close_models = await open_model_store(
        object_store, settings.resolved_models_dir, transfers=model_store
    )
    catalog = ModelCatalog(models, refresh_interval_seconds=model_store.catalog_refresh_seconds)
    await catalog.refresh()
    inputs = InputImages(
        database=database,
        repository=repository,
        images=images,
        upload_url_ttl_seconds=settings.upload_url_ttl_seconds,
    )
    acceptance = Acceptance(
        database=database,
        repository=repository,
        ledger=ledger,
        pricing=pricing,
        catalog=catalog,
        inputs=inputs,
        default_model=settings.default_model,
        queue=queue,
        events=events,
        delivery=delivery,
        max_queue_depth=scheduler.max_queue_depth,
        max_live_per_user=scheduler.max_live_per_user,
        webhook_rules=WebhookUrlRules.for_environment(settings.env),
    )
    generations = Generations(database=database, repository=repository, images=images)
    # Each user's plan sets their limits here: open streams and request rates.
    plans = user_plans(database)
    hub = EventHub(
        # Its own connection, named so operators can tell it apart, for the one blocking read.
        reader=redis_client(settings.redis_url, max_connections=1, client_name=EVENT_HUB_CLIENT_NAME),
        redis=redis,
        events=events,
        queue=queue,
        generations=generations,
        buffer_size=watch_settings.buffer_events,
        position_refresh_seconds=watch_settings.position_refresh_seconds,
        truth_check_seconds=watch_settings.truth_check_seconds,
        # A waiting watch hears `queued` at least this often anyway, with the position as last told.
        position_news_seconds=watch_settings.queued_resend_seconds,
    )
    watching = Watching(
        generations=generations,
        hub=hub,
        queued_resend_seconds=watch_settings.queued_resend_seconds,
    )
    stream_slots = StreamSlots(
        redis,
        caps_by_plan=watch_settings.streams_per_user,
        default_cap=MIN_STREAMS_PER_USER,
        per_process=watch_settings.streams_per_process,
        lease_seconds=watch_settings.stream_lease_seconds,
        plan_of=plans.plan,
    )
    # The reconciler repairs runs whose worker or delivery was lost.
    runs = Runs(
        database=database,
        repository=repository,
        ledger=ledger,
        pricing=pricing,
        queue=queue,
        events=events,
        delivery=delivery,
        max_attempts=scheduler.max_attempts,
        lease_seconds=scheduler.lease_seconds,
    )
    server = GrpcServer(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        max_receive_message_bytes=settings.max_receive_message_bytes,
        # Every stream this process may hold can arrive at once: the gateway restarted, and all
        # its watchers reconnect together.
        max_pending_calls=watch_settings.streams_per_process,
    )
    pb_grpc.add_GenerationServiceServicer_to_server(
        GenerationServicer(
            acceptance=acceptance,
            generations=generations,
            watching=watching,
            stream_slots=stream_slots,
            tokens=token_verifier(database, cache_seconds=JwksSettings().cache_seconds),
            rate_limiter=principal_rate_limiter(redis, plans),
        ),
        server.server,
    )
    server.add_services([pb.DESCRIPTOR.services_by_name["GenerationService"].full_name])

    async def ready() -> None:
        await database.ping()
        await redis.ping()

    await hub.start()
    cleanup = [hub.stop, database.close, redis.aclose, close_images, close_models, telemetry.shutdown]
    background = [
        periodically(settings.reconcile_interval_seconds, runs.reconcile, "reconcile"),
        periodically(stream_slots.renew_interval_seconds, stream_slots.renew, "stream slot renewal"),
    ]
    if telemetry.enabled:
        gauges = QueueDepthGauge(queue, asyncio.get_running_loop())
        cleanup.insert(0, gauges.close)
    if settings.metrics_port is not None:
        depth_endpoint = QueueDepthEndpoint(queue, host=settings.host, port=settings.metrics_port)
        await depth_endpoint.start()
        cleanup.insert(0, depth_endpoint.stop)
    await serve_until_terminated(
        server,
        ready=ready,
        grace=settings.shutdown_grace_seconds,
        background=background,
        cleanup=cleanup,
    )


if __name__ == "__main__":
    asyncio.run(main())
