"""Composition root of a GPU worker: settings -> clients -> model registry -> job loop, with a
gRPC health server that turns SERVING once the preloaded pipelines are resident."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from services.billing.ledger import CreditLedger
from services.billing.pricing import Pricing
from services.common.database import Database
from services.common.failpoints import Failpoints
from services.common.redis_pool import redis_client
from services.common.server import (
    GrpcServer,
    collection_paused,
    configure_logging,
    serve_until_terminated,
)
from services.common.settings import (
    ModelStoreSettings,
    ObjectStoreSettings,
    SchedulerSettings,
    WorkerSettings,
)
from services.common.startup import enforce_environment, load_settings
from services.common.storage import open_image_store
from services.common.telemetry import start_telemetry
from services.generation.catalog import ModelCatalog
from services.generation.delivery import Delivery
from services.generation.events import EventLog
from services.generation.model_store import open_model_store
from services.generation.queue import SchedulingPolicy, TierQueue
from services.generation.repository import GenerationRepository
from services.generation.runs import Runs

log = logging.getLogger("gpu_inference")

PINNED_MODELS_WAIT_SECONDS = 900.0


async def main() -> None:
    settings = load_settings(WorkerSettings)
    scheduler = SchedulerSettings()
    configure_logging(settings.log_level, "worker")
    telemetry = start_telemetry("pingvas-worker")
    worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    # The tenant role only: a worker changes nothing but its job's user's rows.
    database = Database(
        settings.database_url, schema=settings.db_schema, pool_size=4, application_name="pingvas-worker"
    )
    await enforce_environment(settings, database, component=f"worker {worker_id}")
    # torch and diffusers take many seconds to import; only now, so that a worker refused by its
    # settings or environment says why at once instead of after them (a crash loop, read sooner).
    with collection_paused():
        from gpu_inference.inference import configure_cpu_threads
        from gpu_inference.registry import ModelRegistry
        from gpu_inference.worker import Worker

    redis = redis_client(settings.redis_url)
    failpoints = Failpoints(redis, settings.failpoints) if settings.failpoints else None
    object_store = ObjectStoreSettings()
    # The bucket's models, fetched into the shared cache once across every worker using it.
    model_store = ModelStoreSettings()
    models, close_models = await open_model_store(
        object_store, settings.resolved_models_dir, transfers=model_store, failpoints=failpoints
    )
    catalog = ModelCatalog(models, refresh_interval_seconds=model_store.catalog_refresh_seconds)
    await catalog.refresh()
    registry = ModelRegistry(
        catalog,
        device=settings.device,
        memory_budget_bytes=settings.memory_budget_bytes,
        pinned=settings.preload_models,
        compile_mode=settings.compile_mode,
        ensure_cached=models.ensure_cached,
    )
    threads = configure_cpu_threads(registry.device, settings.torch_threads)
    max_batch = settings.resolved_max_batch(registry.device.type)
    log.info(
        "worker %s on %s with %d CPU threads, batches of up to %d",
        worker_id,
        registry.device,
        threads,
        max_batch,
    )
    images, close_images = await open_image_store(
        object_store, url_ttl_seconds=settings.image_url_ttl_seconds
    )
    queue = TierQueue(redis)
    events = EventLog(redis)
    runs = Runs(
        database=database,
        repository=GenerationRepository(),
        ledger=CreditLedger(),
        pricing=Pricing(settings.credits_per_gpu_second, settings.hold_seconds_per_step),
        queue=queue,
        events=events,
        delivery=Delivery(queue, events),
        max_attempts=scheduler.max_attempts,
        lease_seconds=scheduler.lease_seconds,
    )
    worker = Worker(
        worker_id=worker_id,
        runs=runs,
        queue=queue,
        registry=registry,
        store=images,
        policy=SchedulingPolicy(
            aging_seconds=scheduler.aging_seconds,
            concurrency_caps=scheduler.concurrency_caps,
            affinity_lookahead=scheduler.affinity_lookahead,
            affinity_max_skips=scheduler.affinity_max_skips,
        ),
        lease_seconds=scheduler.lease_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        max_batch=max_batch,
        failpoints=failpoints,
    )
    server = GrpcServer(host=settings.health_host, port=settings.health_port)

    async def ready() -> None:
        await database.ping()
        await redis.ping()
        await registry.preload(settings.preload_models)

    await serve_until_terminated(
        server,
        ready=ready,
        grace=1.0,
        background=[worker.run],
        drain_seconds=settings.shutdown_grace_seconds,
        cleanup=[database.close, redis.aclose, close_images, close_models, telemetry.shutdown],
        # Pinned models may still be on their way into the models bucket (`pingvas up` fills it
        # while the workers start; an operator pushes production's): a worker waits for them
        # NOT_SERVING, as long as a first push of real weights can take, rather than exit.
        ready_within_seconds=PINNED_MODELS_WAIT_SECONDS,
    )


if __name__ == "__main__":
    asyncio.run(main())
