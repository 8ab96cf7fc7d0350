"""Sign-in with Google and Discord through the gateway, against real providers on local ports:
a certified OpenID provider shaped like Google, and a local Discord (tests/oauth/conftest.py).

Each refusal is the provider's or the user service's own check, told apart by its reason (and,
for the provider's, by the provider's record of why it refused)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from support.accounts import dev_login
from support.discord import DiscordServer, DiscordUser
from support.google import REDIRECT_URI, GoogleAccount, GoogleProvider
from support.mesh import RunningMesh

pytestmark = pytest.mark.integration

GOOGLE = "O_AUTH_PROVIDER_GOOGLE"
DISCORD = "O_AUTH_PROVIDER_DISCORD"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def google_account(email: str | None = None, **fields: Any) -> GoogleAccount:
    sub = _unique("google")
    return GoogleAccount(sub=sub, email=email or f"{sub}@example.com", **fields)


def discord_user(email: str | None = None, verified: bool = True) -> DiscordUser:
    user_id = str(uuid.uuid4().int % 10**18)
    return DiscordUser(
        id=user_id, username=_unique("discord"), email=email or f"d{user_id}@example.com", verified=verified
    )


def begin(gateway: httpx.Client, provider: str, redirect_uri: str = REDIRECT_URI) -> dict[str, str]:
    reply = gateway.post("/api/v1/auth/oauth/begin", json={"provider": provider, "redirectUri": redirect_uri})
    assert reply.status_code == 200, reply.text
    body: dict[str, str] = reply.json()
    return body


def complete(gateway: httpx.Client, provider: str, code: str, state: str) -> httpx.Response:
    return gateway.post(
        "/api/v1/auth/oauth/complete", json={"provider": provider, "code": code, "state": state}
    )


def details(reply: httpx.Response) -> dict[str, Any]:
    return {detail["@type"].rsplit(".", 1)[-1]: detail for detail in reply.json()["details"]}


def refused(reply: httpx.Response, status: int, reason: str) -> str:
    """The refusal's message, once its HTTP status and ErrorInfo reason are checked."""
    assert reply.status_code == status, reply.text
    info = details(reply)["ErrorInfo"]
    assert (info["reason"], info["domain"]) == (reason, "user.pingvas.studio"), reply.text
    message: str = reply.json()["message"]
    return message


def signed_in(gateway: httpx.Client, reply: httpx.Response) -> dict[str, Any]:
    """The sign-in's user, read back with its access token; its refresh token works too."""
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["expiresIn"] and body["refreshExpiresIn"]
    me = gateway.get("/api/v1/users/me", headers={"authorization": f"Bearer {body['accessToken']}"})
    assert me.status_code == 200, me.text
    assert me.json() == body["user"]
    refreshed = gateway.post("/api/v1/auth/refresh", json={"refreshToken": body["refreshToken"]})
    assert refreshed.status_code == 200, refreshed.text
    user: dict[str, Any] = me.json()
    return user


def identities(mesh: RunningMesh, subject: str) -> list[dict[str, Any]]:
    return mesh.sql(
        "SELECT provider, user_id::text AS user_id, email FROM oauth_identities WHERE subject = %s", subject
    )


def google_sign_in(gateway: httpx.Client, google: GoogleProvider, account: GoogleAccount) -> httpx.Response:
    begun = begin(gateway, GOOGLE)
    query = google.authorize(begun["authorizationUrl"], account)
    assert query["state"] == begun["state"]
    return complete(gateway, GOOGLE, query["code"], begun["state"])


def discord_sign_in(gateway: httpx.Client, discord: DiscordServer, user: DiscordUser) -> httpx.Response:
    begun = begin(gateway, DISCORD)
    query = discord.authorize(begun["authorizationUrl"], user)
    assert query["state"] == begun["state"]
    return complete(gateway, DISCORD, query["code"], begun["state"])


def test_google_sign_in_creates_the_user_then_finds_it_by_subject(
    gateway: httpx.Client, google: GoogleProvider, oauth_mesh: RunningMesh
) -> None:
    account = google_account()
    begun = begin(gateway, GOOGLE)
    url = urlsplit(begun["authorizationUrl"])
    params = dict(parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}" == google.issuer
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] == begun["state"] and params["nonce"] and params["nonce"] != params["state"]
    assert "code_verifier" not in params
    query = google.authorize(begun["authorizationUrl"], account)

    user = signed_in(gateway, complete(gateway, GOOGLE, query["code"], begun["state"]))

    assert user["email"] == account.email
    assert user["credits"]["balance"] == "100", "a new user gets the free grant"
    assert identities(oauth_mesh, account.sub) == [
        {"provider": "google", "user_id": user["id"], "email": account.email}
    ]
    # The subject, not the email, names the account: a changed address signs in as the same user.
    again = signed_in(gateway, google_sign_in(gateway, google, GoogleAccount(account.sub, "new@example.com")))
    assert (again["id"], again["email"]) == (user["id"], account.email)
    assert again["credits"]["balance"] == "100", "granted once"


