"""Orphan objects: what `pingvas storage gc` removes from the images bucket.

An image's objects are written before its row commits, and DeleteImage removes the row before
the objects, so that there is never a row without an object. A crash (or S3 failing) at the
wrong moment leaves the opposite: objects with no row. An object is an orphan when no `images`
row records its key and its newest version is older than the grace period; the grace keeps the
objects of an image whose row is still being committed (a worker takes seconds between the
two, the grace is an hour by default). Every version of an orphan goes, as DeleteImage removes
them.

The rows are read through the system role (every tenant's images), by key, with the SELECT that
migration 0011 grants it; it needs no other grant, since only objects are deleted. Running it
again finds nothing more to remove.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.database import Database
from services.common.storage import INPUT_IMAGE_PREFIXES, S3ImageStore, StoredObject
from services.gallery.repository import ImageRepository

SYSTEM_PURPOSE = "storage gc: which objects have an images row"
# Keys checked against the rows in one query.
BATCH = 500


@dataclass(frozen=True)
class RemovedOrphan:
    key: str
    last_modified: datetime
    versions: int


class OrphanCollector:
    def __init__(
        self,
        database: Database,
        store: S3ImageStore,
        repository: ImageRepository | None = None,
        *,
        batch_size: int = BATCH,
    ) -> None:
        self.database = database
        self.store = store
        self.repository = repository or ImageRepository()
        self.batch_size = batch_size

    async def collect(
        self, *, grace: timedelta, now: datetime, prefix: str = ""
    ) -> AsyncIterator[RemovedOrphan]:
        """Remove every orphan older than `grace` at `now` (under `prefix`: one user's images
        are `{user_id}/`), yielding each as it goes. The bucket
        is walked once, a batch of keys at a time, so memory stays bounded however large it
        is; deleting keys the listing has passed does not disturb it (S3 lists in key order
        from a marker)."""
        cutoff = now - grace
        batch: list[StoredObject] = []
        async for stored in self.store.stored_objects(prefix):
            if stored.key.startswith(INPUT_IMAGE_PREFIXES):
                continue  # input images, not gallery images: no row records them
            if stored.last_modified <= cutoff:
                batch.append(stored)
            if len(batch) == self.batch_size:
                async for removed in self._sweep(batch):
                    yield removed
                batch = []
        async for removed in self._sweep(batch):
            yield removed

    async def _sweep(self, batch: list[StoredObject]) -> AsyncIterator[RemovedOrphan]:
        if not batch:
            return
        async with self.database.system(SYSTEM_PURPOSE) as conn:
            recorded = await self.repository.keys_with_rows(conn, [stored.key for stored in batch])
        for stored in batch:
            if stored.key not in recorded:
                versions = await self.store.delete_every_version(stored.key)
                yield RemovedOrphan(stored.key, stored.last_modified, versions)
