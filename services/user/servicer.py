"""UserService over gRPC: proto in, domain call, proto out."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import grpc
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.billing.v1 import billing_resources_pb2 as billing
from pingvas.user.v1 import user_resources_pb2 as resources
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc

from services.common.auth import Principal, TokenVerifier
from services.common.errors import FieldViolation, InvalidInput, NotFound, PermissionDenied
from services.common.keyring import SigningKeyring, TokenIssuer
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, public_unary, unary
from services.user import session_cookie
from services.user.accounts import Account, UserAccounts
from services.user.oauth import DISCORD, GOOGLE, OAuthSignIn
from services.user.sessions import Sessions

ERROR_DOMAIN = "user.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_PROVIDERS = {resources.O_AUTH_PROVIDER_GOOGLE: GOOGLE, resources.O_AUTH_PROVIDER_DISCORD: DISCORD}


def provider_from_proto(provider: int) -> str:
    try:
        return _PROVIDERS[provider]
    except KeyError:
        raise InvalidInput(
            [FieldViolation("provider", "must be O_AUTH_PROVIDER_GOOGLE or O_AUTH_PROVIDER_DISCORD")]
        ) from None


def account_to_proto(account: Account) -> resources.User:
    created = Timestamp()
    created.FromDatetime(account.created_at)
    return resources.User(
        name=f"users/{account.id}",
        id=str(account.id),
        email=account.email,
        plan=billing.Plan.Value(f"PLAN_{account.plan.upper()}"),
        credits=billing.CreditBalance(
            balance=account.credits.balance, held=account.credits.held, available=account.credits.available
        ),
        create_time=created,
    )


class UserServicer(pb_grpc.UserServiceServicer, Endpoint):
    def __init__(
        self,
        accounts: UserAccounts,
        tokens: TokenVerifier,
        issuer: TokenIssuer,
        sessions: Sessions,
        rate_limiter: PrincipalRateLimiter,
        oauth: OAuthSignIn,
        *,
        dev_login_enabled: bool,
    ) -> None:
        Endpoint.__init__(
            self,
            service=pb.DESCRIPTOR.services_by_name["UserService"],
            tokens=tokens,
            error_domain=ERROR_DOMAIN,
            rate_limiter=rate_limiter,
        )
        self.accounts = accounts
        self.issuer = issuer
        self.sessions = sessions
        self.oauth = oauth
        self.dev_login_enabled = dev_login_enabled

    @property
    def keyring(self) -> SigningKeyring:
        return self.issuer.keyring

    @public_unary
    async def DevLogin(self, request: pb.DevLoginRequest, context: Context) -> pb.DevLoginResponse:
        if not self.dev_login_enabled:
            raise PermissionDenied("dev login is not enabled on this deployment")
        account = await self.accounts.sign_in(request.email)
        return pb.DevLoginResponse(**await self._signed_in(account, context))

    async def _signed_in(self, account: Account, context: Context) -> dict[str, Any]:
        """A sign-in's answer: a new session's access and refresh tokens, and the user."""
        refresh = await self.sessions.start(account.id)
        return {
            "access_token": await self.issuer.issue(account.id, account.email),
            "expires_in": self.issuer.ttl_seconds,
            "user": account_to_proto(account),
            "refresh_token": await self._hand_over(refresh.token, refresh.expires_in, context),
            "refresh_expires_in": refresh.expires_in,
        }

    @staticmethod
    async def _hand_over(refresh_token: str, expires_in: int, context: Context) -> str:
        """The refresh token for the response body, or "" when it goes into the browser's
        HttpOnly cookie instead (services/user/session_cookie.py)."""
        if not session_cookie.wants_cookie(context.invocation_metadata() or ()):
            return refresh_token
        await context.send_initial_metadata(session_cookie.set_cookie_headers(refresh_token, expires_in))
        return ""

    @staticmethod
    def _presented_refresh_token(body_token: str, context: Context) -> str:
        """The refresh token of a request: its body's, or a browser's cookie."""
        metadata = context.invocation_metadata() or ()
        token = body_token or (
            session_cookie.token_from(metadata) if session_cookie.wants_cookie(metadata) else ""
        )
        if not token:
            raise InvalidInput(
                [FieldViolation("refresh_token", "required (or the browser's session cookie)")]
            )
        return token

    @public_unary
    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Context
    ) -> pb.RefreshSessionResponse:
        refresh = await self.sessions.refresh(self._presented_refresh_token(request.refresh_token, context))
        account = await self.accounts.get(refresh.user_id)
        return pb.RefreshSessionResponse(
            access_token=await self.issuer.issue(account.id, account.email),
            expires_in=self.issuer.ttl_seconds,
            refresh_token=await self._hand_over(refresh.token, refresh.expires_in, context),
            refresh_expires_in=refresh.expires_in,
        )

    @public_unary
    async def Logout(self, request: pb.LogoutRequest, context: Context) -> pb.LogoutResponse:
        # Authenticated by the refresh token itself: signing out must work after the access
        # token expired.
        await self.sessions.end(self._presented_refresh_token(request.refresh_token, context))
        if session_cookie.wants_cookie(context.invocation_metadata() or ()):
            await context.send_initial_metadata(session_cookie.set_cookie_headers("", 0))
        return pb.LogoutResponse()

    @public_unary
    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> httpbody_pb2.HttpBody:
        keys = list((await self.keyring.published()).values())
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps({"keys": keys}).encode()
        )

    @public_unary
    async def BeginOAuthLogin(
        self, request: pb.BeginOAuthLoginRequest, context: Context
    ) -> pb.BeginOAuthLoginResponse:
        begun = await self.oauth.begin(provider_from_proto(request.provider), request.redirect_uri)
        return pb.BeginOAuthLoginResponse(authorization_url=begun.authorization_url, state=begun.state)

    @public_unary
    async def CompleteOAuthLogin(
        self, request: pb.CompleteOAuthLoginRequest, context: Context
    ) -> pb.CompleteOAuthLoginResponse:
        identity = await self.oauth.complete(
            provider_from_proto(request.provider), request.code, request.state
        )
        account = await self.accounts.sign_in_with(identity)
        return pb.CompleteOAuthLoginResponse(**await self._signed_in(account, context))

    @unary
    async def GetUser(
        self, request: pb.GetUserRequest, caller: Principal, context: Context
    ) -> resources.User:
        if request.name not in ("users/me", f"users/{caller.user_id}"):
            # Other users' existence is not revealed.
            raise NotFound(f"{request.name} not found")
        return account_to_proto(await self.accounts.get(caller.user_id))
