"""The access matrix: every RPC of the contract, by every protocol, as every kind of caller,
answers what the RPC's declared access class says (OWASP API1, broken object-level authorization).

The rows come from the descriptors, not from a list kept here: every method of every public
service is a case, so a new RPC joins the matrix by existing, and fails it until it has a request
in REQUESTS (inputs, never expected answers). Each case calls the RPC by native gRPC, gRPC-Web and
REST (the path from its `google.api.http` rule) through the gateway, as:

- the owner: the user who made the resource the request names (a generation, an API key, itself);
- another user, with its access token, and with its own API key holding every scope;
- a key without the scope the RPC declares (the owner's own key, so only the scope is missing;
  every key lacks what an RPC that declares no scope needs);
- the owner's expired access token, the owner's revoked API key, and no bearer at all.

The expected answer of each follows from `pingvas.access.v1.method` alone (`expectation`):

- PUBLIC: the bearer changes nothing: every caller gets what the anonymous caller gets, which is
  the RPC's own answer (a bogus refresh token is UNAUTHENTICATED for everyone).
- WEBHOOK: no Lemon Squeezy signature, so UNAUTHENTICATED whatever bearer comes along.
- USER and OWNER: no, expired or revoked bearer UNAUTHENTICATED; a key without the scope
  PERMISSION_DENIED; the owner served. Another user is served by a USER RPC (on its own
  account) and gets NOT_FOUND from an OWNER RPC, exactly as for an id that does not exist.
- ADMIN: nobody's bearer is an administrator: PERMISSION_DENIED once authenticated.

"Served" is any answer of the RPC's own but a refusal (UNAUTHENTICATED, PERMISSION_DENIED,
NOT_FOUND) or a server failure: UpgradeSubscription, say, answers FAILED_PRECONDITION to a user
without a subscription.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from pingvas.billing.v1 import billing_service_pb2
from pingvas.gallery.v1 import gallery_service_pb2
from pingvas.generation.v1 import generation_service_pb2
from pingvas.user.v1 import api_key_service_pb2, user_service_pb2
from support.accounts import Account, dev_login
from support.generations import row, wait_for
from support.mesh import RunningMesh
from support.protocols import PROTOCOLS, Gateway, Outcome
from support.tokens import signed_with_the_real_key

from gateway.envoy import PUBLIC_SERVICES
from services.common import access as declared
from services.common.access import MethodAccess, method_access

pytestmark = pytest.mark.integration

_FILES = (
    user_service_pb2,
    api_key_service_pb2,
    billing_service_pb2,
    generation_service_pb2,
    gallery_service_pb2,
)
METHODS: dict[str, descriptor.MethodDescriptor] = {
    f"{service.name}.{method.name}": method
    for file in _FILES
    for service in file.DESCRIPTOR.services_by_name.values()
    if service.full_name in PUBLIC_SERVICES
    for method in service.methods
}

# Each RPC's request, as its proto JSON. Placeholders name what the owner made for the case:
# "{user}" (the owner's name), "{generation}" (succeeded, so with an image), and
# "{fresh generation}" / "{fresh image}" / "{fresh api key}" for the RPCs that change what they
# name (made anew for each protocol).
_GENERATION = {"prompt": "a matrix moth", "width": 64, "height": 64, "steps": 1}
REQUESTS: dict[str, dict[str, Any]] = {
    "UserService.DevLogin": {"email": "bola-matrix@example.com"},
    "UserService.BeginOAuthLogin": {
        "provider": "O_AUTH_PROVIDER_GOOGLE",
        "redirectUri": "http://localhost:5173/auth/callback",
    },
    "UserService.CompleteOAuthLogin": {"provider": "O_AUTH_PROVIDER_GOOGLE", "code": "bola", "state": "bola"},
    "UserService.RefreshSession": {"refreshToken": "not-a-refresh-token"},
    "UserService.Logout": {"refreshToken": "not-a-refresh-token"},
    "UserService.GetJwks": {},
    "UserService.GetUser": {"name": "{user}"},
    "ApiKeyService.CreateApiKey": {"displayName": "matrix", "scopes": ["read"]},
    "ApiKeyService.ListApiKeys": {},
    "ApiKeyService.DeleteApiKey": {"name": "{fresh api key}"},
    "ApiKeyService.RotateApiKeyWebhookSecret": {"name": "{fresh api key}"},
    "GenerationService.ListModels": {},
    "BillingService.ListPlans": {},
    "BillingService.CreateCheckout": {"plan": "PLAN_STARTER"},
    "BillingService.GetSubscription": {},
    "BillingService.UpgradeSubscription": {"plan": "PLAN_PRO"},
    "BillingService.HandleLemonSqueezyWebhook": {
        "body": {"contentType": "application/json", "data": base64.b64encode(b"{}").decode()}
    },
    "BillingService.GetCreditBalance": {},
    "BillingService.ListCreditEntries": {},
    "GenerationService.CreateGeneration": {"generation": _GENERATION},
    "GenerationService.BatchCreateGenerations": {"requests": [{"generation": _GENERATION}]},
    "GenerationService.CreateUpload": {"contentType": "image/png", "sizeBytes": "100"},
    "GenerationService.GetGeneration": {"generationId": "{generation}"},
    "GenerationService.ListGenerations": {},
    "GenerationService.CancelGeneration": {"generationId": "{fresh generation}"},
    "GenerationService.WatchGeneration": {"generationId": "{generation}"},
    "GalleryService.ListImages": {},
    "GalleryService.GetImage": {"imageId": "{generation}"},
    "GalleryService.UpdateImage": {
        "imageId": "{generation}",
        "image": {"starred": True, "board": "matrix"},
        "updateMask": "starred,board",
    },
    # Its own image: the owner's delete must leave {generation}'s for the others to find.
    "GalleryService.DeleteImage": {"imageId": "{fresh image}"},
    "GalleryService.GetImageContent": {"imageId": "{generation}", "expires": "1", "signature": "00" * 32},
}

OWNER = "owner"
ANOTHER_USER = "another user"
ANOTHER_USERS_KEY = "another user's API key"
KEY_WITHOUT_THE_SCOPE = "a key without the scope"
EXPIRED_TOKEN = "an expired token"
REVOKED_KEY = "a revoked key"
ANONYMOUS = "anonymous"
# The owner last: what it does (cancel, revoke) must not change what the others meet.
PRINCIPALS = (
    ANONYMOUS,
    EXPIRED_TOKEN,
    REVOKED_KEY,
    KEY_WITHOUT_THE_SCOPE,
    ANOTHER_USER,
    ANOTHER_USERS_KEY,
    OWNER,
)

REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}
FAILURES = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class Expected:
    """One exact code, or (code None) any answer but those in `excluded`."""

    code: grpc.StatusCode | None
    excluded: frozenset[grpc.StatusCode] = frozenset()
    label: str = ""

    def admits(self, outcome: Outcome) -> bool:
        if self.code is not None:
            return outcome.code == self.code
        return outcome.code not in self.excluded

    def __str__(self) -> str:
        return self.code.name if self.code is not None else self.label


SERVED = Expected(None, frozenset(REFUSALS | FAILURES), "served")
# A public RPC's own answer to whoever calls it: its refusals are its own (a spent refresh
# token, a wrong URL signature), never a server failure.
ANSWERED = Expected(None, frozenset(FAILURES), "answered, not failed")


def expectation(access: MethodAccess, principal: str, anonymous: Outcome) -> Expected:
    """What `principal` must get, from the declaration alone (see the module docstring).
    `anonymous` is what the anonymous caller got: a PUBLIC RPC owes everyone that answer."""
    if access.access_class == declared.PUBLIC:
        return ANSWERED if principal == ANONYMOUS else Expected(anonymous.code)
    if access.access_class == declared.WEBHOOK:
        return Expected(grpc.StatusCode.UNAUTHENTICATED)
    if principal in (ANONYMOUS, EXPIRED_TOKEN, REVOKED_KEY):
        return Expected(grpc.StatusCode.UNAUTHENTICATED)
    if access.access_class == declared.ADMIN:
        return Expected(grpc.StatusCode.PERMISSION_DENIED)
    if principal == KEY_WITHOUT_THE_SCOPE or (
        principal == ANOTHER_USERS_KEY and access.api_key_scope is None
    ):
        return Expected(grpc.StatusCode.PERMISSION_DENIED)
    if principal in (ANOTHER_USER, ANOTHER_USERS_KEY) and access.access_class == declared.OWNER:
        return Expected(grpc.StatusCode.NOT_FOUND)
    return SERVED


@dataclass
class Cast:
    """The callers of the matrix and what the owner made, shared by every case."""

    owner: Account
    other: Account
    bearers: dict[str, str | None]
    # The owner's keys by their scopes (a key without the scope is one of these).
    owner_keys: dict[frozenset[str], str]
    generation: str
    made: Callable[[str], str]

    def bearer(self, principal: str, access: MethodAccess) -> str | None:
        if principal != KEY_WITHOUT_THE_SCOPE:
            return self.bearers[principal]
        every = frozenset(declared.KNOWN_SCOPES)
        lacking = every - {access.api_key_scope} if access.api_key_scope else every
        return self.owner_keys[lacking]


def _key(rest: httpx.Client, account: Account, *scopes: str) -> dict[str, Any]:
    reply = rest.post(
        "/api/v1/apikeys", json={"displayName": "matrix", "scopes": list(scopes)}, headers=account.headers
    )
    assert reply.status_code == 200, reply.text
    created: dict[str, Any] = reply.json()
    return created


def _generation(rest: httpx.Client, account: Account) -> str:
    reply = rest.post("/api/v1/generation/create", json=_GENERATION, headers=account.headers)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def _finished_generation(mesh: RunningMesh, rest: httpx.Client, account: Account) -> str:
    """A generation that has succeeded, so that its image exists for the gallery's RPCs, whichever
    protocol asks first."""
    generation = _generation(rest, account)
    wait_for(lambda: row(mesh, generation)["state"] == "SUCCEEDED", within=120, message="never succeeded")
    return generation


@pytest.fixture(scope="module")
def cast(mesh: RunningMesh) -> Iterator[Cast]:
    owner, other = dev_login(mesh.gateway_url, "bola-owner"), dev_login(mesh.gateway_url, "bola-other")
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        revoked = _key(rest, owner, "read", "generate")
        gone = rest.delete(f"/api/v1/{revoked['apiKey']['name']}", headers=owner.headers)
        assert gone.status_code == 200, gone.text
        past = int(time.time()) - 3600
        scope_sets = [frozenset({scope}) for scope in declared.KNOWN_SCOPES] + [
            frozenset(declared.KNOWN_SCOPES)
        ]

        def made(placeholder: str) -> str:
            if placeholder == "{fresh generation}":
                return _generation(rest, owner)
            if placeholder == "{fresh image}":
                return _finished_generation(mesh, rest, owner)
            return str(_key(rest, owner, "read")["apiKey"]["name"])

        yield Cast(
            owner=owner,
            other=other,
            bearers={
                OWNER: f"Bearer {owner.token}",
                ANOTHER_USER: f"Bearer {other.token}",
                ANOTHER_USERS_KEY: f"Bearer {_key(rest, other, *declared.KNOWN_SCOPES)['secret']}",
                EXPIRED_TOKEN: "Bearer "
                + signed_with_the_real_key(mesh, owner.user_id, iat=past - 900, exp=past),
                REVOKED_KEY: f"Bearer {revoked['secret']}",
                ANONYMOUS: None,
            },
            owner_keys={scopes: f"Bearer {_key(rest, owner, *scopes)['secret']}" for scopes in scope_sets},
            generation=_finished_generation(mesh, rest, owner),
            made=made,
        )
        # What the matrix queued must not keep the worker busy for the tests that follow.
        for account in (owner, other):
            for row in mesh.sql(
                "SELECT id FROM generations WHERE user_id = %s AND state IN ('QUEUED', 'RUNNING')",
                account.user_id,
            ):
                rest.post(f"/api/v1/generation/{row['id']}/cancel", json={}, headers=account.headers)


@pytest.fixture(scope="module")
def gateway(mesh: RunningMesh) -> Iterator[Gateway]:
    with (
        grpc.insecure_channel(mesh.gateway_target) as channel,
        httpx.Client(base_url=mesh.gateway_url, timeout=60) as client,
    ):
        yield Gateway(channel, client)


def _request(method: descriptor.MethodDescriptor, cast: Cast) -> Message:
    fresh: dict[str, str] = {}

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if value == "{user}":
            return f"users/{cast.owner.user_id}"
        if value == "{generation}":
            return cast.generation
        if isinstance(value, str) and value.startswith("{fresh "):
            if value not in fresh:
                fresh[value] = cast.made(value)
            return fresh[value]
        return value

    name = f"{method.containing_service.name}.{method.name}"
    return json_format.ParseDict(fill(REQUESTS[name]), GetMessageClass(method.input_type)())


def test_every_rpc_of_the_contract_is_in_the_matrix_and_declares_its_access() -> None:
    assert sorted(REQUESTS) == sorted(METHODS), "an RPC needs a request here (and only its request)"
    for method in METHODS.values():
        method_access(method)  # raises for an RPC that declares no access class


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_access_matrix(name: str, protocol: str, cast: Cast, gateway: Gateway) -> None:
    method = METHODS[name]
    access = method_access(method)
    request = _request(method, cast)

    outcomes = {
        principal: gateway.call(protocol, method, request, cast.bearer(principal, access))
        for principal in PRINCIPALS
    }

    wrong = {
        principal: f"expected {expected}, got {outcome}"
        for principal, outcome in outcomes.items()
        if not (expected := expectation(access, principal, outcomes[ANONYMOUS])).admits(outcome)
    }
    assert not wrong, f"{name} over {protocol}:\n" + json.dumps(wrong, indent=2)
    for outcome in outcomes.values():
        # A REST caller learns the same as the others, as an HTTP status: 401, 403, 404.
        assert outcome.code not in FAILURES, f"{name} over {protocol}: {outcome}"


def test_the_matrix_tells_a_refusal_from_a_served_answer() -> None:
    """The expectation itself, on a declaration of each class: a matrix that admitted anything
    would pass every RPC."""
    ok, missing = Outcome(grpc.StatusCode.OK, None), Outcome(grpc.StatusCode.NOT_FOUND, None)
    owner_class = MethodAccess("x.Y.Get", declared.OWNER, "read")
    assert expectation(owner_class, ANOTHER_USER, missing) == Expected(grpc.StatusCode.NOT_FOUND)
    assert not SERVED.admits(missing) and SERVED.admits(ok)
    assert expectation(owner_class, KEY_WITHOUT_THE_SCOPE, missing) == Expected(
        grpc.StatusCode.PERMISSION_DENIED
    )
    user_class = MethodAccess("x.Y.Make", declared.USER, None)
    assert expectation(user_class, ANOTHER_USERS_KEY, missing) == Expected(grpc.StatusCode.PERMISSION_DENIED)
    assert expectation(user_class, ANOTHER_USER, missing) == SERVED
    assert expectation(MethodAccess("x.Y.Sign", declared.PUBLIC, None), EXPIRED_TOKEN, ok) == Expected(
        grpc.StatusCode.OK
    )
    assert expectation(MethodAccess("x.Y.Hook", declared.WEBHOOK, None), OWNER, ok) == Expected(
        grpc.StatusCode.UNAUTHENTICATED
    )
