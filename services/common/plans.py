"""A user's plan, which sets the limits every service applies to them (request rates, open
streams): read from PostgreSQL in the user's own tenant, and remembered by each process for a
short while. A burst of one user's calls costs one read, which concurrent callers share, and a
plan change applies everywhere within that while."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.database import Database
from services.common.schema import users
from services.common.settings import RateLimitSettings

PlanReader = Callable[[uuid.UUID], Awaitable[str | None]]

# Plans remembered per process before the memory is dropped whole (a bound, not a tuning knob).
_MAX_REMEMBERED = 100_000


async def read_plan(conn: AsyncConnection, user_id: uuid.UUID) -> str | None:
    """The user's plan; None for a user that no longer exists."""
    return (await conn.execute(sa.select(users.c.plan).where(users.c.id == user_id))).scalar_one_or_none()


def database_plans(database: Database) -> PlanReader:
    """Reads a user's plan in the user's own tenant transaction."""

    async def plan_of(user_id: uuid.UUID) -> str | None:
        async with database.tenant(user_id) as conn:
            return await read_plan(conn, user_id)

    return plan_of


class UserPlans:
    """Users' plans, each read at most once per `remember_seconds` in this process."""

    def __init__(
        self, read: PlanReader, *, remember_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.read = read
        self.remember_seconds = remember_seconds
        self.clock = clock
        self._plans: dict[uuid.UUID, tuple[float, asyncio.Future[str | None]]] = {}

    async def plan(self, user_id: uuid.UUID) -> str | None:
        now = self.clock()
        remembered = self._plans.get(user_id)
        if remembered is None or remembered[0] <= now:
            if len(self._plans) >= _MAX_REMEMBERED:
                self._plans.clear()
            remembered = (now + self.remember_seconds, asyncio.ensure_future(self.read(user_id)))
            self._plans[user_id] = remembered
        try:
            return await asyncio.shield(remembered[1])
        except Exception:
            if self._plans.get(user_id) is remembered:  # a failed read is not remembered
                del self._plans[user_id]
            raise


def user_plans(database: Database) -> UserPlans:
    """A process's plans, remembered for PINGVAS_RATE_LIMITS_PLAN_CACHE_SECONDS."""
    return UserPlans(database_plans(database), remember_seconds=RateLimitSettings().plan_cache_seconds)
