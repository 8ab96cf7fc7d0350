"""A local Discord: the slice of its OAuth2 and API that sign-in uses, as Discord documents it
(https://discord.com/developers/docs/topics/oauth2).

A real HTTP server (stdlib, a daemon thread, 127.0.0.1 on a free port):

- `GET /oauth2/authorize` (response_type=code, client_id, scope, state, redirect_uri,
  code_challenge, code_challenge_method=S256): the browser's signed-in Discord user approves at
  once, and is redirected to `redirect_uri?code=...&state=...`. Unknown client or redirect URI:
  400, as Discord shows an error page rather than redirect to an unregistered URI.
- `POST /api/oauth2/token` (grant_type=authorization_code, code, redirect_uri, code_verifier;
  client credentials by HTTP Basic or in the form): a bearer token, or 400 with
  `{"error": "invalid_grant"}` for an unknown, used or expired code, another client's or
  redirect URI's, or a verifier that does not match the challenge; 401 `invalid_client`.
- `GET /api/users/@me` (Bearer): the user, with `email` and `verified` (the email scope).

A test signs a browser in with `POST /test/login` (form: id, username, email, verified), which
sets the session cookie Discord would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from support.google import REDIRECT_URI, redirected_to

CLIENT_ID = "1234567890"
CLIENT_SECRET = "pingvas-discord-test-secret"
CODE_TTL_SECONDS = 600
_SESSION_COOKIE = "__discord_session"


@dataclass(frozen=True)
class DiscordUser:
    id: str
    username: str
    email: str
    verified: bool = True

    def profile(self) -> dict[str, Any]:
        # Discord's user object, with the email scope's fields.
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.username.title(),
            "discriminator": "0",
            "avatar": None,
            "mfa_enabled": False,
            "locale": "en-US",
            "email": self.email,
            "verified": self.verified,
        }


@dataclass
class _Code:
    user: DiscordUser
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float
    used: bool = False


class DiscordServer:
    def __init__(self) -> None:
        self.sessions: dict[str, DiscordUser] = {}
        self.codes: dict[str, _Code] = {}
        self.tokens: dict[str, DiscordUser] = {}
        self.token_errors: list[str] = []
        # When set, `users/@me` answers this body, once, in place of the user object: a Discord
        # that misbehaves.
        self.next_profile_body: bytes | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DiscordServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorize(self, authorization_url: str, user: DiscordUser) -> dict[str, str]:
        """A browser signed in to Discord as `user` approves `authorization_url`: the redirect's
        query."""
        with httpx.Client(timeout=30) as browser:
            browser.post(
                f"{self.url}/test/login",
                data={
                    "id": user.id,
                    "username": user.username,
                    "email": user.email,
                    "verified": str(user.verified),
                },
            ).raise_for_status()
            return redirected_to(browser, browser.get(authorization_url), REDIRECT_URI)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        discord = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _form(self) -> dict[str, str]:
                length = int(self.headers.get("content-length", "0"))
                return dict(parse_qsl(self.rfile.read(length).decode()))

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/oauth2/authorize":
                    self._authorize(dict(parse_qsl(url.query)))
                elif url.path == "/api/users/@me":
                    self._me()
                else:
                    self._json(404, {"message": "404: Not Found", "code": 0})

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                if path == "/api/oauth2/token":
                    self._token(self._form())
                elif path == "/test/login":
                    fields = self._form()
                    session = secrets.token_urlsafe(16)
                    user = DiscordUser(
                        fields["id"], fields["username"], fields["email"], fields["verified"] == "True"
                    )
                    with discord.lock:
                        discord.sessions[session] = user
                    self._json(200, {}, {"set-cookie": f"{_SESSION_COOKIE}={session}; Path=/; HttpOnly"})
                else:
                    self._json(404, {"message": "404: Not Found", "code": 0})

            def _authorize(self, params: dict[str, str]) -> None:
                if params.get("client_id") != CLIENT_ID or params.get("redirect_uri") != REDIRECT_URI:
                    self._json(400, {"message": "Invalid OAuth2 redirect_uri or client_id"})
                    return
                if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
                    self._json(400, {"message": "Invalid response_type or code_challenge_method"})
                    return
                cookie = SimpleCookie(self.headers.get("cookie", ""))
                morsel = cookie.get(_SESSION_COOKIE)
                user = discord.sessions.get(morsel.value) if morsel else None
                if user is None:
                    self._json(401, {"message": "401: Unauthorized (log in to Discord first)"})
                    return
                code = secrets.token_urlsafe(20)
                with discord.lock:
                    discord.codes[code] = _Code(
                        user,
                        params["redirect_uri"],
                        params["code_challenge"],
                        params.get("scope", ""),
                        time.monotonic() + CODE_TTL_SECONDS,
                    )
                query = urlencode({"code": code, "state": params.get("state", "")})
                self.send_response(HTTPStatus.FOUND)
                self.send_header("location", f"{params['redirect_uri']}?{query}")
                self.send_header("content-length", "0")
                self.end_headers()

            def _client(self, form: dict[str, str]) -> tuple[str, str]:
                authorization = self.headers.get("authorization", "")
                if authorization.startswith("Basic "):
                    client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
                    return client_id, secret
                return form.get("client_id", ""), form.get("client_secret", "")

            def _refuse(self, error: str, why: str) -> None:
                with discord.lock:
                    discord.token_errors.append(why)
                self._json(400, {"error": error, "error_description": why})

            def _token(self, form: dict[str, str]) -> None:
                if self._client(form) != (CLIENT_ID, CLIENT_SECRET):
                    self._json(401, {"error": "invalid_client"})
                    return
                if form.get("grant_type") != "authorization_code":
                    self._refuse("unsupported_grant_type", "unsupported grant type")
                    return
                spent = False
                with discord.lock:
                    code = discord.codes.get(form.get("code", ""))
                    if code is not None:
                        spent, code.used = code.used, True
                if code is None or spent or code.expires_at <= time.monotonic():
                    self._refuse("invalid_grant", "unknown, used or expired code")
                    return
                if form.get("redirect_uri") != code.redirect_uri:
                    self._refuse("invalid_grant", "redirect_uri mismatch")
                    return
                verifier = form.get("code_verifier", "")
                digest = hashlib.sha256(verifier.encode()).digest()
                if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code.challenge:
                    self._refuse("invalid_grant", "PKCE verification failed")
                    return
                token = secrets.token_urlsafe(30)
                with discord.lock:
                    discord.tokens[token] = code.user
                self._json(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": 604800,
                        "refresh_token": secrets.token_urlsafe(30),
                        "scope": code.scope,
                    },
                )

            def _me(self) -> None:
                authorization = self.headers.get("authorization", "")
                user = discord.tokens.get(authorization.removeprefix("Bearer "))
                if not authorization.startswith("Bearer ") or user is None:
                    self._json(401, {"message": "401: Unauthorized", "code": 0})
                    return
                with discord.lock:
                    body, discord.next_profile_body = discord.next_profile_body, None
                if body is not None:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._json(200, user.profile())

        return Handler
