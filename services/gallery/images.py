"""The image library: serves stored PNGs, read from the images bucket, to holders of a valid
signed gateway URL."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from services.common.database import Database
from services.common.errors import NotFound
from services.common.schema import generations
from services.common.signing import ImageUrlSigner
from services.common.storage import ImageStore, ObjectMissing
from services.generation.lifecycle import GenerationState


class ImageLibrary:
    def __init__(self, database: Database, store: ImageStore, signer: ImageUrlSigner) -> None:
        self.database = database
        self.store = store
        self.signer = signer

    async def signed_content(self, image_id: uuid.UUID, expires: int, signature: str) -> bytes:
        """The PNG behind a signed URL. The signature names the owner, so it is checked against
        the owner on record: a URL minted for one user's image opens nothing else."""
        async with self.database.system("signed image URL") as conn:
            row = (
                await conn.execute(
                    sa.select(generations.c.user_id, generations.c.image_key).where(
                        generations.c.id == image_id, generations.c.state == GenerationState.SUCCEEDED
                    )
                )
            ).one_or_none()
        if row is None or row.image_key is None:
            raise NotFound(f"image {image_id} not found")
        self.signer.verify(image_id, row.user_id, expires, signature)
        try:
            return await self.store.get(row.image_key)
        except ObjectMissing:
            raise NotFound(f"image {image_id} is no longer stored") from None
