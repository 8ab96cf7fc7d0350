"""SQL for the images table: every statement runs on a transaction handed in (a tenant's, or the
system role's for a signed URL and for `storage gc`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.pagination import Position, newest_first
from services.common.schema import generations, images

# What a record holds: every column but the search vector the database derives, and the rest of
# the recipe, which its generation's row keeps (an image's id is its generation's).
_RECIPE_COLUMNS = ("sampler", "strength", "mode", "loras", "init_image_id", "mask_image_id")
_RECORD_COLUMNS = [
    *(column for column in images.c if column.name != "prompt_search"),
    *(generations.c[name] for name in _RECIPE_COLUMNS),
]
_WITH_RECIPE = images.join(generations, generations.c.id == images.c.id)
SEARCH_CONFIGURATION = "english"  # the configuration prompt_search is built with (0012)


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
    starred: bool
    board: str
    # The rest of the recipe, from its generation's row (migration 0014).
    sampler: str
    strength: float | None
    mode: str
    loras: list[dict[str, Any]]
    init_image_id: str | None
    mask_image_id: str | None


@dataclass(frozen=True)
class ImageFilter:
    """Which of a user's images a listing shows; an empty field does not filter."""

    model: str = ""
    board: str = ""
    starred_only: bool = False
    prompt_query: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class ImageChange:
    """What UpdateImage sets; None leaves a field as it is."""

    starred: bool | None = None
    board: str | None = None


def _conditions(wanted: ImageFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if wanted.model:
        conditions.append(images.c.model == wanted.model)
    if wanted.board:
        conditions.append(images.c.board == wanted.board)
    if wanted.starred_only:
        conditions.append(images.c.starred)
    if wanted.prompt_query:
        query = sa.func.websearch_to_tsquery(
            sa.cast(sa.literal(SEARCH_CONFIGURATION), REGCONFIG), wanted.prompt_query
        )
        conditions.append(images.c.prompt_search.bool_op("@@")(query))
    if wanted.created_after is not None:
        conditions.append(images.c.created_at > wanted.created_after)
    if wanted.created_before is not None:
        conditions.append(images.c.created_at < wanted.created_before)
    return conditions


class ImageRepository:
    async def insert(self, conn: AsyncConnection, image: StoredImage) -> None:
        """Record a stored image; its objects must already be in the bucket."""
        await conn.execute(sa.insert(images).values(**image.__dict__))

    async def get(
        self, conn: AsyncConnection, image_id: uuid.UUID, *, user_id: uuid.UUID | None = None
    ) -> ImageRecord | None:
        """One image by id: the user's (a tenant transaction), or anyone's (the system role's)."""
        query = sa.select(*_RECORD_COLUMNS).select_from(_WITH_RECIPE).where(images.c.id == image_id)
        if user_id is not None:
            query = query.where(images.c.user_id == user_id)
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else ImageRecord(**row._mapping)

    async def page(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        *,
        wanted: ImageFilter,
        limit: int,
        after: Position | None,
    ) -> list[ImageRecord]:
        """The user's images that pass the filter, newest first, after the (created_at, id) of
        the last one served: a keyset walk of images_by_user_newest (or a filter's index)."""
        query = (
            sa.select(*_RECORD_COLUMNS)
            .select_from(_WITH_RECIPE)
            .where(images.c.user_id == user_id, *_conditions(wanted))
        )
        query = newest_first(query, images, after=after, limit=limit)
        return [ImageRecord(**row._mapping) for row in await conn.execute(query)]

    async def update(
        self, conn: AsyncConnection, image_id: uuid.UUID, change: ImageChange, *, user_id: uuid.UUID
    ) -> ImageRecord | None:
        """Set the change's fields on the user's image; None if the user has no such image."""
        values = {name: value for name, value in change.__dict__.items() if value is not None}
        if not values:
            return await self.get(conn, image_id, user_id=user_id)
        await conn.execute(
            sa.update(images).where(images.c.id == image_id, images.c.user_id == user_id).values(**values)
        )
        return await self.get(conn, image_id, user_id=user_id)

    async def delete(
        self, conn: AsyncConnection, image_id: uuid.UUID, *, user_id: uuid.UUID
    ) -> tuple[str, str] | None:
        """Delete the user's image row; the (png, thumbnail) keys it recorded, or None if the
        user has no such row."""
        row = (
            await conn.execute(
                sa.delete(images)
                .where(images.c.id == image_id, images.c.user_id == user_id)
                .returning(images.c.object_key, images.c.thumbnail_key)
            )
        ).one_or_none()
        return None if row is None else (row.object_key, row.thumbnail_key)

    async def stored_png_key(
        self, conn: AsyncConnection, image_id: uuid.UUID, *, user_id: uuid.UUID
    ) -> str | None:
        """The PNG key the user's generation `image_id` stored its image under, whether or not
        the image's row remains: how a repeated DeleteImage tells the caller's deleted image
        from one that never was (or is another user's)."""
        key: str | None = (
            await conn.execute(
                sa.select(generations.c.image_key).where(
                    generations.c.id == image_id,
                    generations.c.user_id == user_id,
                    generations.c.image_key.is_not(None),
                )
            )
        ).scalar_one_or_none()
        return key

    async def keys_with_rows(self, conn: AsyncConnection, keys: Collection[str]) -> set[str]:
        """Those of `keys` that some images row records as its PNG or thumbnail (the system
        role's transaction: every tenant's rows)."""
        if not keys:
            return set()
        listed = sa.bindparam("keys", list(keys), type_=sa.ARRAY(sa.Text))
        rows = await conn.execute(
            sa.select(images.c.object_key, images.c.thumbnail_key).where(
                sa.or_(images.c.object_key == sa.any_(listed), images.c.thumbnail_key == sa.any_(listed))
            )
        )
        return {key for row in rows for key in (row.object_key, row.thumbnail_key)} & set(keys)