def test_discord_sign_in_creates_the_user_then_finds_it_by_subject(
    gateway: httpx.Client, discord: DiscordServer, oauth_mesh: RunningMesh
) -> None:
    user = discord_user()
    begun = begin(gateway, DISCORD)
    params = dict(parse_qsl(urlsplit(begun["authorizationUrl"]).query))
    assert begun["authorizationUrl"].startswith(f"{discord.url}/oauth2/authorize?")
    assert params["code_challenge_method"] == "S256" and params["scope"] == "identify email"
    query = discord.authorize(begun["authorizationUrl"], user)

    signed = signed_in(gateway, complete(gateway, DISCORD, query["code"], begun["state"]))

    assert signed["email"] == user.email
    assert identities(oauth_mesh, user.id) == [
        {"provider": "discord", "user_id": signed["id"], "email": user.email}
    ]
    again = signed_in(gateway, discord_sign_in(gateway, discord, user))
    assert again["id"] == signed["id"]


def test_a_replayed_state_is_refused_even_with_a_fresh_code(
    gateway: httpx.Client, google: GoogleProvider
) -> None:
    account = google_account()
    begun = begin(gateway, GOOGLE)
    first = google.authorize(begun["authorizationUrl"], account)
    signed_in(gateway, complete(gateway, GOOGLE, first["code"], begun["state"]))
    # The same authorization URL again: the provider issues a new, valid code for the old state.
    second = google.authorize(begun["authorizationUrl"], account)
    assert second["state"] == begun["state"] and second["code"] != first["code"]

    for code in (first["code"], second["code"]):
        refused(complete(gateway, GOOGLE, code, begun["state"]), 401, "OAUTH_STATE_INVALID")


def test_a_state_is_bound_to_its_provider(gateway: httpx.Client, google: GoogleProvider) -> None:
    begun = begin(gateway, GOOGLE)
    query = google.authorize(begun["authorizationUrl"], google_account())
    refused(complete(gateway, DISCORD, query["code"], begun["state"]), 401, "OAUTH_STATE_INVALID")


def test_an_id_token_with_another_nonce_is_refused(
    gateway: httpx.Client, google: GoogleProvider, oauth_mesh: RunningMesh
) -> None:
    account = google_account()
    begun = begin(gateway, GOOGLE)
    url = urlsplit(begun["authorizationUrl"])
    # An attacker's authorization request: the attempt's state, another nonce.
    params = {**dict(parse_qsl(url.query)), "nonce": "an-attackers-nonce"}
    query = google.authorize(url._replace(query=urlencode(params)).geturl(), account)

    message = refused(complete(gateway, GOOGLE, query["code"], begun["state"]), 401, "OAUTH_ID_TOKEN_INVALID")

    assert "nonce" in message
    assert identities(oauth_mesh, account.sub) == []


@pytest.mark.parametrize("provider", [GOOGLE, DISCORD])
def test_a_code_exchanged_with_another_attempts_pkce_verifier_is_refused_by_the_provider(
    gateway: httpx.Client, google: GoogleProvider, discord: DiscordServer, provider: str
) -> None:
    # Attempt A's code, completed with attempt B's state: the exchange carries B's verifier,
    # which matches A's code challenge only if the provider does not check it.
    attempt_a, attempt_b = begin(gateway, provider), begin(gateway, provider)
    if provider == GOOGLE:
        code = google.authorize(attempt_a["authorizationUrl"], google_account())["code"]
    else:
        code = discord.authorize(attempt_a["authorizationUrl"], discord_user())["code"]

    refused(complete(gateway, provider, code, attempt_b["state"]), 401, "OAUTH_CODE_REFUSED")

    if provider == GOOGLE:
        assert google.grant_errors()[-1] == {
            "error": "invalid_grant",
            "detail": "code_verifier does not match code_challenge",
        }
    else:
        assert discord.token_errors[-1] == "PKCE verification failed"


def test_an_id_token_issued_to_another_client_is_refused(
    gateway: httpx.Client, google: GoogleProvider, oauth_mesh: RunningMesh
) -> None:
    account = google_account()
    begun = begin(gateway, GOOGLE)
    nonce = dict(parse_qsl(urlsplit(begun["authorizationUrl"]).query))["nonce"]
    # A genuine token of the provider, for the same account and nonce, but another audience.
    google.substitute_next_id_token(google.id_token_for_other_client(account, nonce))
    query = google.authorize(begun["authorizationUrl"], account)

    message = refused(complete(gateway, GOOGLE, query["code"], begun["state"]), 401, "OAUTH_ID_TOKEN_INVALID")

    assert "aud" in message
    assert identities(oauth_mesh, account.sub) == []


