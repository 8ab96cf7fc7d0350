"""The keys that sign access tokens, shared by every replica through PostgreSQL (migration 0007).

A key's life: created and published at once (the JWKS, every service's verifier); signing from
`not_before_signing`, one cache period later, so that whatever cached the key set before the key
existed has re-read it before meeting a token the key signed; retired (no longer published) once
its successor has signed for longer than an access token lives, so every token it signed has
expired. The private half is stored encrypted with the deployment's PINGVAS_JWT_SECRET and
never leaves the user service: the public columns are all the tenant role may read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.api_keys import ApiKeyAuthenticator
from services.common.auth import ALGORITHM, PublishedKeys, TokenVerifier, access_token_claims
from services.common.database import Database
from services.common.schema import signing_keys

# One lock id for "the keyring changes", so two replicas never both add a key.
_KEYRING_LOCK = 0x70696E67_6B657973 & 0x7FFFFFFFFFFFFFFF
# How long a replica trusts its idea of the current signing key.
_SIGNER_CACHE_SECONDS = 5.0
# How often a signing replica checks whether a key is due to be added or retired.
_MAINTENANCE_SECONDS = 60.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    not_before_signing: datetime


class SigningKeyRepository:
    """The SQL of the keyring."""

    async def published(self, conn: AsyncConnection) -> dict[str, dict[str, Any]]:
        rows = await conn.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.public_jwk)
            .where(signing_keys.c.retired_at.is_(None))
            .order_by(signing_keys.c.not_before_signing)
        )
        return {row.kid: dict(row.public_jwk) for row in rows}

    async def lock(self, conn: AsyncConnection) -> None:
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_KEYRING_LOCK)))

    async def signer(self, conn: AsyncConnection) -> sa.Row[Any] | None:
        """The newest key already allowed to sign."""
        return (
            await conn.execute(
                sa.select(signing_keys)
                .where(
                    signing_keys.c.retired_at.is_(None), signing_keys.c.not_before_signing <= sa.func.now()
                )
                .order_by(signing_keys.c.not_before_signing.desc())
                .limit(1)
            )
        ).one_or_none()

    async def newest(self, conn: AsyncConnection) -> sa.Row[Any] | None:
        return (
            await conn.execute(
                sa.select(signing_keys)
                .where(signing_keys.c.retired_at.is_(None))
                .order_by(signing_keys.c.not_before_signing.desc())
                .limit(1)
            )
        ).one_or_none()

    async def add(
        self,
        conn: AsyncConnection,
        *,
        kid: str,
        public_jwk: dict[str, Any],
        private_key_pem: str,
        signs_after: float,
    ) -> None:
        await conn.execute(
            sa.insert(signing_keys).values(
                kid=kid,
                public_jwk=public_jwk,
                private_key_pem=private_key_pem,
                not_before_signing=sa.func.now() + timedelta(seconds=signs_after),
            )
        )

    async def retire_superseded(self, conn: AsyncConnection, *, signed_for_seconds: float) -> None:
        """Retire every key whose successor has signed for at least `signed_for_seconds`."""
        successor = signing_keys.alias("successor")
        await conn.execute(
            sa.update(signing_keys)
            .where(
                signing_keys.c.retired_at.is_(None),
                sa.exists().where(
                    successor.c.retired_at.is_(None),
                    successor.c.not_before_signing > signing_keys.c.not_before_signing,
                    successor.c.not_before_signing <= sa.func.now() - timedelta(seconds=signed_for_seconds),
                ),
            )
            .values(retired_at=sa.func.now())
        )


def new_key_pair(secret: str) -> tuple[str, dict[str, Any], str]:
    """A fresh P-256 key: its kid, its public JWK (no private member) and its encrypted PEM."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    public_jwk.update(kid=kid, alg=ALGORITHM, use="sig")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret.encode()),
    ).decode()
    return kid, public_jwk, pem


