"""Database set-up: the environment's roles (`provision`, as a cluster administrator) and its
migrations (`upgrade`, as the environment's owner role). `pingvas up` runs both; `pingvas db
upgrade` runs the second for a deployment's own job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.database import DatabaseRoles, create_engine

_HERE = Path(__file__).resolve().parent


def alembic_config() -> Config:
    return Config(str(_HERE / "alembic.ini"))


def url_for_role(url: str, role: str, password: str) -> str:
    """`url` (any role's) with `role` and `password` as its credentials: same server, same database."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RolePasswords:
    owner: str
    app: str
    system: str


@dataclass(frozen=True)
class EnvironmentUrls:
    """Where each role of one environment connects: migrations as `owner`, services as `app`
    (DATABASE_URL) and `system` (SYSTEM_DATABASE_URL)."""

    owner: str
    app: str
    system: str


def _literal(value: str) -> str:
    # Role DDL takes no bind parameters; standard_conforming_strings makes doubling quotes enough.
    return "'" + value.replace("'", "''") + "'"


# A login role and nothing more: no superuser, no RLS bypass, no role or database creation, and
# NOINHERIT so that a membership granted by mistake still would not lend its privileges.
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"


async def _ensure_role(connection: AsyncConnection, role: str, password: str) -> None:
    exists = (
        await connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role})
    ).first()
    verb = "ALTER" if exists else "CREATE"
    await connection.execute(text(f'{verb} ROLE "{role}" {_ROLE_ATTRIBUTES} PASSWORD {_literal(password)}'))
    # Not a member of any role: SET ROLE to the owner, or to a superuser, has nothing to reach.
    granted = await connection.execute(
        text(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = :role"
        ),
        {"role": role},
    )
    for (group,) in granted.all():
        await connection.execute(text(f'REVOKE "{group}" FROM "{role}"'))


async def provision(admin_url: str, schema: str, passwords: RolePasswords) -> EnvironmentUrls:
    """Create (or bring up to date) the environment's three roles and its schema, owned by its
    owner role. `admin_url` is a superuser or a role with CREATEROLE; it is used for this only.

    A schema that an earlier version created as the administrator is handed to the owner, with
    its tables, so that the owner can run the migrations that follow.
    """
    roles = DatabaseRoles.for_schema(schema)
    engine = create_engine(admin_url, schema=schema, pool_size=1)
    try:
        async with engine.begin() as connection:
            for role, password in (
                (roles.owner, passwords.owner),
                (roles.app, passwords.app),
                (roles.system, passwords.system),
            ):
                await _ensure_role(connection, role, password)
            await connection.execute(
                text(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{roles.owner}"')
            )
            await connection.execute(text(f'ALTER SCHEMA "{schema}" OWNER TO "{roles.owner}"'))
            await connection.execute(
                text(
                    f"""
                    DO $$
                    DECLARE relation record;
                    BEGIN
                        FOR relation IN
                            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p')
                              AND c.relowner <> '{roles.owner}'::regrole
                        LOOP
                            EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', '{schema}', relation.relname,
                                           '{roles.owner}');
                        END LOOP;
                    END
                    $$
                    """
                )
            )
    finally:
        await engine.dispose()
    return EnvironmentUrls(
        owner=url_for_role(admin_url, roles.owner, passwords.owner),
        app=url_for_role(admin_url, roles.app, passwords.app),
        system=url_for_role(admin_url, roles.system, passwords.system),
    )


async def upgrade(owner_url: str, schema: str) -> None:
    """Migrate `schema` to the newest revision, connected as the environment's owner role
    (`provision` created the schema and the roles the migrations grant to).

    dev and prod share one PostgreSQL cluster but never a schema (the seed's dev_pingvas /
    prod_pingvas split), so the version table lives in the schema too.
    """
    engine = create_engine(owner_url, schema=schema, pool_size=1)
    try:
        async with engine.begin() as connection:
            config = alembic_config()
            config.attributes["schema"] = schema
            config.attributes["roles"] = DatabaseRoles.for_schema(schema)

            def run(sync_connection: object) -> None:
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")

            await connection.run_sync(run)
    finally:
        await engine.dispose()
