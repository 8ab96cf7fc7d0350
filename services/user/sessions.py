"""Sessions: a sign-in's refresh tokens, rotated on every use and stored as SHA-256 only.

Every refresh token descends from one sign-in, its family. Using a token spends it and returns its
successor; using a spent one again means two parties hold the family (a stolen token), so the
whole family is revoked (Auth0's reuse detection). One exception: within `reuse_interval_seconds`
of the spend, the same successor is returned again, so two tabs refreshing at once both stay
signed in. The successor is derived from the spent token with the deployment's secret
(HMAC-SHA256), which is how it can be returned again without its plaintext ever being stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.database import Database
from services.common.errors import Unauthenticated
from services.common.schema import refresh_tokens

log = logging.getLogger(__name__)

INVALID_REFRESH_TOKEN = "invalid or expired refresh token"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    user_id: uuid.UUID
    expires_in: int


class RefreshTokenRepository:
    """The SQL of refresh tokens."""

    async def insert(
        self,
        conn: AsyncConnection,
        *,
        token_id: uuid.UUID,
        family_id: uuid.UUID,
        user_id: uuid.UUID,
        hashed: bytes,
        ttl_seconds: int,
    ) -> None:
        await conn.execute(
            sa.insert(refresh_tokens).values(
                id=token_id,
                family_id=family_id,
                user_id=user_id,
                token_hash=hashed,
                issued_at=sa.func.now(),
                expires_at=sa.func.now() + timedelta(seconds=ttl_seconds),
            )
        )

    async def lock_by_hash(self, conn: AsyncConnection, hashed: bytes) -> sa.Row[Any] | None:
        return (
            await conn.execute(
                sa.select(refresh_tokens, sa.func.now().label("now"))
                .where(refresh_tokens.c.token_hash == hashed)
                .with_for_update()
            )
        ).one_or_none()

    async def mark_rotated(self, conn: AsyncConnection, token_id: uuid.UUID, successor: uuid.UUID) -> None:
        await conn.execute(
            sa.update(refresh_tokens)
            .where(refresh_tokens.c.id == token_id)
            .values(rotated_at=sa.func.now(), replaced_by=successor)
        )

    async def successor_expires_in(self, conn: AsyncConnection, successor: uuid.UUID) -> int:
        expires_at, now = (
            await conn.execute(
                sa.select(refresh_tokens.c.expires_at, sa.func.now()).where(refresh_tokens.c.id == successor)
            )
        ).one()
        return max(0, int((expires_at - now).total_seconds()))

    async def revoke_family(self, conn: AsyncConnection, family_id: uuid.UUID) -> None:
        await conn.execute(
            sa.update(refresh_tokens)
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        )


class Sessions:
    def __init__(
        self,
        database: Database,
        *,
        secret: str,
        ttl_seconds: int,
        reuse_interval_seconds: float,
        repository: RefreshTokenRepository | None = None,
    ) -> None:
        self.database = database
        self._secret = secret.encode()
        self.ttl_seconds = ttl_seconds
        self.reuse_interval = timedelta(seconds=reuse_interval_seconds)
        self.repository = repository or RefreshTokenRepository()

    def _successor_of(self, token: str) -> str:
        digest = hmac.new(self._secret, b"refresh-successor:" + token.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def start(self, user_id: uuid.UUID) -> IssuedRefreshToken:
        """The first refresh token of a new sign-in (a new family)."""
        token = secrets.token_urlsafe(32)
        async with self.database.tenant(user_id) as conn:
            await self.repository.insert(
                conn,
                token_id=uuid.uuid4(),
                family_id=uuid.uuid4(),
                user_id=user_id,
                hashed=token_hash(token),
                ttl_seconds=self.ttl_seconds,
            )
        return IssuedRefreshToken(token, user_id, self.ttl_seconds)

    async def refresh(self, token: str) -> IssuedRefreshToken:
        """Spend `token` and return its successor (see the module docstring)."""
        successor = self._successor_of(token)
        reused_family: uuid.UUID | None = None
        # Looking a token up by its hash spans tenants: the token is the only credential here.
        async with self.database.system("refresh a session") as conn:
            row = await self.repository.lock_by_hash(conn, token_hash(token))
            if row is None or row.revoked_at is not None or row.expires_at <= row.now:
                raise Unauthenticated(INVALID_REFRESH_TOKEN)
            if row.rotated_at is None:
                successor_id = uuid.uuid4()
                await self.repository.insert(
                    conn,
                    token_id=successor_id,
                    family_id=row.family_id,
                    user_id=row.user_id,
                    hashed=token_hash(successor),
                    ttl_seconds=self.ttl_seconds,
                )
                await self.repository.mark_rotated(conn, row.id, successor_id)
                return IssuedRefreshToken(successor, row.user_id, self.ttl_seconds)
            if row.now - row.rotated_at <= self.reuse_interval and row.replaced_by is not None:
                expires_in = await self.repository.successor_expires_in(conn, row.replaced_by)
                return IssuedRefreshToken(successor, row.user_id, expires_in)
            await self.repository.revoke_family(conn, row.family_id)
            reused_family = row.family_id
        # Raised after the commit: the revocation must stand.
        log.warning("a spent refresh token was used again: revoked its family %s", reused_family)
        raise Unauthenticated(INVALID_REFRESH_TOKEN)

    async def end(self, token: str) -> None:
        """Logout: revoke the token's whole family."""
        async with self.database.system("log out a session") as conn:
            row = await self.repository.lock_by_hash(conn, token_hash(token))
            if row is None:
                raise Unauthenticated(INVALID_REFRESH_TOKEN)
            await self.repository.revoke_family(conn, row.family_id)
