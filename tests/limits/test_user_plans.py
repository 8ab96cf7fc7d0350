"""A user's plan, which sets their limits, read from PostgreSQL and remembered briefly per process:
a burst of one user's calls costs one read, and a plan change applies within the while."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from support.limits import sign_up

from services.common.database import Database
from services.common.plans import UserPlans, database_plans


async def test_a_burst_shares_one_read_and_a_plan_change_applies_after_the_while(limits_mesh: Any) -> None:
    account = sign_up(limits_mesh, "plans", plan="starter")
    user_id = uuid.UUID(account.user_id)
    database = Database(
        limits_mesh.app_database_url, schema=limits_mesh.schema, system_url=limits_mesh.system_database_url
    )
    reads = []
    read_from_database = database_plans(database)

    async def read(user: uuid.UUID) -> str | None:
        reads.append(user)
        return await read_from_database(user)

    now = [0.0]
    plans = UserPlans(read, remember_seconds=30, clock=lambda: now[0])
    try:
        # Fifty concurrent calls of one user, as a reconnecting burst of streams makes.
        assert set(await asyncio.gather(*(plans.plan(user_id) for _ in range(50)))) == {"starter"}
        assert len(reads) == 1

        assert limits_mesh.pingvas("admin", "set-plan", account.email, "studio").returncode == 0
        now[0] += 29
        assert await plans.plan(user_id) == "starter", "remembered for the while"
        now[0] += 1
        assert await plans.plan(user_id) == "studio"
        assert len(reads) == 2

        assert await plans.plan(uuid.uuid4()) is None, "a user that does not exist has no plan"
    finally:
        await database.close()
