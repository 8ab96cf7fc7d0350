"""A user's API keys: create (the secret and the webhook signing secret are returned once), list,
revoke (migrations 0010, 0013).

Keys are the user's own tenant data, reached only in the user's transaction, so another user's
key is indistinguishable from one that does not exist. Revoking is a conditional UPDATE that sets
`revoked_at`: the row stays, and as every service looks keys up on every call with no cache
(services/common/api_keys.py), the key fails everywhere once the revocation commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.access import KNOWN_SCOPES
from services.common.api_keys import display_prefix, new_secret, secret_hash
from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput, NotFound, Violations
from services.common.pagination import Position, decode_page_token, newest_first, page_limit, split_page
from services.common.schema import api_keys
from services.webhooks.endpoints import WebhookUrlRules, new_signing_secret
from services.webhooks.sealing import SecretSealer

RESOURCE_PREFIX = "apikeys/"


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    display_name: str
    scopes: tuple[str, ...]
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    default_webhook_url: str | None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> ApiKey:
        return cls(
            id=row.id,
            display_name=row.display_name,
            scopes=tuple(row.scopes),
            prefix=row.prefix,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            default_webhook_url=row.default_webhook_url,
        )


@dataclass(frozen=True)
class CreatedApiKey:
    key: ApiKey
    # Returned this once and never stored.
    secret: str
    # Returned this once; stored sealed, because signing needs it (an HMAC key cannot be a
    # hash). None when this process cannot seal one (the admin CLI without PINGVAS_JWT_SECRET).
    webhook_signing_secret: str | None


def parse_key_name(name: str, field: str = "name") -> uuid.UUID:
    """`apikeys/{id}` -> id."""
    try:
        if not name.startswith(RESOURCE_PREFIX):
            raise ValueError(name)
        return uuid.UUID(name.removeprefix(RESOURCE_PREFIX))
    except ValueError:
        raise InvalidInput([FieldViolation(field, "must be an API key's name, apikeys/{id}")]) from None


class ApiKeyRepository:
    """The SQL of a user's keys; every method runs in the user's tenant transaction."""

    async def insert(
        self,
        conn: AsyncConnection,
        *,
        user_id: uuid.UUID,
        display_name: str,
        scopes: Sequence[str],
        secret: str,
        expires_at: datetime | None,
        default_webhook_url: str | None,
        sealed_webhook_signing_secret: str | None,
    ) -> ApiKey:
        row = (
            await conn.execute(
                sa.insert(api_keys)
                .values(
                    id=uuid.uuid4(),
                    user_id=user_id,
                    display_name=display_name,
                    prefix=display_prefix(secret),
                    secret_hash=secret_hash(secret),
                    scopes=list(scopes),
                    created_at=sa.func.now(),
                    expires_at=expires_at,
                    default_webhook_url=default_webhook_url,
                    webhook_signing_secret=sealed_webhook_signing_secret,
                )
                .returning(api_keys)
            )
        ).one()
        return ApiKey.from_row(row)

    async def page(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: Position | None,
    ) -> list[ApiKey]:
        query = sa.select(api_keys).where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
        query = newest_first(query, api_keys, after=after, limit=limit)
        return [ApiKey.from_row(row) for row in (await conn.execute(query)).all()]

    async def replace_webhook_secret(
        self, conn: AsyncConnection, user_id: uuid.UUID, key_id: uuid.UUID, sealed_secret: str
    ) -> bool:
        """Whether the user's live key got the new sealed secret (False: no such live key)."""
        replaced = await conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
            .values(webhook_signing_secret=sealed_secret)
            .returning(api_keys.c.id)
        )
        return replaced.one_or_none() is not None

    async def revoke(self, conn: AsyncConnection, user_id: uuid.UUID, key_id: uuid.UUID) -> bool:
        """Whether this call revoked it (False: no such key of the user's, or revoked already)."""
        revoked = await conn.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
            .returning(api_keys.c.id)
        )
        return revoked.one_or_none() is not None


class ApiKeys:
    def __init__(
        self,
        database: Database,
        repository: ApiKeyRepository | None = None,
        *,
        webhook_rules: WebhookUrlRules | None = None,
        sealer: SecretSealer | None = None,
    ) -> None:
        self.database = database
        self.repository = repository or ApiKeyRepository()
        # None: no default webhook may be set (the admin CLI's keys).
        self.webhook_rules = webhook_rules
        # None: keys get no webhook signing secret, and cannot carry webhooks.
        self.sealer = sealer

    async def create(
        self,
        user_id: uuid.UUID,
        *,
        display_name: str,
        scopes: Sequence[str],
        expires_at: datetime | None,
        default_webhook_url: str = "",
        now: datetime | None = None,
    ) -> CreatedApiKey:
        violations = Violations()
        if not display_name.strip():
            violations.add("display_name", "must not be blank")
        for index, scope in enumerate(scopes):
            if scope not in KNOWN_SCOPES:
                violations.add(f"scopes[{index}]", "must be one of " + ", ".join(sorted(KNOWN_SCOPES)))
        if not scopes:
            violations.add("scopes", "is required")
        if expires_at is not None and expires_at <= (now or datetime.now(UTC)):
            violations.add("expire_time", "must be in the future")
        if default_webhook_url:
            if self.webhook_rules is None or self.sealer is None:
                violations.add("default_webhook_url", "cannot be set here")
            else:
                self.webhook_rules.check(default_webhook_url, "default_webhook_url", violations)
        violations.raise_if_any()
        secret = new_secret()
        webhook_signing_secret = new_signing_secret() if self.sealer else None
        async with self.database.tenant(user_id) as conn:
            key = await self.repository.insert(
                conn,
                user_id=user_id,
                display_name=display_name.strip(),
                scopes=sorted(set(scopes)),
                secret=secret,
                expires_at=expires_at,
                default_webhook_url=default_webhook_url or None,
                sealed_webhook_signing_secret=(
                    self.sealer.seal(webhook_signing_secret)
                    if self.sealer and webhook_signing_secret
                    else None
                ),
            )
        return CreatedApiKey(key, secret, webhook_signing_secret)

    async def page(self, user_id: uuid.UUID, *, page_size: int, page_token: str) -> tuple[list[ApiKey], str]:
        limit, after = page_limit(page_size), decode_page_token(page_token)
        async with self.database.tenant(user_id) as conn:
            keys = await self.repository.page(conn, user_id, limit=limit + 1, after=after)
        return split_page(keys, limit, lambda key: (key.created_at, key.id))

    async def rotate_webhook_secret(self, user_id: uuid.UUID, name: str) -> str:
        """A new webhook signing secret for the user's key, returned this once; deliveries are
        signed with the key's secret when sent, so pending retries use the new one."""
        key_id = parse_key_name(name)
        if self.sealer is None:
            raise RuntimeError("rotating a webhook secret needs a sealer (PINGVAS_JWT_SECRET)")
        secret = new_signing_secret()
        async with self.database.tenant(user_id) as conn:
            replaced = await self.repository.replace_webhook_secret(
                conn, user_id, key_id, self.sealer.seal(secret)
            )
        if not replaced:
            raise NotFound(f"{name} not found")
        return secret

    async def revoke(self, user_id: uuid.UUID, name: str) -> None:
        key_id = parse_key_name(name)
        async with self.database.tenant(user_id) as conn:
            revoked = await self.repository.revoke(conn, user_id, key_id)
        if not revoked:
            # Another user's key, or one already revoked: the same answer as for no key at all.
            raise NotFound(f"{name} not found")
