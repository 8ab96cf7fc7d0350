"""Credits in the main flow: holds never overdraw an account under concurrency, and a charge
happens at most once however often completion is reported."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gpu_inference.catalog import ModelCatalog
from services.billing.ledger import CreditLedger
from services.billing.pricing import Pricing
from services.common.database import Database
from services.generation.events import EventLog
from services.generation.jobs import GenerationJobs, WorkResult
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRepository

pytestmark = pytest.mark.integration

TINY = {"prompt": "fox", "width": 64, "height": 64, "steps": 20}


def test_concurrent_creates_never_overdraw(mesh: Any, new_account: Any) -> None:
    account = new_account("race")
    # 20 steps at 64x64 hold 1 credit each: leave exactly five.
    assert mesh.pingvas("admin", "grant-credits", account.email, "-95").returncode == 0

    def create(_: int) -> int:
        with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:
            return client.post("/api/v1/generation/create", json=TINY, headers=account.headers).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(create, range(20)))

    assert sorted(statuses) == [200] * 5 + [402] * 15
    jobs = mesh.sql("SELECT credits_charged FROM generations WHERE user_id = %s", account.user_id)
    assert len(jobs) == 5
    # Accepted jobs may already have run: whatever they spent left the balance, never below zero.
    (row,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", account.user_id)
    assert 0 <= row["held"] <= row["balance"]
    assert row["balance"] + sum(job["credits_charged"] for job in jobs) == 5


async def test_completion_is_charged_exactly_once(mesh: Any, new_account: Any, models_dir: Any) -> None:
    """Two workers reporting the same attempt (a duplicate delivery) or a stale attempt report
    after a newer one: one capture, one terminal state."""
    account = new_account("once")
    database = Database(mesh.database_url, schema=mesh.schema, pool_size=2)
    redis = Redis.from_url(mesh.redis_url)
    jobs = GenerationJobs(
        database=database,
        repository=GenerationRepository(),
        ledger=CreditLedger(),
        queue=TierQueue(redis),
        events=EventLog(redis),
        catalog=ModelCatalog(models_dir),
        pricing=Pricing(credits_per_gpu_second=1.0, hold_seconds_per_step=1.0),
        default_model="tiny-sd",
    )
    user_id = uuid.UUID(account.user_id)
    try:
        # Created straight in the database and never enqueued, so the mesh's worker leaves it be.
        async with database.tenant(user_id) as conn:
            record = await jobs.repository.insert(
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
            await jobs.ledger.hold(conn, user_id, f"generation:{record.id}", 3)
        result = WorkResult(png=b"", seed=1, gpu_seconds=1.5)
        stale = type(record)(**{**record.__dict__, "attempt": 1})

        outcomes = await asyncio.gather(
            jobs.finish_succeeded(record, "k", result),
            jobs.finish_succeeded(record, "k", result),
            jobs.finish_succeeded(stale, "k", result),
            jobs.finish_failed(stale, "late"),
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


def test_the_ledger_sums_to_every_balance(mesh: Any) -> None:
    """The projection in credit_accounts is exactly the sum of the append-only entries."""
    mismatches = mesh.sql(
        """
        SELECT a.user_id, a.balance, a.held, coalesce(sum(e.amount), 0) AS entries_balance,
               coalesce(sum(e.held_change), 0) AS entries_held
        FROM credit_accounts a LEFT JOIN credit_entries e ON e.user_id = a.user_id
        GROUP BY a.user_id, a.balance, a.held
        HAVING a.balance <> coalesce(sum(e.amount), 0) OR a.held <> coalesce(sum(e.held_change), 0)
        """
    )
    assert mismatches == []
    assert mesh.sql("SELECT count(*) AS n FROM credit_accounts")[0]["n"] > 0
