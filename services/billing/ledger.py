"""The credit ledger: append-only entries, and a balance projection that can never go negative.

Money moves only as `credit_entries` rows. Each entry is idempotent on its natural key
(user, kind, reference), and a generation's credits move in two phases, as TigerBeetle's
pending transfers do: a hold reserves them, then exactly one capture (spend at most the hold,
return the rest) or release (return all) resolves it. `credit_accounts` is the same information
summed up, updated in the entry's transaction under CHECK constraints, so that no interleaving
of requests can overdraw an account.

Every method takes the caller's open transaction: a hold commits or rolls back together with the
generation it pays for.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import FailedPrecondition, InsufficientCredits
from services.common.schema import credit_accounts, credit_entries


@dataclass(frozen=True)
class Balance:
    balance: int
    held: int

    @property
    def available(self) -> int:
        return max(0, self.balance - self.held)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    kind: str
    amount: int
    held_change: int
    reference: str
    created_at: datetime


def _append_entry_statement() -> sa.Select[Any]:
    """`CreditLedger._append` as one statement: lock the account row, insert the entry only if
    the projection would still hold (balance and holds never negative, holds within the balance),
    apply it to the projection only if it went in; answer what happened and the locked balance.
    Built once: composing it costs more CPU than the round trips it saves. Its parameters are
    named apart from the columns: an UPDATE takes an execution parameter named like a column as
    a value to SET."""
    user_id = sa.bindparam("entry_user_id", type_=credit_entries.c.user_id.type)
    amount = sa.bindparam("entry_amount", type_=sa.BigInteger)
    held_change = sa.bindparam("entry_held_change", type_=sa.BigInteger)
    account = (
        sa.select(credit_accounts.c.balance, credit_accounts.c.held)
        .where(credit_accounts.c.user_id == user_id)
        .with_for_update()
        .cte("account")
    )
    new_balance, new_held = account.c.balance + amount, account.c.held + held_change
    fits = sa.and_(new_balance >= 0, new_held >= 0, new_held <= new_balance)
    entry = (
        insert(credit_entries)
        .from_select(
            ["user_id", "kind", "amount", "held_change", "reference", "created_at"],
            sa.select(
                user_id,
                sa.bindparam("entry_kind", type_=sa.Text),
                amount,
                held_change,
                sa.bindparam("entry_reference", type_=sa.Text),
                sa.func.now(),
            ).where(fits),
        )
        .on_conflict_do_nothing()
        .returning(credit_entries.c.id)
        .cte("entry")
    )
    applied = (
        sa.update(credit_accounts)
        .where(credit_accounts.c.user_id == user_id, sa.exists(sa.select(entry.c.id)))
        .values(balance=credit_accounts.c.balance + amount, held=credit_accounts.c.held + held_change)
        .returning(credit_accounts.c.user_id)
        .cte("applied")
    )
    return sa.select(
        sa.select(sa.func.count()).select_from(entry).scalar_subquery().label("inserted"),
        sa.select(sa.func.count()).select_from(applied).scalar_subquery().label("applied"),
        sa.select(fits).scalar_subquery().label("fits"),
        sa.select(account.c.balance).scalar_subquery().label("balance"),
        sa.select(account.c.held).scalar_subquery().label("held"),
    )


_APPEND_ENTRY = _append_entry_statement()


def generation_reference(generation_id: uuid.UUID) -> str:
    return f"generation:{generation_id}"


class CreditLedger:
    async def open_account(self, conn: AsyncConnection, user_id: uuid.UUID) -> None:
        await conn.execute(
            insert(credit_accounts)
            .values(user_id=user_id, balance=0, held=0)
            .on_conflict_do_nothing(index_elements=["user_id"])
        )

    async def balance(self, conn: AsyncConnection, user_id: uuid.UUID) -> Balance:
        row = (
            await conn.execute(
                sa.select(credit_accounts.c.balance, credit_accounts.c.held).where(
                    credit_accounts.c.user_id == user_id
                )
            )
        ).one_or_none()
        return Balance(0, 0) if row is None else Balance(row.balance, row.held)

    async def _append(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        kind: str,
        reference: str,
        *,
        amount: int,
        held_change: int,
    ) -> bool:
        """Write one entry and apply it to the projection. False if the entry already existed.

        One statement, one round trip (`_APPEND_ENTRY`). An entry the projection refuses is never
        written, so the caller's transaction goes on untouched.
        """
        entry = {
            "user_id": user_id,
            "kind": kind,
            "reference": reference,
            "amount": amount,
            "held_change": held_change,
        }
        parameters = {f"entry_{name}": value for name, value in entry.items()}
        outcome = (await conn.execute(_APPEND_ENTRY, parameters)).one()
        if outcome.inserted:
            if outcome.applied != 1:  # the account row is locked: nothing can come between
                raise RuntimeError(f"credit {kind} {reference} went in without its projection")
            return True
        if outcome.fits:
            return False  # it fit, so only a conflict kept it out: the entry already exists
        # Refused by the projection, or a duplicate that no longer fits (a retried capture after
        # its hold was resolved, or one committed meanwhile). Only the unique indexes can tell.
        if await self._exists(conn, entry):
            return False
        current = Balance(outcome.balance or 0, outcome.held or 0)
        if held_change > 0:
            raise InsufficientCredits(needed=held_change, available=current.available)
        raise FailedPrecondition(
            f"credit {kind} of {amount} would overdraw the account (balance {current.balance}, "
            f"held {current.held})"
        )

    async def _exists(self, conn: AsyncConnection, entry: Mapping[str, object]) -> bool:
        """Whether the entry would conflict with one already written: an insert tried under a
        savepoint and always undone, so that the unique indexes, and nothing restated here,
        decide what a duplicate is. Only on the rare refused path."""
        savepoint = await conn.begin_nested()
        try:
            inserted = (
                await conn.execute(
                    insert(credit_entries)
                    .values(**entry, created_at=sa.func.now())
                    .on_conflict_do_nothing()
                    .returning(credit_entries.c.id)
                )
            ).one_or_none()
        finally:
            await savepoint.rollback()
        return inserted is None

    async def grant(self, conn: AsyncConnection, user_id: uuid.UUID, amount: int, reference: str) -> bool:
        if amount <= 0:
            raise ValueError("a grant adds credits")
        return await self._append(conn, user_id, "grant", reference, amount=amount, held_change=0)

    async def adjust(self, conn: AsyncConnection, user_id: uuid.UUID, amount: int, reference: str) -> bool:
        """An administrator's correction, positive or negative; never below zero."""
        return await self._append(conn, user_id, "adjustment", reference, amount=amount, held_change=0)

    async def reset(self, conn: AsyncConnection, user_id: uuid.UUID, target: int, reference: str) -> bool:
        """Set the balance to a plan's grant (renewal, upgrade). Credits held by running
        generations stay reserved: the balance never drops below them."""
        current = await self._locked_balance(conn, user_id)
        amount = max(target, current.held) - current.balance
        return await self._append(conn, user_id, "reset", reference, amount=amount, held_change=0)

    async def revoke(self, conn: AsyncConnection, user_id: uuid.UUID, reference: str) -> bool:
        """Take back every credit not held by a running generation (an expired subscription)."""
        current = await self._locked_balance(conn, user_id)
        return await self._append(
            conn, user_id, "revoke", reference, amount=-current.available, held_change=0
        )

    async def refund(self, conn: AsyncConnection, user_id: uuid.UUID, amount: int, reference: str) -> bool:
        """Take back up to `amount` unspent credits after a refunded order."""
        current = await self._locked_balance(conn, user_id)
        return await self._append(
            conn, user_id, "refund", reference, amount=-min(amount, current.available), held_change=0
        )

    async def _locked_balance(self, conn: AsyncConnection, user_id: uuid.UUID) -> Balance:
        """The balance, with the account row locked until the transaction ends, so that an amount
        computed from it is still right when its entry is applied."""
        await self.open_account(conn, user_id)
        row = (
            await conn.execute(
                sa.select(credit_accounts.c.balance, credit_accounts.c.held)
                .where(credit_accounts.c.user_id == user_id)
                .with_for_update()
            )
        ).one()
        return Balance(row.balance, row.held)

    async def hold(self, conn: AsyncConnection, user_id: uuid.UUID, reference: str, amount: int) -> None:
        if amount <= 0:
            raise ValueError("a hold reserves at least one credit")
        await self._append(conn, user_id, "hold", reference, amount=0, held_change=amount)

    async def _held_amount(self, conn: AsyncConnection, user_id: uuid.UUID, reference: str) -> int | None:
        return (
            await conn.execute(
                sa.select(credit_entries.c.held_change).where(
                    credit_entries.c.user_id == user_id,
                    credit_entries.c.kind == "hold",
                    credit_entries.c.reference == reference,
                )
            )
        ).scalar_one_or_none()

    async def capture(self, conn: AsyncConnection, user_id: uuid.UUID, reference: str, amount: int) -> int:
        """Spend up to the hold and return the rest in one entry. Returns the credits spent."""
        held = await self._held_amount(conn, user_id, reference)
        if held is None:
            raise FailedPrecondition(f"no hold {reference}")
        spent = max(0, min(amount, held))
        if not await self._append(conn, user_id, "capture", reference, amount=-spent, held_change=-held):
            raise FailedPrecondition(f"hold {reference} was already resolved")
        return spent

    async def release(self, conn: AsyncConnection, user_id: uuid.UUID, reference: str) -> None:
        """Return a hold's credits; a no-op if it was already resolved."""
        held = await self._held_amount(conn, user_id, reference)
        if held is None:
            return
        await self._append(conn, user_id, "release", reference, amount=0, held_change=-held)

    async def entries(
        self, conn: AsyncConnection, user_id: uuid.UUID, *, limit: int, before_id: int | None = None
    ) -> list[LedgerEntry]:
        query = (
            sa.select(credit_entries)
            .where(credit_entries.c.user_id == user_id)
            .order_by(credit_entries.c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(credit_entries.c.id < before_id)
        rows = (await conn.execute(query)).all()
        return [LedgerEntry(r.id, r.kind, r.amount, r.held_change, r.reference, r.created_at) for r in rows]
