"""SQL for the images table: every statement runs on a transaction handed in (a tenant's, or the
system role's for a signed URL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.schema import images


@dataclass(frozen=True)
class StoredImage:
    """An image whose objects are in the images bucket, as its row records it."""

    id: uuid.UUID
    user_id: uuid.UUID
    object_key: str
    thumbnail_key: str
    size_bytes: int
    thumbnail_size_bytes: int
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int
    model: str
    steps: int
    guidance: float


@dataclass(frozen=True)
class ImageRecord(StoredImage):
    created_at: datetime


class ImageRepository:
    async def insert(self, conn: AsyncConnection, image: StoredImage) -> None:
        """Record a stored image; its objects must already be in the bucket."""
        await conn.execute(sa.insert(images).values(**image.__dict__))

    async def get(self, conn: AsyncConnection, image_id: uuid.UUID) -> ImageRecord | None:
        row = (await conn.execute(sa.select(images).where(images.c.id == image_id))).one_or_none()
        return None if row is None else ImageRecord(**row._mapping)
