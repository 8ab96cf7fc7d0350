"""What opening a tenant transaction costs: the product's (`Database.tenant`, whose opening
set_config also checks the connection) against the same with the pool's pre-ping before it
(SQLAlchemy's pessimistic disconnect handling, which Pingvas used until the opening statement took
over the check), side by side in one run on an embedded PostgreSQL over TCP, as the mesh connects.

    .venv/bin/python bench/transaction_opening.py [--transactions 2000] [--rounds 3]

Each transaction is what the shortest of the mesh's are made of: BEGIN, the opening set_config,
one SELECT 1 and COMMIT. Each round runs the same number of transactions one after another with
each way in turn (who goes first alternates) and prints wall and client CPU milliseconds a
transaction (user + system of this process); the ratios are taken within a round. It asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.database import Database, asyncpg_url
from services.embedded.postgres import EmbeddedPostgres
from services.embedded.process import free_port

SCHEMA = "public"


def pre_pinged(url: str) -> Database:
    """A Database whose pool pings each connection it hands out before the transaction begins."""
    database = Database(url, schema=SCHEMA)
    database.engine = create_async_engine(
        asyncpg_url(url),
        pool_pre_ping=True,
        connect_args={"server_settings": {"search_path": SCHEMA, "application_name": "pre-ping"}},
    )
    return database


async def per_transaction(database: Database, transactions: int) -> tuple[float, float]:
    """Wall and CPU milliseconds a transaction, after a warm-up that fills the pool and the
    prepared statement caches."""
    user_id = uuid.uuid4()

    async def one() -> None:
        async with database.tenant(user_id) as conn:
            await conn.execute(text("SELECT 1"))

    for _ in range(200):
        await one()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(transactions):
        await one()
    return (
        (time.perf_counter() - wall) / transactions * 1000,
        (time.process_time() - cpu) / transactions * 1000,
    )


async def compare(url: str, transactions: int, rounds: int) -> None:
    ways = {
        "opening statement checks": Database(url, schema=SCHEMA),
        "pre-ping, then opening": pre_pinged(url),
    }
    names = list(ways)
    print(
        f"opening a tenant transaction: {transactions} transactions a way a round (BEGIN, set_config, SELECT 1, COMMIT)"
    )
    try:
        for round_index in range(rounds):
            order = names if round_index % 2 == 0 else names[::-1]
            measured = {name: await per_transaction(ways[name], transactions) for name in order}
            for name in names:
                wall, cpu = measured[name]
                print(f"  round {round_index + 1}  {name:<26} wall {wall:6.3f} ms   client CPU {cpu:6.3f} ms")
            (ours_wall, ours_cpu), (pinged_wall, pinged_cpu) = measured[names[0]], measured[names[1]]
            print(
                f"  round {round_index + 1}  pre-ping / ours            wall {pinged_wall / ours_wall:6.3f}      "
                f"client CPU {pinged_cpu / ours_cpu:6.3f}   (saved {pinged_wall - ours_wall:.3f} ms wall)"
            )
    finally:
        for database in ways.values():
            await database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pingvas-bench-") as home:
        password = secrets.token_urlsafe(16)
        postgres = EmbeddedPostgres(
            Path(home) / "data", free_port(), Path(home) / "logs", superuser_password=password
        )
        process = postgres.start()
        try:
            postgres.wait_ready()
            asyncio.run(compare(postgres.url, args.transactions, args.rounds))
        finally:
            process.stop()


if __name__ == "__main__":
    main()