class SigningKeyring:
    """The user service's side of the keyring: picks the signing key, adds and retires keys."""

    def __init__(
        self,
        database: Database,
        *,
        secret: str,
        publication_lead_seconds: float,
        rotation_seconds: float,
        token_ttl_seconds: int,
        repository: SigningKeyRepository | None = None,
    ) -> None:
        self.database = database
        self._secret = secret
        self.publication_lead_seconds = publication_lead_seconds
        self.rotation_seconds = rotation_seconds
        self.token_ttl_seconds = token_ttl_seconds
        self.repository = repository or SigningKeyRepository()
        self._signer: SigningKey | None = None
        self._signer_read_at = float("-inf")
        self._maintained_at = float("-inf")
        self._decrypted: dict[str, ec.EllipticCurvePrivateKey] = {}

    async def published(self) -> dict[str, dict[str, Any]]:
        async with self.database.system("publish the signing keys") as conn:
            return await self.repository.published(conn)

    async def maintain(self) -> None:
        """Add the first key (signing at once: nothing can have cached a key set holding a key
        that did not exist), add a successor once the newest key has signed for
        `rotation_seconds`, and retire keys whose tokens have all expired."""
        async with self.database.system("rotate the signing keys") as conn:
            await self.repository.lock(conn)
            newest = await self.repository.newest(conn)
            now = datetime.now(UTC)
            if newest is None:
                await self._add(conn, signs_after=0)
            elif newest.not_before_signing <= now - timedelta(seconds=self.rotation_seconds):
                await self._add(conn, signs_after=self.publication_lead_seconds)
            # A token may be signed with a key for up to _SIGNER_CACHE_SECONDS after its
            # successor began signing, and lives token_ttl_seconds after that.
            await self.repository.retire_superseded(
                conn, signed_for_seconds=self.token_ttl_seconds + _SIGNER_CACHE_SECONDS + 60
            )
        self._maintained_at = time.monotonic()

    async def rotate(self) -> str:
        """Add a key now, published at once and signing one publication lead from now."""
        async with self.database.system("rotate the signing keys") as conn:
            await self.repository.lock(conn)
            return await self._add(conn, signs_after=self.publication_lead_seconds)

    async def _add(self, conn: AsyncConnection, *, signs_after: float) -> str:
        kid, public_jwk, pem = new_key_pair(self._secret)
        await self.repository.add(
            conn, kid=kid, public_jwk=public_jwk, private_key_pem=pem, signs_after=signs_after
        )
        return kid

    async def signer(self) -> SigningKey:
        clock = time.monotonic()
        if clock - self._maintained_at >= _MAINTENANCE_SECONDS:
            await self.maintain()
        if self._signer is None or clock - self._signer_read_at >= _SIGNER_CACHE_SECONDS:
            async with self.database.system("sign an access token") as conn:
                row = await self.repository.signer(conn)
            if row is None:
                raise RuntimeError("the keyring has no key allowed to sign yet")
            self._signer = SigningKey(
                row.kid, self._private_key(row.kid, row.private_key_pem), row.not_before_signing
            )
            self._signer_read_at = clock
        return self._signer

    def _private_key(self, kid: str, pem: str) -> ec.EllipticCurvePrivateKey:
        if kid not in self._decrypted:
            key = serialization.load_pem_private_key(pem.encode(), password=self._secret.encode())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise RuntimeError(f"signing key {kid} is not an EC key")
            self._decrypted[kid] = key
        return self._decrypted[kid]


class TokenIssuer:
    """Signs access tokens with the keyring's current key."""

    def __init__(self, keyring: SigningKeyring, *, ttl_seconds: int) -> None:
        self.keyring = keyring
        self.ttl_seconds = ttl_seconds

    async def issue(self, user_id: uuid.UUID, email: str) -> str:
        key = await self.keyring.signer()
        claims = access_token_claims(user_id, email, now=int(time.time()), ttl_seconds=self.ttl_seconds)
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


async def read_published_keys(database: Database) -> Mapping[str, Mapping[str, Any]]:
    """The published public keys, read over the tenant role (which may read only those columns)."""
    async with database.shared() as conn:
        return await SigningKeyRepository().published(conn)


def token_verifier(database: Database, *, cache_seconds: float) -> TokenVerifier:
    """The verifier every service authenticates callers with: the published keys, cached, and
    API keys, looked up on every call (never cached, so a revocation holds at once)."""
    return TokenVerifier(
        PublishedKeys(lambda: read_published_keys(database), cache_seconds=cache_seconds),
        ApiKeyAuthenticator(database).authenticate,
    )
