"""PostgreSQL access: one async engine per role per process, and transactions that name their tenant.

Every query runs inside `Database.tenant(user_id)`, a transaction that sets `pingvas.user_id`,
which the row-level security policies of migration 0006 read; the tenant role sees no tenant row
outside one. The few cross-tenant jobs (the reconciler, billing's webhooks and jobs, sign-in by
email, signed image URLs) run in `Database.system(purpose)`, on a connection of the environment's
system role, whose policies admit it only while a purpose is set.

Each environment (a schema: dev_pingvas, prod_pingvas) has its own three roles, named after it by
`DatabaseRoles`; services connect as `app` and `system`, never as the owner or a superuser.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Executable, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def asyncpg_url(url: str) -> str:
    """Accept the usual postgresql:// URL and drive it with asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def create_engine(
    url: str, *, schema: str, pool_size: int = 10, application_name: str = "pingvas"
) -> AsyncEngine:
    """An engine whose connections use `schema`. It runs as the URL's user and nothing else: the
    roles services log in as are members of no role, so they cannot SET ROLE to another."""
    return create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: a transaction's first statement checks its connection instead (`_begun`),
        # one round trip fewer on every transaction.
        # application_name says which process holds a connection (pg_stat_activity).
        connect_args={"server_settings": {"search_path": schema, "application_name": application_name}},
    )


@dataclass(frozen=True)
class DatabaseRoles:
    """The login roles of one environment, named after its schema so that dev's and prod's never
    meet: roles are cluster-wide, and each environment's are granted on its own schema only.

    - `owner` owns the schema and its tables and runs the migrations; no service connects as it.
    - `app` is the tenant role: row-level security shows it only the rows of the transaction's
      `pingvas.user_id`, and it may append to the ledger but never rewrite it.
    - `system` does the work that spans tenants, inside `Database.system(purpose)`, with the
      grants migration 0006 lists (no DELETE anywhere, no UPDATE on the ledger).

    None is a superuser, has BYPASSRLS, CREATEROLE or CREATEDB, or is a member of another role.
    """

    owner: str
    app: str
    system: str

    @classmethod
    def for_schema(cls, schema: str) -> DatabaseRoles:
        return cls(owner=f"{schema}_owner", app=f"{schema}_app", system=f"{schema}_system")


@dataclass(frozen=True)
class RoleCheck:
    """A role a process connects as, and what would let it escape row-level security."""

    name: str
    problems: tuple[str, ...]


_ROLE_CHECK = text(
    """
    SELECT r.rolname AS name, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls,
           EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema()
                     AND pg_has_role(r.oid, c.relowner, 'MEMBER')) AS owner,
           EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid) AS member
    FROM pg_roles r WHERE r.rolname = current_user
    """
)


_SET_CONFIG = text("SELECT set_config(:setting, :value, true)")
# The opening statement of a transaction that sets nothing: only the connection's check.
_NO_SETTING = text("SELECT")


async def _begun(
    engine: AsyncEngine, opening: Executable, parameters: Mapping[str, str]
) -> tuple[AsyncConnection, AbstractAsyncContextManager[AsyncConnection]]:
    """A connection in a transaction whose first statement, `opening`, has run, and the context
    that ends that transaction.

    The opening statement also proves the connection alive, the check the pool's pre-ping would
    make in a round trip of its own. A pooled connection found dead (PostgreSQL restarted since
    it was pooled) invalidates it and every connection pooled before it, and the transaction
    begins once more on a new one; a second failure is the database's, and raises."""
    for attempt in (1, 2):
        transaction = engine.begin()
        connection = await transaction.__aenter__()
        try:
            await connection.execute(opening, dict(parameters))
        except BaseException as error:
            await transaction.__aexit__(type(error), error, error.__traceback__)
            if attempt == 1 and isinstance(error, DBAPIError) and error.connection_invalidated:
                log.info("a pooled database connection was dead (%s); beginning on a new one", error.orig)
                continue
            raise
        return connection, transaction
    raise AssertionError("unreachable: the second attempt returns or raises")


@asynccontextmanager
async def _transaction(
    engine: AsyncEngine, setting: str | None = None, value: str = ""
) -> AsyncIterator[AsyncConnection]:
    """A transaction that first sets `setting` (whom it is for, which row-level security reads),
    transaction-local (true): a pooled connection carries no tenant into its next use. Without a
    setting it opens with an empty SELECT, there only to check the connection (`_begun`)."""
    opening, parameters = (
        (_SET_CONFIG, {"setting": setting, "value": value}) if setting else (_NO_SETTING, {})
    )
    async with AsyncExitStack() as stack:
        # Untraced: BEGIN and the opening statement open every transaction alike. Their spans
        # would say nothing its statements and COMMIT do not, and even a span the sampler drops
        # costs each of them the instrumentation's work.
        with suppress_instrumentation():
            connection, transaction = await _begun(engine, opening, parameters)
        stack.push_async_exit(transaction)
        yield connection


class Database:
    """The tenant engine (DATABASE_URL, the `app` role) and, in processes that do cross-tenant
    work, the system engine (SYSTEM_DATABASE_URL, the `system` role). A GPU worker has only the
    first: everything it changes belongs to the job's user."""

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        system_url: str | None = None,
        pool_size: int = 10,
        application_name: str = "pingvas",
    ) -> None:
        self.engine = create_engine(
            url, schema=schema, pool_size=pool_size, application_name=application_name
        )
        self.system_engine = (
            create_engine(
                system_url,
                schema=schema,
                pool_size=max(1, pool_size // 2),
                application_name=application_name,
            )
            if system_url is not None
            else None
        )

    @asynccontextmanager
    async def tenant(self, user_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
        async with _transaction(self.engine, "pingvas.user_id", str(user_id)) as connection:
            yield connection

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[AsyncConnection]:
        """A transaction of the tenant role that names no tenant, for what belongs to no one (the
        published signing keys): row-level security shows it no tenant row at all."""
        async with _transaction(self.engine) as connection:
            yield connection

    @asynccontextmanager
    async def system(self, purpose: str) -> AsyncIterator[AsyncConnection]:
        """A cross-tenant transaction; `purpose` is recorded (and required by the system role's
        policies) so such access stays deliberate and auditable."""
        if self.system_engine is None:
            raise RuntimeError(f"{purpose}: this process has no system database role (SYSTEM_DATABASE_URL)")
        async with _transaction(self.system_engine, "pingvas.system_purpose", purpose) as connection:
            yield connection

    async def server_setting(self, name: str) -> str:
        """A setting of the server, as `SHOW` reports it (e.g. fsync), asked over the tenant role."""
        async with self.engine.connect() as connection:
            return str(
                (await connection.execute(text("SELECT current_setting(:name)"), {"name": name})).scalar_one()
            )

    async def roles_in_use(self) -> list[RoleCheck]:
        """The roles this process connects as, each with what is wrong with it (if anything)."""
        checks = []
        for engine in (self.engine, self.system_engine):
            if engine is None:
                continue
            async with engine.connect() as connection:
                row = (await connection.execute(_ROLE_CHECK)).one()
            problems = [
                what
                for what, wrong in (
                    ("is a superuser", row.superuser),
                    ("has BYPASSRLS", row.bypassrls),
                    ("owns (or is a member of the owner of) the tables", row.owner),
                    ("is a member of another role", row.member),
                )
                if wrong
            ]
            checks.append(RoleCheck(row.name, tuple(problems)))
        return checks

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        if self.system_engine is not None:
            async with self.system_engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        if self.system_engine is not None:
            await self.system_engine.dispose()
