"""Where generated images live. Embedded mode writes files under PINGVAS_HOME/images; S3 comes
behind the same interface."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiobotocore.session import get_session
from botocore.config import Config

from services.common.settings import ObjectStoreSettings


def image_key(user_id: uuid.UUID, generation_id: uuid.UUID, created: datetime) -> str:
    """The seed's layout: /{user_id}/{yyyy}/{mm}/{image}.png."""
    return f"{user_id}/{created:%Y}/{created:%m}/{generation_id}.png"


class ImageStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...


class LocalImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"image key {key!r} escapes the image directory")
        return path

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self.path(key), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write-then-rename: a reader never sees half an image.
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)


def s3_client_config(settings: ObjectStoreSettings) -> Config:
    return Config(
        region_name=settings.region,
        signature_version="s3v4",
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        # Path style works on every endpoint (SeaweedFS, VPC endpoints); AWS still accepts it
        # for existing buckets.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )


@contextlib.asynccontextmanager
async def open_s3_client(settings: ObjectStoreSettings) -> AsyncIterator[Any]:
    """One aiobotocore S3 client (one connection pool) for as long as the block runs. Keys from
    settings when given, else boto's default chain (IRSA, instance profile, AWS_* variables)."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=s3_client_config(settings),
    ) as client:
        yield client
