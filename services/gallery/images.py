"""The image library: a user's stored images, newest first and filtered, one by id, starred
and put on boards, deleted, and the PNG behind a signed gateway URL. Rows come from the `images`
table (tenant-scoped: another user's image is not found), objects from the images bucket, URLs
are presigned when read.

Listing is keyset pagination (services/common/pagination.py): a token carries the last image
served and a fingerprint of the filter, so it stays valid however many images arrive meanwhile,
and it is refused with any other filter.

Deleting removes the row first, in its own transaction, then the objects with every version:
never a row without an object. A crash (or S3 failing) between the two leaves orphan objects,
which a repeated DeleteImage removes (the caller's generation still names the key) and which
`pingvas storage gc` removes in any case.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass

from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput, NotFound, Unavailable
from services.common.pagination import decode_page_token, page_limit, query_fingerprint, split_page
from services.common.signing import ImageUrlSigner
from services.common.storage import (
    ImageKeys,
    ImageUrls,
    ObjectMissing,
    ObjectStoreUnavailable,
    S3ImageStore,
)
from services.gallery.repository import ImageChange, ImageFilter, ImageRecord, ImageRepository


@dataclass(frozen=True)
class GalleryImage:
    record: ImageRecord
    urls: ImageUrls


def parse_image_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput([FieldViolation("image_id", "must be an image id (a UUID)")]) from None


UPDATABLE_FIELDS = ("starred", "board")


def image_change(paths: Collection[str], *, starred: bool, board: str) -> ImageChange:
    """The change an update mask selects from the request's image (AIP-134; `*` is both)."""
    if not paths:
        raise InvalidInput(
            [FieldViolation("update_mask", f"name the fields to change: {', '.join(UPDATABLE_FIELDS)}")]
        )
    unknown = sorted(set(paths) - {*UPDATABLE_FIELDS, "*"})
    if unknown:
        raise InvalidInput(
            [
                FieldViolation(
                    "update_mask", f"cannot change {', '.join(unknown)}; only {', '.join(UPDATABLE_FIELDS)}"
                )
            ]
        )
    every = "*" in paths
    return ImageChange(
        starred=starred if every or "starred" in paths else None,
        board=board if every or "board" in paths else None,
    )


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
        self, user_id: uuid.UUID, wanted: ImageFilter, *, page_size: int, page_token: str
    ) -> tuple[list[GalleryImage], str]:
        query = query_fingerprint(asdict(wanted))
        limit, after = page_limit(page_size), decode_page_token(page_token, query)
        async with self.database.tenant(user_id) as conn:
            records = await self.repository.page(conn, user_id, wanted=wanted, limit=limit + 1, after=after)
        page, next_token = split_page(records, limit, lambda record: (record.created_at, record.id), query)
        return [await self._with_urls(record) for record in page], next_token

    async def update(self, user_id: uuid.UUID, image_id: uuid.UUID, change: ImageChange) -> GalleryImage:
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.update(conn, image_id, change, user_id=user_id)
        if record is None:
            raise NotFound(f"image {image_id} not found")
        return await self._with_urls(record)

    async def delete(self, user_id: uuid.UUID, image_id: uuid.UUID) -> None:
        """Delete the user's image: the row, committed, then both objects with every version.
        An image the user had and already deleted is deleted again (any object left behind goes
        now); one the user never had is not found."""
        async with self.database.tenant(user_id) as conn:
            keys = await self.repository.delete(conn, image_id, user_id=user_id)
            if keys is None:
                png_key = await self.repository.stored_png_key(conn, image_id, user_id=user_id)
                if png_key is None:
                    raise NotFound(f"image {image_id} not found")
                keys = (png_key, ImageKeys.from_png_key(png_key).thumbnail)
        try:
            for key in keys:
                await self.store.delete_every_version(key)
        except ObjectStoreUnavailable as error:
            # The row is gone and stays gone; a retry (or `storage gc`) removes the objects.
            raise Unavailable(
                f"image {image_id} is deleted, but its objects could not be removed yet; retry"
            ) from error

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
