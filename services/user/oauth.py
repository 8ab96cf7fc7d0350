"""Sign-in with Google (OpenID Connect) and Discord (OAuth 2.0), through Authlib.

One sign-in is two calls:

1. `begin(provider, redirect_uri)`: the redirect URI must be on the allow-list. Authlib draws a
   `state`, a PKCE verifier (its S256 challenge goes in the URL) and, for Google, a `nonce`; the
   attempt (provider, redirect URI, verifier, nonce) is kept in Redis under the state's SHA-256
   for `attempt_ttl_seconds`, and the provider's authorization URL is returned.
2. `complete(provider, code, state)`: the attempt is taken with one GETDEL, so a state works once
   and a replayed one finds nothing. The code is exchanged with the attempt's verifier (the
   provider checks it against the challenge). Google's ID token is verified against the JWKS its
   discovery document names: signature, issuer, audience (our client id), expiry and the
   attempt's nonce. Discord's profile is read from `users/@me`.

A provider that refuses (a bad, expired or reused code, a PKCE mismatch) or answers with an ID
token that fails verification is UNAUTHENTICATED; one that cannot be reached is UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import httpx2
from authlib.integrations.base_client import BaseApp, OAuthError
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc.errors import JoseError
from redis.asyncio import Redis

from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidInput,
    Unauthenticated,
    Unavailable,
)
from services.common.settings import OAuthSettings
from services.user.identities import ProviderIdentity

log = logging.getLogger(__name__)

GOOGLE: Final = "google"
DISCORD: Final = "discord"

# Redis key map: `oauth:attempt:{sha256(state) hex}` -> the begun attempt as JSON, with a TTL.
_ATTEMPT_KEY = "oauth:attempt:{}"


class ProviderNotConfigured(FailedPrecondition):
    reason = "OAUTH_PROVIDER_NOT_CONFIGURED"


class InvalidState(Unauthenticated):
    """The state names no begun attempt: unknown, expired, already completed, or another
    provider's."""

    reason = "OAUTH_STATE_INVALID"


class CodeRefused(Unauthenticated):
    """The provider refused the code exchange (bad, expired or reused code, PKCE mismatch)."""

    reason = "OAUTH_CODE_REFUSED"


class IdTokenInvalid(Unauthenticated):
    """The ID token failed verification (signature, issuer, audience, expiry, nonce)."""

    reason = "OAUTH_ID_TOKEN_INVALID"


class ProviderUnavailable(Unavailable):
    reason = "OAUTH_PROVIDER_UNAVAILABLE"


class _ProviderApp(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):  # type: ignore[misc]
    """Authlib's framework-free OAuth 2.0 / OpenID Connect client app, on httpx."""

    client_cls = AsyncOAuth2Client


@dataclass(frozen=True)
class BegunSignIn:
    authorization_url: str
    state: str


@dataclass(frozen=True)
class SignInAttempt:
    """What CompleteOAuthLogin needs of a begun sign-in, and nothing a client sends."""

    provider: str
    redirect_uri: str
    code_verifier: str
    nonce: str | None


class SignInAttempts:
    """Begun sign-ins in Redis: each kept for a TTL and taken at most once."""

    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def _key(state: str) -> str:
        return _ATTEMPT_KEY.format(hashlib.sha256(state.encode()).hexdigest())

    async def keep(self, state: str, attempt: SignInAttempt) -> None:
        await self.redis.set(self._key(state), json.dumps(asdict(attempt)), ex=self.ttl_seconds)

    async def take(self, state: str) -> SignInAttempt | None:
        stored = await self.redis.getdel(self._key(state))
        return None if stored is None else SignInAttempt(**json.loads(stored))


