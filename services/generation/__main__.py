"""Composition root of the generation service: settings -> clients -> domain -> gRPC server."""

from __future__ import annotations

import asyncio
import logging

from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from redis.asyncio import Redis

from services.billing.ledger import CreditLedger
from services.billing.pricing import Pricing
from services.common.auth import TokenAuthority
from services.common.database import Database
from services.common.server import GrpcServer, configure_logging, periodically, serve_until_terminated
from services.common.settings import GenerationSettings, SchedulerSettings
from services.common.signing import ImageUrlSigner
from services.generation.catalog import ModelCatalog
from services.generation.events import EventLog
from services.generation.jobs import GenerationJobs
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRepository
from services.generation.servicer import GenerationServicer

log = logging.getLogger("services.generation")


async def main() -> None:
    settings = GenerationSettings()
    scheduler = SchedulerSettings()
    configure_logging(settings.log_level, "generation")
    database = Database(settings.database_url, schema=settings.db_schema)
    redis = Redis.from_url(settings.redis_url, max_connections=512)
    jobs = GenerationJobs(
        database=database,
        repository=GenerationRepository(),
        ledger=CreditLedger(),
        queue=TierQueue(redis),
        events=EventLog(redis),
        catalog=ModelCatalog(settings.resolved_models_dir),
        pricing=Pricing(settings.credits_per_gpu_second, settings.hold_seconds_per_step),
        default_model=settings.default_model,
        max_queue_depth=scheduler.max_queue_depth,
        max_attempts=scheduler.max_attempts,
        lease_seconds=scheduler.lease_seconds,
        image_urls=ImageUrlSigner(
            settings.url_signing_secret,
            public_url=settings.public_url,
            ttl_seconds=settings.image_url_ttl_seconds,
        ),
    )
    server = GrpcServer(host=settings.host, port=settings.port, max_message_bytes=settings.max_message_bytes)
    pb_grpc.add_GenerationServiceServicer_to_server(
        GenerationServicer(jobs, TokenAuthority(settings.jwt_secret)), server.server
    )
    server.add_services([pb.DESCRIPTOR.services_by_name["GenerationService"].full_name])

    async def ready() -> None:
        await database.ping()
        await redis.ping()

    await serve_until_terminated(
        server,
        ready=ready,
        grace=settings.shutdown_grace_seconds,
        background=[periodically(settings.reconcile_interval_seconds, jobs.reconcile, "reconcile")],
        cleanup=[database.close, redis.aclose],
    )


if __name__ == "__main__":
    asyncio.run(main())
