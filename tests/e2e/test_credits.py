"""Credits in the main flow: a charge happens at most once however often completion is
reported. (Holds under concurrency: tests/billing/test_credit_ledger.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from support.runs import runs_on

from services.common.database import Database
from services.common.storage import ImageKeys
from services.gallery.repository import StoredImage
from services.generation.failures import Failure, FailureCode
from services.generation.runs import WorkResult

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ledger_sums_to_every_balance")]

TINY = {"prompt": "fox", "width": 64, "height": 64, "steps": 20}


async def test_completion_is_charged_exactly_once(mesh: Any, new_account: Any) -> None:
    """Two workers reporting the same attempt (a duplicate delivery) or a stale attempt report
    after a newer one: one capture, one terminal state."""
    account = new_account("once")
    database = Database(
        mesh.app_database_url, schema=mesh.schema, system_url=mesh.system_database_url, pool_size=2
    )
    redis = Redis.from_url(mesh.redis_url)
    runs = runs_on(database, redis)
    user_id = uuid.UUID(account.user_id)
    try:
        # Created straight in the database and never enqueued, so the mesh's worker leaves it be.
        async with database.tenant(user_id) as conn:
            record = await runs.repository.insert(
                conn,
                id=uuid.uuid4(),
                user_id=user_id,
                state="RUNNING",
                tier="free",
                prompt="fox",
                negative_prompt="",
                model="tiny-sd",
                width=64,
                height=64,
                steps=4,
                seed=1,
                guidance=7.5,
                attempt=2,
                credits_held=3,
                credits_charged=0,
                gpu_seconds=0.0,
                cancel_requested=False,
            )
            await runs.ledger.hold(conn, user_id, f"generation:{record.id}", 3)
        result = WorkResult(seed=1, gpu_seconds=1.5)
        stale = dataclasses.replace(record, attempt=1)
        # A success names its stored objects: they are in the bucket before any row names them.
        keys = ImageKeys.of(user_id, record.id, record.created_at)
        bucket = mesh.s3()
        for key in (keys.png, keys.thumbnail):
            bucket.put_object(Bucket="pingvas-studio-images", Key=key, Body=b"image")
        image = StoredImage(
            id=record.id,
            user_id=user_id,
            object_key=keys.png,
            thumbnail_key=keys.thumbnail,
            size_bytes=5,
            thumbnail_size_bytes=5,
            width=64,
            height=64,
            prompt="fox",
            negative_prompt="",
            seed=1,
            model="tiny-sd",
            steps=4,
            guidance=7.5,
        )

        outcomes = await asyncio.gather(
            runs.finish_succeeded(record, image, result),
            runs.finish_succeeded(record, image, result),
            runs.finish_succeeded(stale, image, result),
            runs.finish_failed(stale, Failure(FailureCode.INFERENCE_FAILED, "late")),
        )
    finally:
        await database.close()
        await redis.aclose()

    assert outcomes.count(True) == 1
    entries = mesh.sql(
        "SELECT kind, amount, held_change FROM credit_entries WHERE reference = %s ORDER BY id",
        f"generation:{record.id}",
    )
    assert entries == [
        {"kind": "hold", "amount": 0, "held_change": 3},
        {"kind": "capture", "amount": -2, "held_change": -3},  # ceil(1.5 s x 1 credit/s), within the hold
    ]
    (row,) = mesh.sql("SELECT state, credits_charged FROM generations WHERE id = %s", str(record.id))
    assert (row["state"], row["credits_charged"]) == ("SUCCEEDED", 2)
    assert mesh.sql("SELECT object_key FROM images WHERE id = %s", str(record.id)) == [
        {"object_key": keys.png}
    ]