class OAuthSignIn:
    def __init__(self, settings: OAuthSettings, attempts: SignInAttempts) -> None:
        self.redirect_uris = frozenset(settings.redirect_uris)
        self.attempts = attempts
        client_kwargs: dict[str, Any] = {"code_challenge_method": "S256", "timeout": settings.timeout_seconds}
        self.apps: dict[str, _ProviderApp] = {}
        if settings.google_client_id:
            self.apps[GOOGLE] = _ProviderApp(
                None,
                name=GOOGLE,
                client_id=settings.google_client_id,
                client_secret=settings.google_client_secret,
                server_metadata_url=settings.google_discovery_url,
                client_kwargs={**client_kwargs, "scope": "openid email profile"},
            )
        if settings.discord_client_id:
            base = settings.discord_base_url.rstrip("/")
            self.apps[DISCORD] = _ProviderApp(
                None,
                name=DISCORD,
                client_id=settings.discord_client_id,
                client_secret=settings.discord_client_secret,
                authorize_url=f"{base}/oauth2/authorize",
                access_token_url=f"{base}/api/oauth2/token",
                api_base_url=f"{base}/api/",
                client_kwargs={**client_kwargs, "scope": "identify email"},
            )

    def _app(self, provider: str) -> _ProviderApp:
        app = self.apps.get(provider)
        if app is None:
            raise ProviderNotConfigured(
                f"sign-in with {provider.title()} is not configured on this deployment "
                f"(PINGVAS_OAUTH_{provider.upper()}_CLIENT_ID)",
                metadata={"provider": provider},
            )
        return app

    async def begin(self, provider: str, redirect_uri: str) -> BegunSignIn:
        app = self._app(provider)
        if redirect_uri not in self.redirect_uris:
            raise InvalidInput(
                [FieldViolation("redirect_uri", "must be one of the deployment's allowed redirect URIs")]
            )
        async with _reaching(provider):
            begun: Mapping[str, Any] = await app.create_authorization_url(redirect_uri)
        await self.attempts.keep(
            begun["state"],
            SignInAttempt(provider, redirect_uri, begun["code_verifier"], begun.get("nonce")),
        )
        return BegunSignIn(begun["url"], begun["state"])

    async def complete(self, provider: str, code: str, state: str) -> ProviderIdentity:
        app = self._app(provider)
        attempt = await self.attempts.take(state)
        if attempt is None or attempt.provider != provider:
            raise InvalidState("the sign-in's state is unknown, expired or already used: sign in again")
        async with _reaching(provider):
            try:
                token = await app.fetch_access_token(
                    redirect_uri=attempt.redirect_uri, code=code, code_verifier=attempt.code_verifier
                )
            except OAuthError as error:
                log.info("%s refused a code exchange: %s (%s)", provider, error.error, error.description)
                raise CodeRefused(
                    f"{provider.title()} refused the authorization code ({error.error}): sign in again"
                ) from None
            if provider == GOOGLE:
                return await self._google_identity(app, token, attempt)
            return await self._discord_identity(app, token)

    async def _google_identity(
        self, app: _ProviderApp, token: Mapping[str, Any], attempt: SignInAttempt
    ) -> ProviderIdentity:
        if "id_token" not in token:
            raise IdTokenInvalid("Google answered without an ID token")
        metadata = await app.load_server_metadata()
        # Authlib verifies the signature, expiry and nonce by itself, but the issuer and the
        # audience only when told which: without these, a token issued to another client passes
        # its audience check.
        expected = {
            "iss": {"essential": True, "value": metadata["issuer"]},
            "aud": {"essential": True, "value": app.client_id},
        }
        try:
            claims = await app.parse_id_token(token, nonce=attempt.nonce, claims_options=expected)
        except JoseError as error:
            log.info("a Google ID token failed verification: %s", error)
            raise IdTokenInvalid(f"Google's ID token failed verification ({error})") from None
        return ProviderIdentity(
            provider=GOOGLE,
            subject=str(claims["sub"]),
            email=claims.get("email"),
            email_verified=claims.get("email_verified") is True,
        )

    async def _discord_identity(self, app: _ProviderApp, token: Mapping[str, Any]) -> ProviderIdentity:
        response = await app.get("users/@me", token=dict(token))
        response.raise_for_status()
        try:
            profile = response.json()
            subject, email, verified = profile["id"], profile.get("email"), profile.get("verified")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _answered_nonsense(DISCORD, "a user object without an id") from None
        if not isinstance(subject, str | int) or not isinstance(email, str | None):
            raise _answered_nonsense(DISCORD, "a user object with a malformed id or email")
        return ProviderIdentity(
            provider=DISCORD, subject=str(subject), email=email, email_verified=verified is True
        )


def _answered_nonsense(provider: str, what: str) -> ProviderUnavailable:
    log.warning("%s answered %s", provider, what)
    return ProviderUnavailable(f"{provider.title()} answered {what}; retry later")


@contextlib.asynccontextmanager
async def _reaching(provider: str) -> AsyncIterator[None]:
    """A provider that cannot be reached, answers an error status where it should not, or
    answers a success that is not JSON (its discovery document, its token endpoint) is
    UNAVAILABLE: the caller may retry, and it is the provider's fault, never an INTERNAL one."""
    try:
        yield
    except httpx2.HTTPError as error:
        log.warning("%s is unavailable: %s (%s)", provider, error, type(error).__name__)
        raise ProviderUnavailable(f"{provider.title()} is unavailable; retry later") from None
    except json.JSONDecodeError:
        raise _answered_nonsense(provider, "a body that is not JSON") from None
