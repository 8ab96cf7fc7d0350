"""Composition root of the gallery service."""

from __future__ import annotations

import asyncio

from pingvas.gallery.v1 import gallery_service_pb2 as pb
from pingvas.gallery.v1 import gallery_service_pb2_grpc as pb_grpc

from services.common.keyring import token_verifier
from services.common.plans import user_plans
from services.common.rate_limits import principal_rate_limiter
from services.common.redis_pool import shared_redis
from services.common.server import GrpcServer, configure_logging, serve_until_terminated
from services.common.settings import CloudFrontSettings, GallerySettings, JwksSettings, ObjectStoreSettings
from services.common.signing import ImageUrlSigner
from services.common.startup import load_settings, open_service_database
from services.common.storage import open_image_store
from services.common.telemetry import start_telemetry
from services.gallery.images import ImageLibrary
from services.gallery.servicer import GalleryServicer


async def main() -> None:
    settings = load_settings(GallerySettings)
    configure_logging(settings.log_level, "gallery")
    telemetry = start_telemetry("pingvas-gallery")
    database = await open_service_database(settings, "gallery")
    signer = ImageUrlSigner(
        settings.url_signing_secret,
        public_url=settings.public_url,
        ttl_seconds=settings.image_url_ttl_seconds,
    )
    images, close_images = await open_image_store(
        ObjectStoreSettings(), url_ttl_seconds=settings.image_url_ttl_seconds, cloudfront=CloudFrontSettings()
    )
    library = ImageLibrary(database, images, signer)
    server = GrpcServer(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        max_receive_message_bytes=settings.max_receive_message_bytes,
    )
    pb_grpc.add_GalleryServiceServicer_to_server(
        GalleryServicer(
            library,
            token_verifier(database, cache_seconds=JwksSettings().cache_seconds),
            principal_rate_limiter(shared_redis(settings), user_plans(database)),
        ),
        server.server,
    )
    server.add_services([pb.DESCRIPTOR.services_by_name["GalleryService"].full_name])
    await serve_until_terminated(
        server,
        ready=database.ping,
        grace=settings.shutdown_grace_seconds,
        cleanup=[database.close, close_images, telemetry.shutdown],
    )


if __name__ == "__main__":
    asyncio.run(main())
