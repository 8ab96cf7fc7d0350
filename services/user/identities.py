"""Provider identities: which user a Google or Discord account signs in as.

An identity is found by its provider's stable subject, never by email: an address can change
hands, a subject cannot. The first sign-in of a subject links it to the user holding the same
email, or to a new user, and only when the provider says the email is verified; an unverified
one is refused (`EmailNotVerified`), because a user's email in Pingvas is always a verified one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import FailedPrecondition
from services.common.schema import oauth_identities


@dataclass(frozen=True)
class ProviderIdentity:
    """Who the provider says signed in, after its answer was verified."""

    provider: str
    subject: str
    email: str | None
    email_verified: bool


class EmailNotVerified(FailedPrecondition):
    """A first sign-in whose provider does not vouch for the account's email."""

    reason = "EMAIL_NOT_VERIFIED"


class IdentityRepository:
    """The SQL of provider identities."""

    async def user_of(self, conn: AsyncConnection, provider: str, subject: str) -> uuid.UUID | None:
        return (
            await conn.execute(
                sa.select(oauth_identities.c.user_id).where(
                    oauth_identities.c.provider == provider, oauth_identities.c.subject == subject
                )
            )
        ).scalar_one_or_none()

    async def link(
        self, conn: AsyncConnection, *, provider: str, subject: str, user_id: uuid.UUID, email: str
    ) -> uuid.UUID:
        """Link the subject to `user_id`, unless a concurrent first sign-in linked it first;
        either way, the user it is linked to."""
        await conn.execute(
            insert(oauth_identities)
            .values(provider=provider, subject=subject, user_id=user_id, email=email)
            .on_conflict_do_nothing(index_elements=["provider", "subject"])
        )
        linked = await self.user_of(conn, provider, subject)
        assert linked is not None, "the identity was just inserted or already there"
        return linked
