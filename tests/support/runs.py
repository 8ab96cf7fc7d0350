"""The generation runs (start, finish, requeue) on a mesh's PostgreSQL and Redis, built as the
worker builds them, for tests that drive a run from the test process."""

from __future__ import annotations

from redis.asyncio import Redis

from services.billing.ledger import CreditLedger
from services.billing.pricing import Pricing
from services.common.database import Database
from services.generation.delivery import Delivery
from services.generation.events import EventLog
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRepository
from services.generation.runs import Runs


def runs_on(database: Database, redis: Redis) -> Runs:
    """At the mesh's default prices: one credit per GPU second, one GPU second held per step."""
    queue, events = TierQueue(redis), EventLog(redis)
    return Runs(
        database=database,
        repository=GenerationRepository(),
        ledger=CreditLedger(),
        pricing=Pricing(credits_per_gpu_second=1.0, hold_seconds_per_step=1.0),
        queue=queue,
        events=events,
        delivery=Delivery(queue, events),
    )
