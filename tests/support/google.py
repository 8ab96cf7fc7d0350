"""A Google-shaped OpenID provider on a local port (tests/support/google_oidc.mjs, the certified
`oidc-provider` from npm), and a browser that signs in with it.

The user service talks to it as to accounts.google.com: discovery, authorization endpoint,
token endpoint and JWKS. It knows two clients: Pingvas's, and another application's, whose ID
tokens Pingvas must refuse (a different audience).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx

from support.mesh import REPO_ROOT

CLIENT_ID = "pingvas-google-client"
CLIENT_SECRET = "pingvas-google-test-secret"
OTHER_CLIENT_ID = "another-application"
OTHER_CLIENT_SECRET = "another-application-secret"
REDIRECT_URI = "http://127.0.0.1:5173/auth/callback"
SCRIPT = REPO_ROOT / "tests" / "support" / "google_oidc.mjs"


@dataclass(frozen=True)
class GoogleAccount:
    sub: str
    email: str
    email_verified: bool = True
    name: str = "Test User"
    picture: str = "https://example.com/picture.png"
    # Seconds its authorization codes live; the provider's default otherwise.
    code_ttl: int | None = None

    def form(self) -> dict[str, str]:
        fields = {
            "sub": self.sub,
            "email": self.email,
            "email_verified": "true" if self.email_verified else "false",
            "name": self.name,
            "picture": self.picture,
        }
        if self.code_ttl is not None:
            fields["code_ttl"] = str(self.code_ttl)
        return fields


def redirected_to(client: httpx.Client, response: httpx.Response, redirect_uri: str) -> dict[str, str]:
    """Follow redirects as a browser would, up to the client's redirect URI (never loaded):
    the query it would receive (`code`, `state`)."""
    for _ in range(10):
        assert response.is_redirect, f"{response.status_code}: {response.text[:500]}"
        location = urljoin(str(response.url), response.headers["location"])
        if location.startswith(redirect_uri):
            return dict(parse_qsl(urlsplit(location).query))
        response = client.get(location)
    raise AssertionError("too many redirects")


class GoogleProvider:
    def __init__(self, redirect_uri: str = REDIRECT_URI) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.issuer = ""
        self.redirect_uri = redirect_uri

    def __enter__(self) -> GoogleProvider:
        clients = [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [self.redirect_uri]},
            {
                "client_id": OTHER_CLIENT_ID,
                "client_secret": OTHER_CLIENT_SECRET,
                "redirect_uris": [REDIRECT_URI],
            },
        ]
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), json.dumps({"port": 0, "clients": clients})],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the OpenID provider exited before listening"
        self.issuer = json.loads(line)["issuer"]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def authorize(self, authorization_url: str, account: GoogleAccount) -> dict[str, str]:
        """A browser at `authorization_url` signs in as `account`: the redirect's query."""
        with httpx.Client(timeout=30) as browser:
            interaction = browser.get(authorization_url)
            assert interaction.is_redirect, interaction.text
            login = urljoin(self.issuer, interaction.headers["location"]) + "/login"
            return redirected_to(browser, browser.post(login, data=account.form()), REDIRECT_URI)

    def grant_errors(self) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = httpx.get(f"{self.issuer}/test/grant-errors").json()
        return errors

    def substitute_next_id_token(self, id_token: str) -> None:
        httpx.post(f"{self.issuer}/test/substitute-id-token", data={"id_token": id_token}).raise_for_status()

    def id_token_for_other_client(self, account: GoogleAccount, nonce: str) -> str:
        """A genuine ID token of this provider, for the same account and nonce, issued to the
        other application: as that application's own sign-in would obtain it."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode(
            {
                "client_id": OTHER_CLIENT_ID,
                "response_type": "code",
                "scope": "openid email profile",
                "redirect_uri": REDIRECT_URI,
                "state": secrets.token_urlsafe(16),
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        code = self.authorize(f"{self.issuer}/auth?{query}", account)["code"]
        reply = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            auth=(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET),
        )
        assert reply.status_code == 200, reply.text
        id_token: str = reply.json()["id_token"]
        return id_token
