"""PostgreSQL access: one async engine per process, and transactions that name their tenant.

Every query runs inside `Database.tenant(user_id)` (a transaction that sets `pingvas.user_id`,
the variable row-level security policies read) or, for the few cross-tenant jobs such as the
reconciler and sign-in by email, `Database.system(purpose)`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def asyncpg_url(url: str) -> str:
    """Accept the usual postgresql:// URL and drive it with asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def create_engine(url: str, *, schema: str, role: str = "", pool_size: int = 10) -> AsyncEngine:
    """An engine whose connections use `schema` and, if given, run as `role` (a startup
    parameter, so it holds for every statement on the connection)."""
    server_settings = {"search_path": schema, "application_name": "pingvas"}
    if role:
        server_settings["role"] = role
    return create_async_engine(
        asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": server_settings},
    )


# The role services run as: it may append to the ledger but never update or delete it.
APP_ROLE = "pingvas_app"


class Database:
    def __init__(self, url: str, *, schema: str, role: str = APP_ROLE, pool_size: int = 10) -> None:
        self.engine = create_engine(url, schema=schema, role=role, pool_size=pool_size)

    @asynccontextmanager
    async def tenant(self, user_id: uuid.UUID) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            await connection.execute(
                text("SELECT set_config('pingvas.user_id', :user_id, true)"), {"user_id": str(user_id)}
            )
            yield connection

    @asynccontextmanager
    async def system(self, purpose: str) -> AsyncIterator[AsyncConnection]:
        """A cross-tenant transaction; `purpose` is recorded so such access stays auditable."""
        async with self.engine.begin() as connection:
            await connection.execute(
                text("SELECT set_config('pingvas.system_purpose', :purpose, true)"), {"purpose": purpose}
            )
            yield connection

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
