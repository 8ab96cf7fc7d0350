"""A pooled connection that PostgreSQL has dropped (a restart, a failover, an idle timeout) costs
no request an error: a transaction's opening statement finds it dead and the transaction begins
again on a new connection. The pool does not ping each connection it hands out; that opening
statement (the tenant's `set_config`) is the check.

Runs against the mesh's real PostgreSQL: the admin role ends the services' backends as a
restart would, with pg_terminate_backend."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from services.common.database import Database

pytestmark = pytest.mark.integration

# A setting a session never set reads NULL, one set by an earlier transaction '': both are unset.
BACKEND = text(
    "SELECT pg_backend_pid() AS pid, NULLIF(current_setting('pingvas.user_id', true), '') AS user_id, "
    "NULLIF(current_setting('pingvas.system_purpose', true), '') AS purpose"
)


@pytest.fixture
def application_name() -> str:
    """Whom the test's connections say they are, so that it ends only its own."""
    return f"pooled-connections-{secrets.token_hex(4)}"


@pytest.fixture
async def database(mesh: Any, application_name: str) -> AsyncIterator[Database]:
    """The services' Database: the tenant role and the system role."""
    db = Database(
        mesh.app_database_url,
        schema=mesh.schema,
        system_url=mesh.system_database_url,
        pool_size=2,
        application_name=application_name,
    )
    yield db
    await db.close()


async def backend_of(database: Database, kind: str, user_id: uuid.UUID) -> dict[str, Any]:
    """The backend a transaction of `kind` ran on, and the settings it opened with."""
    transactions = {
        "tenant": lambda: database.tenant(user_id),
        "system": lambda: database.system("checking its connection"),
        "shared": database.shared,
    }
    async with transactions[kind]() as conn:
        return dict((await conn.execute(BACKEND)).mappings().one())


def terminate_connections(mesh: Any, application_name: str) -> int:
    """End the backends, each waited for (up to 10 s) until it is gone."""
    rows = mesh.sql(
        "SELECT pg_terminate_backend(pid, 10000) AS ended FROM pg_stat_activity WHERE application_name = %s",
        application_name,
    )
    return sum(row["ended"] for row in rows)


@pytest.mark.parametrize("kind", ["tenant", "system", "shared"])
async def test_a_transaction_on_a_connection_postgresql_dropped_begins_again_on_a_new_one(
    mesh: Any, database: Database, application_name: str, new_account: Any, kind: str
) -> None:
    user_id = uuid.UUID(new_account("pooled").user_id)
    # Two connections pooled, as a busy process holds them.
    async with database.tenant(user_id) as first, database.tenant(user_id) as second:
        pooled = {
            (await first.execute(BACKEND)).mappings().one()["pid"],
            (await second.execute(BACKEND)).mappings().one()["pid"],
        }
    if kind == "system":
        async with database.system("pooling a connection") as conn:
            pooled.add((await conn.execute(BACKEND)).mappings().one()["pid"])
    assert terminate_connections(mesh, application_name) == len(pooled)

    backend = await backend_of(database, kind, user_id)

    assert backend["pid"] not in pooled
    # The retried opening statement set what the first one would have.
    assert backend["user_id"] == (str(user_id) if kind == "tenant" else None)
    assert backend["purpose"] == ("checking its connection" if kind == "system" else None)
    # And the connections it replaced are gone from the pool: the next transaction finds a live one.
    assert (await backend_of(database, kind, user_id))["pid"] not in pooled
