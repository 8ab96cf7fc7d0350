"""The database itself keeps tenants apart: row-level security is enabled and forced on every
table holding tenant data, and the roles services connect as can neither escape it (SET ROLE,
superuser, owner, BYPASSRLS) nor rewrite the ledger, nor reach another environment's schema.

Everything runs against the mesh's real PostgreSQL, connected as the roles `pingvas up` gave the
services (mesh.app_database_url, mesh.system_database_url)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.common.database import Database, DatabaseRoles
from services.migrations import EnvironmentUrls, RolePasswords, provision, upgrade

pytestmark = pytest.mark.integration

TENANT_TABLES = (
    "users",
    "credit_accounts",
    "credit_entries",
    "generations",
    "subscriptions",
    "email_outbox",
    "refresh_tokens",
    "oauth_identities",
    "api_keys",
    "images",
    "webhook_deliveries",
    "webhook_outbox",
)
# Tables only the system role is granted: the tenant role cannot even read them.
SYSTEM_ONLY_TABLES = ("oauth_identities", "webhook_deliveries")
# What each table calls its tenant.
TENANT_COLUMN = {"users": "id"}
SERVICE_ROLES = ("app", "system")


def service_url(mesh: Any, role: str) -> str:
    return {"app": mesh.app_database_url, "system": mesh.system_database_url}[role]


@pytest.fixture
async def database(mesh: Any) -> AsyncIterator[Database]:
    """The services' Database: the tenant role and the system role."""
    db = Database(mesh.app_database_url, schema=mesh.schema, system_url=mesh.system_database_url)
    yield db
    await db.close()


