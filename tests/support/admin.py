"""What `pingvas admin set-plan` and `grant-credits` do, run in the test's own process.

The same domain calls as the CLI's (`UserAccounts.set_plan` and `adjust_credits`, on the mesh's
app and system roles), without starting a Python process for each: the scheduler tests sign up
several customers per test, and two CLI processes each, importing the product, took a quarter
of such a test's time run alone. The CLI itself has its tests in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import asyncio
import uuid

from services.billing.ledger import CreditLedger
from services.common.database import Database
from services.user.accounts import UserAccounts
from support.mesh import RunningMesh


def set_plan_and_grant(mesh: RunningMesh, email: str, plan: str, credits: int) -> None:
    """Puts the user on `plan` and grants them `credits`, as an administrator would."""

    async def arrange() -> None:
        database = Database(
            mesh.app_database_url,
            schema=mesh.schema,
            system_url=mesh.system_database_url,
            pool_size=1,
            application_name="pingvas-tests",
        )
        accounts = UserAccounts(database, CreditLedger(), free_grant_credits=0)
        try:
            await accounts.set_plan(email, plan)
            await accounts.adjust_credits(email, credits, f"admin:{uuid.uuid4()}")
        finally:
            await database.close()

    asyncio.run(arrange())
