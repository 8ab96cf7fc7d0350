"""Partner API keys: their secret's format, and authenticating a call with one (migration 0010).

A key's secret is `pv_live_` and 32 random bytes (base64url): so much entropy that one SHA-256,
without salt or stretching, is safe to store (GitHub's and Stripe's practice). Every service
authenticates a key on every call by looking its hash up, with no cache, so a revoked key fails
everywhere as soon as the revocation commits. The lookup spans tenants (the key is the only thing
known) and runs as the system role, whose grants on `api_keys` migration 0010 limits to it.

Creating, listing and revoking keys is the user service's (services/user/api_keys.py).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

import sqlalchemy as sa

from services.common.auth import API_KEY_PREFIX, INVALID_TOKEN, Principal
from services.common.database import Database
from services.common.errors import Unauthenticated
from services.common.schema import api_keys

log = logging.getLogger(__name__)

SECRET_PREFIX = API_KEY_PREFIX + "live_"
# How much of the secret is shown to tell keys apart: the fixed prefix and 4 random characters
# (24 bits, none of the remaining 256 revealed).
DISPLAY_PREFIX_LENGTH = len(SECRET_PREFIX) + 4
# A key's last use is written at most this often, so a busy key costs one read per call, not a
# write per call.
LAST_USE_RESOLUTION = timedelta(minutes=1)
# Longer bearers are not keys; refused before hashing (a base64url 32-byte secret is 43).
MAX_SECRET_LENGTH = 128


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_LENGTH]


class ApiKeyAuthenticator:
    """Turns an API key's secret into its Principal, or raises Unauthenticated."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def authenticate(self, secret: str) -> Principal:
        if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
            raise Unauthenticated(INVALID_TOKEN)
        async with self.database.system("authenticate an API key") as conn:
            row = (
                await conn.execute(
                    sa.select(
                        api_keys.c.id,
                        api_keys.c.user_id,
                        api_keys.c.scopes,
                        api_keys.c.expires_at,
                        api_keys.c.revoked_at,
                        api_keys.c.last_used_at,
                        sa.func.now().label("now"),
                    ).where(api_keys.c.secret_hash == secret_hash(secret))
                )
            ).one_or_none()
            if (
                row is None
                or row.revoked_at is not None
                or (row.expires_at is not None and row.expires_at <= row.now)
            ):
                log.info(
                    "rejected an API key: %s", "unknown" if row is None else f"{row.id} revoked or expired"
                )
                raise Unauthenticated(INVALID_TOKEN)
            if row.last_used_at is None or row.now - row.last_used_at >= LAST_USE_RESOLUTION:
                await conn.execute(
                    sa.update(api_keys).where(api_keys.c.id == row.id).values(last_used_at=row.now)
                )
        return Principal(user_id=row.user_id, email="", api_key_id=row.id, scopes=frozenset(row.scopes))
