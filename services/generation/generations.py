"""Reading a user's generations: one by id, a page of them, and the presigned URLs of an image.

Page tokens are opaque to clients: the (created_at, id) of the last row served, base64-encoded.
"""

from __future__ import annotations

import uuid

from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput, NotFound
from services.common.pagination import decode_page_token, page_limit, split_page
from services.common.storage import ImageUrls, S3ImageStore
from services.generation.lifecycle import GenerationState
from services.generation.repository import GenerationRecord, GenerationRepository


def parse_generation_id(value: str, field: str = "generation_id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput([FieldViolation(field, "must be a generation id (a UUID)")]) from None


class Generations:
    def __init__(self, *, database: Database, repository: GenerationRepository, images: S3ImageStore) -> None:
        self.database = database
        self.repository = repository
        self.images = images

    async def get(self, user_id: uuid.UUID, generation_id: uuid.UUID) -> GenerationRecord:
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.get(conn, user_id, generation_id)
        if record is None:
            raise NotFound(f"generation {generation_id} not found")
        return record

    async def finished(self, user_id: uuid.UUID, generation_ids: list[uuid.UUID]) -> list[GenerationRecord]:
        """Which of the user's generations are over, read together."""
        async with self.database.tenant(user_id) as conn:
            return await self.repository.finished_among(conn, user_id, generation_ids)

    async def page(
        self, user_id: uuid.UUID, *, page_size: int, page_token: str
    ) -> tuple[list[GenerationRecord], str]:
        limit, after = page_limit(page_size), decode_page_token(page_token)
        async with self.database.tenant(user_id) as conn:
            records = await self.repository.page(conn, user_id, limit=limit + 1, after=after)
        return split_page(records, limit, lambda record: (record.created_at, record.id))

    async def image_urls(self, record: GenerationRecord) -> ImageUrls | None:
        """Fresh presigned URLs of a succeeded generation's image and thumbnail, made when read
        (signed locally, no request), so replayed events never carry stale ones."""
        if record.state != GenerationState.SUCCEEDED:
            return None
        return await self.images.image_urls(record.image_keys)
