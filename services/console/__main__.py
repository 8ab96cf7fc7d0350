"""Composition root of the console's static-file process."""

from __future__ import annotations

import logging

from aiohttp import web

from services.common.settings import CloudFrontSettings, ConsoleSettings, ObjectStoreSettings
from services.console.assets import ConsoleAssets, origin_of


def image_origins(console: ConsoleSettings) -> list[str]:
    """Where image URLs point: as configured, or the image host the services sign URLs for."""
    if console.image_origins:
        return [origin_of(origin) for origin in console.image_origins]
    cloudfront, storage = CloudFrontSettings(), ObjectStoreSettings()
    if cloudfront.domain:
        return [origin_of(cloudfront.domain)]
    if storage.endpoint_url:
        return [origin_of(storage.endpoint_url)]
    # AWS S3 presigns virtual-hosted URLs, with or without the region in the host.
    bucket = storage.images_bucket
    return [f"https://{bucket}.s3.amazonaws.com", f"https://{bucket}.s3.{storage.region}.amazonaws.com"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ConsoleSettings()
    assets = ConsoleAssets(settings.assets_dir, image_origins(settings))
    web.run_app(
        assets.application(),
        host=settings.host,
        port=settings.port,
        access_log=None,  # the gateway's access log records every request already
        print=None,
    )


if __name__ == "__main__":
    main()
