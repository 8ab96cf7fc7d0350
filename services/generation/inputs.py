"""Input images of image-to-image and inpainting: handing out uploads, and finding and checking
the image a generation names.

An input is one of two things, both objects of the images bucket:
- one of the caller's gallery images (its id), read where its `images` row says it is;
- an upload (its id, from `CreateUpload`): the client PUTs the bytes to a presigned URL under
  `uploads/{user_id}/{upload_id}`, which the bucket's lifecycle expires after a day. The key is
  derived from the caller and the id, so another tenant's upload id names nothing. A generation
  that uses an upload copies it to `inputs/{user_id}/{upload_id}`, which is kept.

The presigned PUT binds the declared content type and length, but the client may still PUT any
bytes of that length, so a generation checks the stored object itself before it is accepted:
its size, its magic bytes (PNG, JPEG or WebP) and that its dimensions decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image, UnidentifiedImageError

from services.common.buckets import UPLOADS_EXPIRE_DAYS
from services.common.database import Database
from services.common.errors import NotFound, Unavailable, Violations
from services.common.storage import (
    INPUTS_PREFIX,
    UPLOADS_PREFIX,
    ObjectMissing,
    ObjectStoreUnavailable,
    S3ImageStore,
)
from services.generation.image_formats import CONTENT_TYPES, sniff_format
from services.generation.repository import GenerationRepository, StoredInput

# What the bytes of an input may be, beside their format (image_formats.py).
MAX_INPUT_BYTES = 10 * 1024 * 1024
# The largest side an input may have: the contract's largest image side. Checked from the header
# before the pixels are decoded, so a small file of a huge, flat image cannot take gigabytes.
MAX_INPUT_SIDE = 4096


class Undecodable(Exception):
    """The bytes are not an image this service can decode; the message says why, for the caller."""


def decoded_size(data: bytes) -> tuple[int, int]:
    """The image's width and height, from a full decode (a truncated or corrupt file fails), of
    an image no larger than MAX_INPUT_SIDE a side (read from its header first)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max(width, height) > MAX_INPUT_SIDE:
                raise Undecodable(f"is {width}x{height}, more than {MAX_INPUT_SIDE} pixels a side")
            image.load()
            return width, height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise Undecodable("cannot be decoded as an image") from None


def upload_key(user_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"{UPLOADS_PREFIX}{user_id}/{upload_id}"


def kept_input_key(user_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"{INPUTS_PREFIX}{user_id}/{upload_id}"


@dataclass(frozen=True)
class Upload:
    """A place to PUT one input image, as CreateUpload hands it out."""

    id: uuid.UUID
    user_id: uuid.UUID
    url: str
    content_type: str
    size_bytes: int
    url_expires_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class InputImage:
    """An input image found and checked: the id it was named by, the object the worker reads
    once the generation is accepted (`key`), and where it is now (`source_key`: an upload is
    copied from there to `key` by `keep`)."""

    id: str
    key: str
    source_key: str
    width: int
    height: int


class InputImages:
    def __init__(
        self,
        *,
        database: Database,
        repository: GenerationRepository,
        images: S3ImageStore,
        upload_url_ttl_seconds: int,
    ) -> None:
        self.database = database
        self.repository = repository
        self.images = images
        self.upload_url_ttl_seconds = upload_url_ttl_seconds

    async def create_upload(self, user_id: uuid.UUID, *, content_type: str, size_bytes: int) -> Upload:
        """A presigned PUT for one image of the declared type and size (the contract's rules
        have checked both; checked again here, as the domain's own rule)."""
        violations = Violations()
        if content_type not in CONTENT_TYPES:
            violations.add("content_type", "must be one of " + ", ".join(CONTENT_TYPES))
        if not 1 <= size_bytes <= MAX_INPUT_BYTES:
            violations.add("size_bytes", f"must be between 1 and {MAX_INPUT_BYTES} (10 MB)")
        violations.raise_if_any()
        upload_id = uuid.uuid4()
        now = datetime.now(UTC)
        url = await self.images.presigned_put_url(
            upload_key(user_id, upload_id),
            content_type=content_type,
            size=size_bytes,
            ttl_seconds=self.upload_url_ttl_seconds,
        )
        return Upload(
            id=upload_id,
            user_id=user_id,
            url=url,
            content_type=content_type,
            size_bytes=size_bytes,
            url_expires_at=now + timedelta(seconds=self.upload_url_ttl_seconds),
            expires_at=now + timedelta(seconds=self.upload_url_ttl_seconds, days=UPLOADS_EXPIRE_DAYS),
        )

    async def find(
        self, user_id: uuid.UUID, image_id: str, field: str, violations: Violations
    ) -> InputImage | None:
        """The caller's gallery image or upload called `image_id`, checked; a broken rule is
        added to `violations` under `field` (None returned). Raises NotFound when the caller
        has neither under that id."""
        try:
            parsed = uuid.UUID(image_id)
        except ValueError:
            violations.add(field, "must be the id of one of your gallery images or uploads")
            return None
        async with self.database.tenant(user_id) as conn:
            stored = await self.repository.image_object(conn, user_id, parsed)
        if stored is not None:
            return InputImage(image_id, stored.key, stored.key, stored.width, stored.height)
        async with _store_answering():
            stored = await self._uploaded(user_id, parsed)
            if stored is None:
                raise NotFound(f"{field}: you have no image or upload {image_id}")
            if stored.size_bytes > MAX_INPUT_BYTES:
                violations.add(field, f"is {stored.size_bytes} bytes, more than the 10 MB limit")
                return None
            try:
                data = await self.images.get(stored.key)
            except ObjectMissing:
                raise NotFound(f"{field}: you have no image or upload {image_id}") from None
        if sniff_format(data) is None:
            violations.add(field, "is not a PNG, JPEG or WebP image")
            return None
        try:
            width, height = await asyncio.to_thread(decoded_size, data)
        except Undecodable as undecodable:
            violations.add(field, str(undecodable))
            return None
        return InputImage(image_id, kept_input_key(user_id, parsed), stored.key, width, height)

    async def _uploaded(self, user_id: uuid.UUID, upload_id: uuid.UUID) -> StoredInput | None:
        """The upload's object: where it was PUT, or, once the upload has expired, the copy an
        earlier generation kept."""
        for key in (upload_key(user_id, upload_id), kept_input_key(user_id, upload_id)):
            try:
                return StoredInput(key, await self.images.size(key), 0, 0)
            except ObjectMissing:
                continue
        return None

    async def keep(self, image: InputImage) -> None:
        """Make the object the worker will read outlive the upload's expiry: copy an upload
        to its kept key (a gallery image is read where it is)."""
        if image.source_key != image.key:
            async with _store_answering():
                await self.images.copy(image.source_key, image.key)


@contextlib.asynccontextmanager
async def _store_answering() -> AsyncIterator[None]:
    """The images bucket not answering is a retryable refusal (UNAVAILABLE), not an internal error."""
    try:
        yield
    except ObjectStoreUnavailable as error:
        raise Unavailable("the image store is unavailable; retry shortly") from error
