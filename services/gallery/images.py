"""The image library: a user's stored images, newest first, one by id, and the PNG behind a
signed gateway URL. Rows come from the `images` table (tenant-scoped: another user's image is
not found), objects from the images bucket, URLs are presigned when read.

Page tokens are opaque to clients: the (created_at, id) of the last image served, base64. The
listing is a keyset over (created_at, id) descending, so a token stays valid however many images
arrive meanwhile, and a page never repeats or skips one.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput, NotFound
from services.common.signing import ImageUrlSigner
from services.common.storage import ImageKeys, ImageUrls, ObjectMissing, S3ImageStore
from services.gallery.repository import ImageRecord, ImageRepository

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class GalleryImage:
    record: ImageRecord
    urls: ImageUrls


def parse_image_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput([FieldViolation("image_id", "must be an image id (a UUID)")]) from None


def encode_page_token(record: ImageRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_at.isoformat()}|{record.id}".encode()).decode()


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, image_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(image_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")]) from None


class ImageLibrary:
    def __init__(
        self,
        database: Database,
        store: S3ImageStore,
        signer: ImageUrlSigner,
        repository: ImageRepository | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.signer = signer
        self.repository = repository or ImageRepository()

    async def _with_urls(self, record: ImageRecord) -> GalleryImage:
        return GalleryImage(
            record, await self.store.image_urls(ImageKeys(record.object_key, record.thumbnail_key))
        )

    async def get(self, user_id: uuid.UUID, image_id: uuid.UUID) -> GalleryImage:
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.get(conn, image_id, user_id=user_id)
        if record is None:
            raise NotFound(f"image {image_id} not found")
        return await self._with_urls(record)

    async def page(
        self, user_id: uuid.UUID, *, page_size: int, page_token: str
    ) -> tuple[list[GalleryImage], str]:
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        async with self.database.tenant(user_id) as conn:
            records = await self.repository.page(conn, user_id, limit=limit + 1, after=after)
        next_token = encode_page_token(records[limit - 1]) if len(records) > limit else ""
        return [await self._with_urls(record) for record in records[:limit]], next_token

    async def signed_content(self, image_id: uuid.UUID, expires: int, signature: str) -> bytes:
        """The PNG behind a signed gateway URL. The signature names the owner, so it is checked
        against the owner on record: a URL minted for one user's image opens nothing else."""
        async with self.database.system("signed image URL") as conn:
            record = await self.repository.get(conn, image_id)
        if record is None:
            raise NotFound(f"image {image_id} not found")
        self.signer.verify(image_id, record.user_id, expires, signature)
        try:
            return await self.store.get(record.object_key)
        except ObjectMissing:
            raise NotFound(f"image {image_id} is no longer stored") from None