@pytest.fixture
def two_tenants(new_account: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """Two users, each with an account and ledger entries (the free grant)."""
    return uuid.UUID(new_account("alice").user_id), uuid.UUID(new_account("bob").user_id)


def test_every_table_with_tenant_data_has_row_level_security_enabled_and_forced(mesh: Any) -> None:
    rows = mesh.sql(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'
        """,
        mesh.schema,
    )
    state = {row["relname"]: (row["relrowsecurity"], row["relforcerowsecurity"]) for row in rows}
    assert {table: state[table] for table in TENANT_TABLES} == {
        table: (True, True) for table in TENANT_TABLES
    }


async def test_a_query_that_forgets_its_where_sees_only_its_tenant(
    database: Database, two_tenants: tuple[uuid.UUID, uuid.UUID], mesh: Any
) -> None:
    alice, bob = two_tenants
    everyone = {uuid.UUID(row["user_id"]) for row in mesh.sql("SELECT user_id FROM credit_entries")}
    assert {alice, bob} <= everyone, "the administrator sees both tenants"
    for tenant in (alice, bob):
        async with database.tenant(tenant) as conn:
            for table in (t for t in TENANT_TABLES if t not in SYSTEM_ONLY_TABLES):
                column = TENANT_COLUMN.get(table, "user_id")
                # No WHERE: the policy is the only filter.
                seen = set((await conn.execute(text(f"SELECT {column} FROM {table}"))).scalars())
                assert seen <= {tenant}, table
            assert set((await conn.execute(text("SELECT id FROM users"))).scalars()) == {tenant}
            entries = set((await conn.execute(text("SELECT user_id FROM credit_entries"))).scalars())
            assert entries == {tenant}


async def test_a_tenant_cannot_write_rows_of_another_tenant(
    database: Database, two_tenants: tuple[uuid.UUID, uuid.UUID], mesh: Any
) -> None:
    alice, bob = two_tenants
    async with database.tenant(alice) as conn:
        # Bob's row is invisible, so the UPDATE changes nothing, however it is written.
        changed = await conn.execute(text("UPDATE users SET plan = 'studio' WHERE id = :bob"), {"bob": bob})
        assert changed.rowcount == 0
    with pytest.raises(DBAPIError, match="row-level security"):
        async with database.tenant(alice) as conn:
            await conn.execute(
                text(
                    "INSERT INTO credit_entries (user_id, kind, amount, held_change, reference) "
                    "VALUES (:bob, 'grant', 1000000, 0, 'forged')"
                ),
                {"bob": bob},
            )
    assert mesh.sql("SELECT plan FROM users WHERE id = %s", str(bob)) == [{"plan": "free"}]
    assert mesh.sql("SELECT id FROM credit_entries WHERE reference = 'forged'") == []


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_outside_a_tenant_or_system_transaction_no_tenant_row_is_visible(
    mesh: Any, role: str, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    assert mesh.sql("SELECT count(*) AS n FROM users")[0]["n"] >= 2
    with psycopg2.connect(service_url(mesh, role)) as conn, conn.cursor() as cursor:
        cursor.execute(f"SET search_path TO {mesh.schema}")
        for table in TENANT_TABLES:
            try:
                cursor.execute(f"SELECT count(*) FROM {table}")
            except psycopg2.errors.InsufficientPrivilege:
                conn.rollback()  # the tenant role is not even granted SYSTEM_ONLY_TABLES
                cursor.execute(f"SET search_path TO {mesh.schema}")
                continue
            assert cursor.fetchone() == (0,), table
        # A tenant transaction that ended leaves nothing behind on the connection.
        cursor.execute("SELECT set_config('pingvas.user_id', %s, true)", (str(two_tenants[0]),))
        conn.commit()
        cursor.execute("SELECT count(*) FROM credit_entries")
        assert cursor.fetchone() == (0,)
    conn.close()


@pytest.mark.parametrize("role", SERVICE_ROLES)
@pytest.mark.parametrize("target", ["owner", "postgres"])
def test_no_service_role_can_set_role_to_the_owner_or_a_superuser(mesh: Any, role: str, target: str) -> None:
    name = DatabaseRoles.for_schema(mesh.schema).owner if target == "owner" else "postgres"
    with psycopg2.connect(service_url(mesh, role)) as conn, conn.cursor() as cursor:
        for statement in (f'SET ROLE "{name}"', f'SET SESSION AUTHORIZATION "{name}"'):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(statement)
            conn.rollback()
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (getattr(DatabaseRoles.for_schema(mesh.schema), role),)
    conn.close()


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_no_service_role_can_update_or_delete_the_ledger(
    mesh: Any, role: str, two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant = two_tenants[0]
    before = mesh.sql("SELECT id, amount FROM credit_entries WHERE user_id = %s ORDER BY id", str(tenant))
    assert before, "the tenant has ledger entries to attack"
    with psycopg2.connect(service_url(mesh, role)) as conn, conn.cursor() as cursor:
        for statement in (
            "UPDATE credit_entries SET amount = 1000000",
            "DELETE FROM credit_entries",
            "TRUNCATE credit_entries",
        ):
            cursor.execute(f"SET search_path TO {mesh.schema}")
            # In the transaction where the role sees the rows: a tenant's, or a declared system job.
            if role == "app":
                cursor.execute("SELECT set_config('pingvas.user_id', %s, true)", (str(tenant),))
            else:
                cursor.execute("SELECT set_config('pingvas.system_purpose', 'attack the ledger', true)")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(statement)
            conn.rollback()
    conn.close()
    assert (
        mesh.sql("SELECT id, amount FROM credit_entries WHERE user_id = %s ORDER BY id", str(tenant))
        == before
    )


def test_service_roles_are_neither_superuser_owner_bypassrls_nor_members(mesh: Any) -> None:
    roles = DatabaseRoles.for_schema(mesh.schema)
    rows = mesh.sql(
        """
        SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
               EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid) AS member,
               EXISTS (SELECT FROM pg_class c WHERE c.relowner = r.oid) AS owns
        FROM pg_roles r WHERE r.rolname IN (%s, %s, %s) ORDER BY r.rolname
        """,
        roles.app,
        roles.owner,
        roles.system,
    )
    flags = {row.pop("rolname"): row for row in rows}
    safe = {"rolsuper": False, "rolbypassrls": False, "rolcreaterole": False, "rolcreatedb": False}
    assert flags == {
        roles.app: {**safe, "member": False, "owns": False},
        roles.system: {**safe, "member": False, "owns": False},
        roles.owner: {**safe, "member": False, "owns": True},
    }
    tables = mesh.sql(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
        mesh.schema,
    )
    assert tables == [{"owner": roles.owner}]


def test_every_service_connects_as_a_service_role(mesh: Any, new_account: Any) -> None:
    new_account("traffic")  # the user service's sign-in, on both of its roles
    roles = DatabaseRoles.for_schema(mesh.schema)
    rows = mesh.sql(
        "SELECT DISTINCT application_name, usename FROM pg_stat_activity WHERE application_name LIKE 'pingvas-%%'"
    )
    by_process: dict[str, set[str]] = {}
    for row in rows:
        by_process.setdefault(row["application_name"], set()).add(row["usename"])
    # Each service holds its tenant and system connections from its start-up checks on; the
    # worker has the tenant role only.
    expected = {
        f"pingvas-{name}": {roles.app, roles.system} for name in ("user", "billing", "generation", "gallery")
    }
    assert {name: by_process[name] for name in expected} == expected
    assert by_process["pingvas-worker"] == {roles.app}


@pytest.fixture(scope="module")
def prod_environment(mesh: Any) -> Iterator[EnvironmentUrls]:
    """prod_pingvas beside the mesh's dev_pingvas in one cluster, set up by the same code as
    `pingvas up` (provision as the administrator, migrate as its owner)."""

    async def set_up() -> EnvironmentUrls:
        urls = await provision(
            mesh.admin_database_url,
            "prod_pingvas",
            RolePasswords(*(secrets.token_urlsafe(16) for _ in range(3))),
        )
        await upgrade(urls.owner, "prod_pingvas")
        return urls

    yield asyncio.run(set_up())


@pytest.mark.parametrize("role", SERVICE_ROLES)
def test_dev_roles_cannot_reach_prod_and_prod_roles_cannot_reach_dev(
    mesh: Any, prod_environment: EnvironmentUrls, role: str
) -> None:
    assert mesh.schema == "dev_pingvas"
    prod_url = getattr(prod_environment, role)
    for url, own, other in (
        (service_url(mesh, role), "dev_pingvas", "prod_pingvas"),
        (prod_url, "prod_pingvas", "dev_pingvas"),
    ):
        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {own}.credit_accounts")  # its own schema answers
            for table in ("users", "credit_entries", "generations"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege, match=f"schema {other}"):
                    cursor.execute(f"SELECT * FROM {other}.{table}")
                conn.rollback()
        conn.close()
