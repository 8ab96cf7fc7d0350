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

    async def get(
        self, conn: AsyncConnection, image_id: uuid.UUID, *, user_id: uuid.UUID | None = None
    ) -> ImageRecord | None:
        """One image by id: the user's (a tenant transaction), or anyone's (the system role's)."""
        query = sa.select(images).where(images.c.id == image_id)
        if user_id is not None:
            query = query.where(images.c.user_id == user_id)
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else ImageRecord(**row._mapping)

    async def page(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> list[ImageRecord]:
        """The user's images, newest first, after the (created_at, id) of the last one served:
        a keyset walk of images_by_user_newest."""
        query = (
            sa.select(images)
            .where(images.c.user_id == user_id)
            .order_by(images.c.created_at.desc(), images.c.id.desc())
            .limit(limit)
        )
        if after is not None:
            query = query.where(sa.tuple_(images.c.created_at, images.c.id) < sa.tuple_(*after))
        return [ImageRecord(**row._mapping) for row in await conn.execute(query)]
