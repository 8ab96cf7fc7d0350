"""Every billing test that runs against the mesh ends by checking the ledger invariant: each
balance and hold total is exactly the sum of its append-only entries, and none is negative.

Tests of billing's own repositories (the email outbox, the ledger's statements) share one
embedded PostgreSQL of their own, migrated to head with the environment's roles, as `pingvas up`
provisions them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from support.servers import running_postgres

from services.common.database import Database
from services.common.defaults import DEFAULT_DB_SCHEMA
from services.embedded.postgres import EmbeddedPostgres
from services.migrations import EnvironmentUrls, RolePasswords, provision, upgrade


@pytest.fixture(autouse=True)
def _ledger_invariant_after_mesh_tests(request: pytest.FixtureRequest) -> None:
    # Tests that never touch the mesh (the client against its stand-in, the email outbox on its
    # own PostgreSQL) have no mesh ledger to check, and must not start a mesh for it.
    if "mesh" in request.fixturenames:
        request.getfixturevalue("ledger_sums_to_every_balance")


@pytest.fixture(scope="package")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    root = tmp_path_factory.mktemp("billing-postgres")
    with running_postgres(root) as postgres:
        yield postgres


@pytest.fixture(scope="package")
async def roles(postgres: EmbeddedPostgres) -> EnvironmentUrls:
    """The environment's roles, provisioned and migrated as `pingvas up` does."""
    urls = await provision(
        postgres.url, DEFAULT_DB_SCHEMA, RolePasswords(*(secrets.token_urlsafe(16) for _ in range(3)))
    )
    await upgrade(urls.owner, DEFAULT_DB_SCHEMA)
    return urls


@pytest.fixture(scope="package")
async def database(roles: EnvironmentUrls) -> AsyncIterator[Database]:
    """The tenant role (app) and the system role, as a service connects."""
    db = Database(roles.app, schema=DEFAULT_DB_SCHEMA, system_url=roles.system)
    yield db
    await db.close()


@pytest.fixture(scope="package")
async def superuser(postgres: EmbeddedPostgres, roles: EnvironmentUrls) -> AsyncIterator[Database]:
    """The administrator, for what no service role may do (test set-up, emptying a table)."""
    db = Database(postgres.url, schema=DEFAULT_DB_SCHEMA, system_url=postgres.url)
    yield db
    await db.close()
