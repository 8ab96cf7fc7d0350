"""Database migrations (Alembic), applied with `pingvas db upgrade` and by `pingvas up`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from services.common.database import create_engine

_HERE = Path(__file__).resolve().parent


def alembic_config() -> Config:
    return Config(str(_HERE / "alembic.ini"))


async def upgrade(database_url: str, schema: str) -> None:
    """Create `schema` if needed and migrate it to the newest revision.

    dev and prod share one PostgreSQL cluster but never a schema (the seed's dev_pingvas /
    prod_pingvas split), so the version table lives in the schema too.
    """
    engine = create_engine(database_url, schema=schema)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            config = alembic_config()
            config.attributes["schema"] = schema

            def run(sync_connection: object) -> None:
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")

            await connection.run_sync(run)
    finally:
        await engine.dispose()