def test_an_expired_authorization_code_is_refused(
    gateway: httpx.Client, google: GoogleProvider, oauth_mesh: RunningMesh
) -> None:
    account = google_account(code_ttl=1)
    begun = begin(gateway, GOOGLE)
    query = google.authorize(begun["authorizationUrl"], account)
    # The code's expiry is its issue second plus one: two seconds later it has passed.
    time.sleep(2)

    refused(complete(gateway, GOOGLE, query["code"], begun["state"]), 401, "OAUTH_CODE_REFUSED")

    assert google.grant_errors()[-1] == {"error": "invalid_grant", "detail": "authorization code is expired"}
    assert identities(oauth_mesh, account.sub) == []


def test_a_verified_email_links_the_existing_account(
    gateway: httpx.Client, google: GoogleProvider, discord: DiscordServer, oauth_mesh: RunningMesh
) -> None:
    existing = dev_login(oauth_mesh.gateway_url, "linked")

    by_google = signed_in(gateway, google_sign_in(gateway, google, google_account(existing.email)))
    by_discord = signed_in(gateway, discord_sign_in(gateway, discord, discord_user(existing.email)))

    assert by_google["id"] == by_discord["id"] == existing.user_id
    assert by_google["credits"]["balance"] == "100", "linking grants nothing more"


@pytest.mark.parametrize("provider", [GOOGLE, DISCORD])
def test_an_unverified_email_is_refused_and_links_nothing(
    gateway: httpx.Client,
    google: GoogleProvider,
    discord: DiscordServer,
    oauth_mesh: RunningMesh,
    provider: str,
) -> None:
    existing = dev_login(oauth_mesh.gateway_url, "unverified")
    if provider == GOOGLE:
        account = google_account(existing.email, email_verified=False)
        reply, subject = google_sign_in(gateway, google, account), account.sub
    else:
        user = discord_user(existing.email, verified=False)
        reply, subject = discord_sign_in(gateway, discord, user), user.id

    assert "verified email" in refused(reply, 400, "EMAIL_NOT_VERIFIED")
    assert identities(oauth_mesh, subject) == []
    assert oauth_mesh.sql("SELECT count(*) AS n FROM users WHERE email = %s", existing.email) == [{"n": 1}]


@pytest.mark.parametrize(
    "body",
    [b"<html>maintenance</html>", b'{"username": "no-id"}', b"[1, 2]", b'{"id": {"nested": 1}}'],
    ids=["not-json", "no-id", "not-an-object", "malformed-id"],
)
def test_a_provider_answering_nonsense_is_unavailable_and_signs_nobody_in(
    gateway: httpx.Client, discord: DiscordServer, oauth_mesh: RunningMesh, body: bytes
) -> None:
    """Never INTERNAL: a provider's malformed answer is its fault, and the caller may retry."""
    user = discord_user()
    discord.next_profile_body = body
    reply = discord_sign_in(gateway, discord, user)
    assert "Discord answered" in refused(reply, 503, "OAUTH_PROVIDER_UNAVAILABLE")
    assert identities(oauth_mesh, user.id) == []


def test_bad_input_is_invalid_argument_naming_the_field(gateway: httpx.Client) -> None:
    for body, field in [
        ({"provider": GOOGLE, "redirectUri": "https://attacker.example/callback"}, "redirect_uri"),
        ({"provider": GOOGLE, "redirectUri": REDIRECT_URI + "/x"}, "redirect_uri"),
        ({"redirectUri": REDIRECT_URI}, "provider"),
    ]:
        reply = gateway.post("/api/v1/auth/oauth/begin", json=body)
        assert reply.status_code == 400, reply.text
        assert [v["field"] for v in details(reply)["BadRequest"]["fieldViolations"]] == [field]
    for body, field in [
        ({"provider": GOOGLE, "code": "", "state": "s"}, "code"),
        ({"provider": GOOGLE, "code": "c", "state": ""}, "state"),
        ({"code": "c", "state": "s"}, "provider"),
    ]:
        reply = gateway.post("/api/v1/auth/oauth/complete", json=body)
        assert reply.status_code == 400, reply.text
        assert [v["field"] for v in details(reply)["BadRequest"]["fieldViolations"]] == [field]


def test_a_mesh_without_oauth_settings_offers_no_provider(rest: httpx.Client) -> None:
    # `pingvas up` with no PINGVAS_OAUTH_* settings, as a laptop starts it.
    for provider, variable in [(GOOGLE, "GOOGLE"), (DISCORD, "DISCORD")]:
        reply = rest.post(
            "/api/v1/auth/oauth/begin", json={"provider": provider, "redirectUri": REDIRECT_URI}
        )
        assert f"PINGVAS_OAUTH_{variable}_CLIENT_ID" in refused(reply, 400, "OAUTH_PROVIDER_NOT_CONFIGURED")
