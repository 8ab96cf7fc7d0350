"""User accounts: sign-in creates or finds the user, and a new user gets the free grant once."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.ledger import Balance, CreditLedger
from services.billing.plans import parse_plan
from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput, NotFound
from services.common.schema import users
from services.user.identities import EmailNotVerified, IdentityRepository, ProviderIdentity

# Deliberately simple: the real proof of an address is the OAuth provider's verified email.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    email: str
    plan: str
    created_at: datetime
    credits: Balance


def normalize_email(email: str, field: str = "email") -> str:
    normalized = email.strip().lower()
    if not _EMAIL.match(normalized):
        raise InvalidInput([FieldViolation(field, "must be an email address like name@example.com")])
    return normalized


async def _user_with_email(conn: AsyncConnection, email: str) -> uuid.UUID:
    """The user holding `email`, created if there is none."""
    await conn.execute(
        insert(users)
        .values(id=uuid.uuid4(), email=email, plan="free", created_at=sa.func.now())
        .on_conflict_do_nothing(index_elements=["email"])
    )
    user_id: uuid.UUID = (
        await conn.execute(sa.select(users.c.id).where(users.c.email == email))
    ).scalar_one()
    return user_id


class UserAccounts:
    def __init__(
        self,
        database: Database,
        ledger: CreditLedger,
        *,
        free_grant_credits: int,
        identities: IdentityRepository | None = None,
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.free_grant_credits = free_grant_credits
        self.identities = identities or IdentityRepository()

    async def sign_in(self, email: str) -> Account:
        """Find the user by email, creating them (with their free grant) on first sign-in."""
        email = normalize_email(email)
        async with self.database.system("sign-in by email") as conn:
            user_id = await _user_with_email(conn, email)
        return await self._welcome(user_id)

    async def sign_in_with(self, identity: ProviderIdentity) -> Account:
        """The user a verified provider identity signs in as (services/user/identities.py): found
        by its subject; on its first sign-in, linked by verified email to the user holding it,
        or to a new user."""
        async with self.database.system("sign-in by provider identity") as conn:
            user_id = await self.identities.user_of(conn, identity.provider, identity.subject)
            if user_id is None:
                if not (identity.email and identity.email_verified):
                    raise EmailNotVerified(
                        f"your {identity.provider.title()} account has no verified email address: "
                        f"verify it with {identity.provider.title()}, then sign in again"
                    )
                email = normalize_email(identity.email)
                user_id = await self.identities.link(
                    conn,
                    provider=identity.provider,
                    subject=identity.subject,
                    user_id=await _user_with_email(conn, email),
                    email=email,
                )
        return await self._welcome(user_id)

    async def _welcome(self, user_id: uuid.UUID) -> Account:
        """A signed-in user's account, with its free grant (given once) on the first sign-in."""
        async with self.database.tenant(user_id) as conn:
            await self.ledger.open_account(conn, user_id)
            if self.free_grant_credits > 0:
                # Idempotent on its reference: signing in again never grants twice.
                await self.ledger.grant(conn, user_id, self.free_grant_credits, "signup")
        return await self.get(user_id)

    async def get(self, user_id: uuid.UUID) -> Account:
        async with self.database.tenant(user_id) as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).one_or_none()
            if row is None:
                raise NotFound(f"user {user_id} not found")
            credits = await self.ledger.balance(conn, user_id)
        return Account(row.id, row.email, row.plan, row.created_at, credits)

    async def find_by_email(self, email: str) -> Account:
        email = normalize_email(email)
        async with self.database.system("admin lookup by email") as conn:
            user_id = (
                await conn.execute(sa.select(users.c.id).where(users.c.email == email))
            ).scalar_one_or_none()
        if user_id is None:
            raise NotFound(f"no user with email {email}")
        return await self.get(user_id)

    async def set_plan(self, email: str, plan: str) -> Account:
        try:
            plan = parse_plan(plan)
        except ValueError as error:
            raise InvalidInput([FieldViolation("plan", str(error))]) from None
        account = await self.find_by_email(email)
        async with self.database.tenant(account.id) as conn:
            await conn.execute(sa.update(users).where(users.c.id == account.id).values(plan=plan))
        return await self.get(account.id)

    async def adjust_credits(self, email: str, amount: int, reference: str) -> Account:
        """An administrator's grant (positive) or correction (negative, never below zero)."""
        if amount == 0:
            raise InvalidInput([FieldViolation("amount", "must not be zero")])
        account = await self.find_by_email(email)
        async with self.database.tenant(account.id) as conn:
            await self.ledger.open_account(conn, account.id)
            if amount > 0:
                await self.ledger.grant(conn, account.id, amount, reference)
            else:
                await self.ledger.adjust(conn, account.id, amount, reference)
        return await self.get(account.id)
