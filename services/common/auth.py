"""Bearers: ES256 access tokens signed by the user service's keyring, and partner API keys, both
verified by every service.

The keys live in PostgreSQL (services/common/keyring.py, migration 0007), so every replica of
every service verifies with the same keys the gateway fetches from the user service's JWKS.
A verifier re-reads the published keys at least every cache period, and at once (at most once a
second) for a `kid` it does not know; a new key is published one cache period before it signs,
so no verifier meets a token whose key it has not seen.

A bearer starting with `pv_` is an API key, looked up in PostgreSQL on every call
(services/common/api_keys.py); its Principal carries the key's id and scopes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from services.common.errors import Unauthenticated

log = logging.getLogger(__name__)

ISSUER = "pingvas"
AUDIENCE = "pingvas-api"
ALGORITHM = "ES256"
# The prefix of API keys, which the gateway lets through to the services unverified.
API_KEY_PREFIX = "pv_"
# One message for every rejected token: which check failed is for the log reader only.
INVALID_TOKEN = "invalid or expired token"
# Unknown kids re-read the keys at most this often, so a flood of forged kids costs one query a second.
UNKNOWN_KID_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the tenant every query of the request runs as."""

    user_id: uuid.UUID
    # The access token's; empty for an API key, which carries none.
    email: str
    # Set for an API key: its id, and what it may do (services/common/access.py). An access
    # token is the user itself and is never limited by scopes.
    api_key_id: uuid.UUID | None = None
    scopes: frozenset[str] = frozenset()


# Reads the published public keys: kid -> public JWK (dict).
PublishedKeysReader = Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]]
# Authenticates an API key's secret (services.common.api_keys.ApiKeyAuthenticator.authenticate).
ApiKeyAuthentication = Callable[[str], Awaitable[Principal]]


class PublishedKeys:
    """The published public keys, by kid, cached for `cache_seconds`."""

    def __init__(
        self,
        read: PublishedKeysReader,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._read_at: float | None = None

    async def key(self, kid: str) -> Any | None:
        now = self._clock()
        stale = self._read_at is None or now - self._read_at >= self._cache_seconds
        unknown = kid not in self._keys and (
            self._read_at is None or now - self._read_at >= UNKNOWN_KID_REFRESH_SECONDS
        )
        if stale or unknown:
            published = await self._read()
            self._keys = {
                key_id: jwt.PyJWK.from_dict(dict(jwk), algorithm=ALGORITHM).key
                for key_id, jwk in published.items()
            }
            self._read_at = now
        return self._keys.get(kid)


class TokenVerifier:
    """Verifies access tokens with the published keys, and API keys with `api_keys`; every
    failure is one UNAUTHENTICATED."""

    def __init__(self, keys: PublishedKeys, api_keys: ApiKeyAuthentication) -> None:
        self._keys = keys
        self._api_keys = api_keys

    async def verify(self, token: str) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            return await self._api_keys(token)
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if header.get("alg") != ALGORITHM or not isinstance(kid, str):
                raise jwt.InvalidTokenError(f"alg {header.get('alg')!r}, kid {kid!r}")
            key = await self._keys.key(kid)
            if key is None:
                raise jwt.InvalidTokenError(f"unknown kid {kid!r}")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iat", "iss", "aud"]},
            )
            return Principal(user_id=uuid.UUID(claims["sub"]), email=str(claims.get("email", "")))
        except (jwt.PyJWTError, ValueError) as error:
            # PyJWT's text tells a forger which check failed; only the log reader gets it.
            log.info("rejected an access token: %s", error)
            raise Unauthenticated(INVALID_TOKEN) from error

    async def verify_authorization_header(self, value: str | None) -> Principal:
        if not value:
            raise Unauthenticated("missing `authorization: Bearer <token>` header")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be `Bearer <token>`")
        return await self.verify(token.strip())


def access_token_claims(user_id: uuid.UUID, email: str, *, now: int, ttl_seconds: int) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(user_id),
        "email": email,
        "iat": now,
        "exp": now + ttl_seconds,
    }
