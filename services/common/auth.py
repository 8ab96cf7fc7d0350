"""Access tokens: HS256 JWTs issued at sign-in and verified by every service."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import jwt

from services.common.errors import Unauthenticated

log = logging.getLogger(__name__)

_ISSUER = "pingvas"
_AUDIENCE = "pingvas-api"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the tenant every query of the request runs as."""

    user_id: uuid.UUID
    email: str


class TokenAuthority:
    def __init__(self, secret: str, *, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: uuid.UUID, email: str) -> str:
        now = int(time.time())
        claims = {
            "iss": _ISSUER,
            "aud": _AUDIENCE,
            "sub": str(user_id),
            "email": email,
            "iat": now,
            "exp": now + self.ttl_seconds,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=_AUDIENCE,
                issuer=_ISSUER,
                options={"require": ["exp", "sub", "iat"]},
            )
            return Principal(user_id=uuid.UUID(claims["sub"]), email=str(claims.get("email", "")))
        except (jwt.PyJWTError, ValueError) as error:
            # PyJWT's text tells a forger which check failed; only the log reader gets it.
            log.info("rejected an access token: %s", error)
            raise Unauthenticated("invalid or expired token") from error

    def verify_authorization_header(self, value: str | None) -> Principal:
        if not value:
            raise Unauthenticated("missing `authorization: Bearer <token>` header")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be `Bearer <token>`")
        return self.verify(token.strip())
