"""The credit ledger's entries against a real PostgreSQL, through the service roles: each entry
is one statement, a refused one leaves nothing behind and the transaction usable, and a
repeated one is told apart from an overdraft whatever the balance is by then."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from services.billing.ledger import Balance, CreditLedger
from services.common.database import Database
from services.common.errors import FailedPrecondition, InsufficientCredits
from services.common.schema import credit_entries, users

ledger = CreditLedger()


@pytest.fixture
async def user_id(database: Database, superuser: Database) -> AsyncIterator[uuid.UUID]:
    """A fresh user with an open account and 100 credits."""
    new_id = uuid.uuid4()
    async with superuser.system("test setup") as conn:
        await conn.execute(sa.insert(users).values(id=new_id, email=f"{new_id}@example.com", plan="pro"))
    async with database.system("test grant") as conn:
        await ledger.open_account(conn, new_id)
        assert await ledger.grant(conn, new_id, 100, "grant:start")
    yield new_id


@contextmanager
def statements_of(database: Database) -> Iterator[list[str]]:
    """The first word of each statement the tenant engine sends, savepoints included."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(str(args[2]).split()[0].upper())

    engine = database.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


async def entries_of(database: Database, user_id: uuid.UUID) -> list[tuple[str, int, int, str]]:
    async with database.tenant(user_id) as conn:
        rows = await conn.execute(
            sa.select(
                credit_entries.c.kind,
                credit_entries.c.amount,
                credit_entries.c.held_change,
                credit_entries.c.reference,
            )
            .where(credit_entries.c.user_id == user_id)
            .order_by(credit_entries.c.id)
        )
        return [tuple(row) for row in rows]


async def test_a_hold_and_its_capture_are_one_statement_each(database: Database, user_id: uuid.UUID) -> None:
    async with database.tenant(user_id) as conn:
        with statements_of(database) as sent:
            await ledger.hold(conn, user_id, "generation:a", 30)
        assert sent == ["WITH"]
        with statements_of(database) as sent:
            # The hold's amount is read first (a SELECT), then the entry is one statement.
            assert await ledger.capture(conn, user_id, "generation:a", 12) == 12
        assert sent == ["SELECT", "WITH"]
        assert await ledger.balance(conn, user_id) == Balance(balance=88, held=0)


async def test_a_repeated_entry_is_written_once(database: Database, user_id: uuid.UUID) -> None:
    async with database.system("test grant") as conn:
        assert not await ledger.grant(conn, user_id, 100, "grant:start")
        assert await ledger.grant(conn, user_id, 5, "grant:bonus")
        assert not await ledger.grant(conn, user_id, 5, "grant:bonus")
    async with database.tenant(user_id) as conn:
        await ledger.hold(conn, user_id, "generation:b", 10)
        await ledger.hold(conn, user_id, "generation:b", 10)  # a retried hold holds nothing more
        assert await ledger.balance(conn, user_id) == Balance(balance=105, held=10)
    assert await entries_of(database, user_id) == [
        ("grant", 100, 0, "grant:start"),
        ("grant", 5, 0, "grant:bonus"),
        ("hold", 0, 10, "generation:b"),
    ]


async def test_a_hold_past_the_balance_writes_nothing_and_the_transaction_goes_on(
    database: Database, user_id: uuid.UUID
) -> None:
    async with database.tenant(user_id) as conn:
        await ledger.hold(conn, user_id, "generation:c", 70)
        with pytest.raises(InsufficientCredits) as refused:
            await ledger.hold(conn, user_id, "generation:d", 31)
        assert (refused.value.needed, refused.value.available) == (31, 30)
        await ledger.hold(conn, user_id, "generation:e", 30)  # the same transaction, still usable
    async with database.tenant(user_id) as conn:
        assert await ledger.balance(conn, user_id) == Balance(balance=100, held=100)
    assert [entry[3] for entry in await entries_of(database, user_id)] == [
        "grant:start",
        "generation:c",
        "generation:e",
    ]


async def test_a_capture_after_its_release_is_already_resolved_not_an_overdraft(
    database: Database, user_id: uuid.UUID
) -> None:
    # After the release the hold's credits are no longer held, so the capture no longer fits the
    # projection; it is still a second resolution of the same hold, and says so.
    async with database.tenant(user_id) as conn:
        await ledger.hold(conn, user_id, "generation:f", 40)
        await ledger.release(conn, user_id, "generation:f")
        with pytest.raises(FailedPrecondition, match="already resolved"):
            await ledger.capture(conn, user_id, "generation:f", 40)
        await ledger.release(conn, user_id, "generation:f")  # a no-op
        assert await ledger.balance(conn, user_id) == Balance(balance=100, held=0)
    assert [entry[0] for entry in await entries_of(database, user_id)] == ["grant", "hold", "release"]


async def test_an_overdrawing_adjustment_is_refused_and_names_the_balance(
    database: Database, user_id: uuid.UUID
) -> None:
    async with database.tenant(user_id) as conn:
        await ledger.hold(conn, user_id, "generation:g", 60)
    async with database.system("test adjustment") as conn:
        with pytest.raises(FailedPrecondition, match=r"balance 100, held 60"):
            await ledger.adjust(conn, user_id, -50, "adjustment:too-much")
        assert await ledger.adjust(conn, user_id, -40, "adjustment:fits")
        assert await ledger.balance(conn, user_id) == Balance(balance=60, held=60)


async def test_concurrent_holds_never_hold_more_than_the_balance(
    database: Database, user_id: uuid.UUID
) -> None:
    async def hold(index: int) -> bool:
        try:
            async with database.tenant(user_id) as conn:
                await ledger.hold(conn, user_id, f"generation:many-{index}", 7)
            return True
        except InsufficientCredits:
            return False

    outcomes = await asyncio.gather(*(hold(index) for index in range(30)))
    assert sum(outcomes) == 14  # 100 // 7
    async with database.tenant(user_id) as conn:
        assert await ledger.balance(conn, user_id) == Balance(balance=100, held=98)
    assert sum(entry[2] for entry in await entries_of(database, user_id)) == 98
