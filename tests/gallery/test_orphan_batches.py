"""`storage gc` over a bucket larger than one batch of keys: every old key with no row is removed
once, in listing order, and young keys and keys with rows are left (the mesh test,
tests/e2e/test_image_storage.py, runs it against SeaweedFS and PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.storage import StoredObject
from services.gallery import orphans
from services.gallery.orphans import OrphanCollector

NOW = datetime(2026, 6, 1, tzinfo=UTC)


class Bucket:
    def __init__(self, objects: list[StoredObject]) -> None:
        self.objects = {stored.key: stored for stored in objects}
        self.deleted: list[str] = []

    async def stored_objects(self) -> AsyncIterator[StoredObject]:
        for key in sorted(self.objects):
            yield self.objects[key]

    async def delete_every_version(self, key: str) -> int:
        self.deleted.append(key)
        return 1


class Rows:
    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.asked: list[int] = []

    async def keys_with_rows(self, conn: Any, keys: Collection[str]) -> set[str]:
        self.asked.append(len(keys))
        return self.keys & set(keys)


class SystemDatabase:
    @contextlib.asynccontextmanager
    async def system(self, purpose: str) -> AsyncIterator[None]:
        assert purpose == orphans.SYSTEM_PURPOSE
        yield None


async def test_every_old_key_without_a_row_goes_once_across_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orphans, "BATCH", 3)
    old, young = NOW - timedelta(hours=2), NOW - timedelta(minutes=5)
    objects = [StoredObject(f"k{n:02}", young if n % 4 == 0 else old) for n in range(20)]
    with_rows = {f"k{n:02}" for n in range(20) if n % 3 == 0}
    bucket, rows = Bucket(objects), Rows(with_rows)
    collector = OrphanCollector(SystemDatabase(), bucket, rows)  # type: ignore[arg-type]

    removed = [orphan.key async for orphan in collector.collect(grace=timedelta(hours=1), now=NOW)]

    expected = [f"k{n:02}" for n in range(20) if n % 4 and n % 3]
    assert removed == bucket.deleted == expected
    # Only old keys are checked, never more than a batch at a time.
    assert sum(rows.asked) == 15 and max(rows.asked) == 3
