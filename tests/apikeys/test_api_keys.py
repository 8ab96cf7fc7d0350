"""Partner API keys on the real mesh: created with a secret shown once, used as a bearer on gRPC,
gRPC-Web and REST by every service, held to their scopes, revoked everywhere at once, expired,
their last use recorded, and never another user's to see or revoke."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.billing.v1 import billing_service_pb2
from pingvas.gallery.v1 import gallery_service_pb2
from pingvas.generation.v1 import generation_resources_pb2, generation_service_pb2
from pingvas.user.v1 import api_key_service_pb2, user_service_pb2
from support.accounts import Account
from support.mesh import RunningMesh
from support.protocols import PROTOCOLS, Gateway

from services.common.access import KNOWN_SCOPES

pytestmark = pytest.mark.integration


def _method(file: Any, service: str, name: str) -> descriptor.MethodDescriptor:
    method: descriptor.MethodDescriptor = file.DESCRIPTOR.services_by_name[service].methods_by_name[name]
    return method


GET_USER = _method(user_service_pb2, "UserService", "GetUser")
GET_CREDIT_BALANCE = _method(billing_service_pb2, "BillingService", "GetCreditBalance")
LIST_GENERATIONS = _method(generation_service_pb2, "GenerationService", "ListGenerations")
CREATE_GENERATION = _method(generation_service_pb2, "GenerationService", "CreateGeneration")
LIST_IMAGES = _method(gallery_service_pb2, "GalleryService", "ListImages")
CREATE_API_KEY = _method(api_key_service_pb2, "ApiKeyService", "CreateApiKey")
LIST_API_KEYS = _method(api_key_service_pb2, "ApiKeyService", "ListApiKeys")
DELETE_API_KEY = _method(api_key_service_pb2, "ApiKeyService", "DeleteApiKey")

# One read RPC of each service: a key works with all of them or with none.
READS_OF_EVERY_SERVICE: list[tuple[descriptor.MethodDescriptor, Message]] = [
    (GET_USER, user_service_pb2.GetUserRequest(name="users/me")),
    (GET_CREDIT_BALANCE, billing_service_pb2.GetCreditBalanceRequest()),
    (LIST_GENERATIONS, generation_service_pb2.ListGenerationsRequest()),
    (LIST_IMAGES, gallery_service_pb2.ListImagesRequest()),
]


@pytest.fixture
def gateway(mesh: RunningMesh) -> Iterator[Gateway]:
    with (
        grpc.insecure_channel(mesh.gateway_target) as channel,
        httpx.Client(base_url=mesh.gateway_url, timeout=60) as client,
    ):
        yield Gateway(channel, client)


def new_generation(prompt: str) -> generation_service_pb2.CreateGenerationRequest:
    return generation_service_pb2.CreateGenerationRequest(
        generation=generation_resources_pb2.Generation(prompt=prompt, width=64, height=64, steps=1)
    )


def create_key(rest: httpx.Client, owner: Account, *scopes: str, **extra: Any) -> dict[str, Any]:
    reply = rest.post(
        "/api/v1/apikeys",
        json={"displayName": f"key {uuid.uuid4().hex[:6]}", "scopes": list(scopes), **extra},
        headers=owner.headers,
    )
    assert reply.status_code == 200, reply.text
    created: dict[str, Any] = reply.json()
    return created


def _time(rfc3339: str) -> datetime:
    stamp = Timestamp()
    stamp.FromJsonString(rfc3339)
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


def bearer(created: dict[str, Any]) -> str:
    return f"Bearer {created['secret']}"


def listed(rest: httpx.Client, owner: Account) -> dict[str, dict[str, Any]]:
    reply = rest.get("/api/v1/apikeys", headers=owner.headers)
    assert reply.status_code == 200, reply.text
    return {key["id"]: key for key in reply.json().get("apiKeys", [])}


def test_the_scope_rule_of_the_contract_names_every_scope_the_services_know() -> None:
    from pingvas.rules.v1 import rules_pb2

    field = api_key_service_pb2.CreateApiKeyRequest.DESCRIPTOR.fields_by_name["scopes"]
    assert (
        set(getattr(field.GetOptions().Extensions[rules_pb2.field], "in"))
        == KNOWN_SCOPES
        == {
            "read",
            "generate",
        }
    )


def test_a_key_is_returned_with_its_secret_once_and_stored_as_a_hash(
    mesh: RunningMesh, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")

    created = create_key(rest, owner, "read", "generate")

    secret, key = created["secret"], created["apiKey"]
    assert secret.startswith("pv_live_") and len(secret) >= 40
    assert key["name"] == f"apikeys/{key['id']}"
    assert key["prefix"] == secret[:12] and sorted(key["scopes"]) == ["generate", "read"]
    assert key["createTime"] and "lastUseTime" not in key and "expireTime" not in key
    rows = mesh.sql("SELECT * FROM api_keys WHERE id = %s", key["id"])
    assert len(rows) == 1
    assert bytes(rows[0]["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert secret not in json.dumps(rows, default=str)
    # Listing never returns it again, by any protocol.
    listing = rest.get("/api/v1/apikeys", headers=owner.headers)
    assert listing.status_code == 200 and key["id"] in listing.text
    assert secret not in listing.text and '"secret"' not in listing.text
    with grpc.insecure_channel(mesh.gateway_target) as channel:
        reply = channel.unary_unary(
            "/pingvas.user.v1.ApiKeyService/ListApiKeys",
            request_serializer=api_key_service_pb2.ListApiKeysRequest.SerializeToString,
            response_deserializer=api_key_service_pb2.ListApiKeysResponse.FromString,
        )(api_key_service_pb2.ListApiKeysRequest(), metadata=owner.metadata)
    assert [k.id for k in reply.api_keys] == [key["id"]]
    assert secret.encode() not in reply.SerializeToString()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_authenticates_as_its_user_with_every_service(
    protocol: str, gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    created = create_key(rest, owner, "read", "generate")

    for method, request in READS_OF_EVERY_SERVICE:
        outcome = gateway.call(protocol, method, request, bearer(created))
        assert outcome.code == grpc.StatusCode.OK, f"{method.full_name}: {outcome}"
    me = gateway.call(protocol, GET_USER, user_service_pb2.GetUserRequest(name="users/me"), bearer(created))
    reply_id = me.reply["id"] if protocol == "rest" else me.reply.id
    assert reply_id == owner.user_id
    generation = gateway.call(
        protocol,
        CREATE_GENERATION,
        new_generation("a key's moth"),
        bearer(created),
    )
    assert generation.code == grpc.StatusCode.OK, str(generation)
    generation_id = generation.reply["id"] if protocol == "rest" else generation.reply.id
    # It is the owner's generation: the owner's own token finds it.
    assert rest.get(f"/api/v1/generation/{generation_id}", headers=owner.headers).status_code == 200
    rest.post(f"/api/v1/generation/{generation_id}/cancel", json={}, headers=owner.headers)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_without_the_scope_an_rpc_declares_is_refused_403(
    protocol: str, gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    reader, generator = create_key(rest, owner, "read"), create_key(rest, owner, "generate")

    create = gateway.call(
        protocol,
        CREATE_GENERATION,
        new_generation("not allowed"),
        bearer(reader),
    )
    read = gateway.call(
        protocol, LIST_GENERATIONS, generation_service_pb2.ListGenerationsRequest(), bearer(generator)
    )

    for outcome in (create, read):
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, str(outcome)
        if protocol == "rest":
            assert outcome.http_status == 403
    assert "generate" in str(create.reply) and "read" in str(read.reply)
    assert mesh_generations(rest, owner) == []
    # The scope it holds works.
    allowed = gateway.call(
        protocol, LIST_GENERATIONS, generation_service_pb2.ListGenerationsRequest(), bearer(reader)
    )
    assert allowed.code == grpc.StatusCode.OK


def mesh_generations(rest: httpx.Client, owner: Account) -> list[Any]:
    reply = rest.get("/api/v1/generation", headers=owner.headers)
    assert reply.status_code == 200, reply.text
    generations: list[Any] = reply.json().get("generations", [])
    return generations


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_cannot_manage_keys(
    protocol: str, gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    created = create_key(rest, owner, "read", "generate")
    name = created["apiKey"]["name"]

    outcomes = [
        gateway.call(
            protocol,
            CREATE_API_KEY,
            api_key_service_pb2.CreateApiKeyRequest(display_name="minted", scopes=["read"]),
            bearer(created),
        ),
        gateway.call(protocol, LIST_API_KEYS, api_key_service_pb2.ListApiKeysRequest(), bearer(created)),
        gateway.call(
            protocol, DELETE_API_KEY, api_key_service_pb2.DeleteApiKeyRequest(name=name), bearer(created)
        ),
    ]

    assert [o.code for o in outcomes] == [grpc.StatusCode.PERMISSION_DENIED] * 3, [str(o) for o in outcomes]
    assert list(listed(rest, owner)) == [created["apiKey"]["id"]]


def test_a_revoked_key_is_refused_401_by_every_service_and_protocol_as_soon_as_delete_answers(
    gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    created = create_key(rest, owner, "read")
    for protocol in PROTOCOLS:
        for method, request in READS_OF_EVERY_SERVICE:
            outcome = gateway.call(protocol, method, request, bearer(created))
            assert outcome.code == grpc.StatusCode.OK, f"{protocol} {method.full_name}: {outcome}"

    revoked = rest.delete(f"/api/v1/{created['apiKey']['name']}", headers=owner.headers)

    assert revoked.status_code == 200, revoked.text
    for protocol in PROTOCOLS:
        for method, request in READS_OF_EVERY_SERVICE:
            outcome = gateway.call(protocol, method, request, bearer(created))
            assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (
                f"{protocol} {method.full_name}: {outcome}"
            )
            if protocol == "rest":
                assert outcome.http_status == 401
    assert listed(rest, owner) == {}
    again = rest.delete(f"/api/v1/{created['apiKey']['name']}", headers=owner.headers)
    assert again.status_code == 404, again.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_expired_key_is_refused_401(
    protocol: str, mesh: RunningMesh, gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    expiry = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    created = create_key(rest, owner, "read", expireTime=expiry)
    assert created["apiKey"]["expireTime"]
    request = generation_service_pb2.ListGenerationsRequest()
    assert gateway.call(protocol, LIST_GENERATIONS, request, bearer(created)).code == grpc.StatusCode.OK

    # Its day passes.
    mesh.sql(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", created["apiKey"]["id"]
    )

    outcome = gateway.call(protocol, LIST_GENERATIONS, request, bearer(created))
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, str(outcome)
    if protocol == "rest":
        assert outcome.http_status == 401
    # Still listed, so its user sees why it stopped.
    assert created["apiKey"]["id"] in listed(rest, owner)


def test_a_keys_last_use_is_recorded(
    mesh: RunningMesh, gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    created = create_key(rest, owner, "read")
    key_id = created["apiKey"]["id"]
    assert "lastUseTime" not in listed(rest, owner)[key_id]

    gateway.call("grpc", LIST_GENERATIONS, generation_service_pb2.ListGenerationsRequest(), bearer(created))

    first = _time(listed(rest, owner)[key_id]["lastUseTime"])
    assert first >= _time(created["apiKey"]["createTime"])
    # An hour later (as the database tells it), the next use moves it again.
    mesh.sql("UPDATE api_keys SET last_used_at = last_used_at - interval '1 hour' WHERE id = %s", key_id)
    assert _time(listed(rest, owner)[key_id]["lastUseTime"]) < first
    gateway.call("rest", GET_CREDIT_BALANCE, billing_service_pb2.GetCreditBalanceRequest(), bearer(created))
    assert _time(listed(rest, owner)[key_id]["lastUseTime"]) >= first


def test_another_user_can_neither_list_nor_revoke_my_keys(
    gateway: Gateway, rest: httpx.Client, new_account: Any
) -> None:
    owner, other = new_account("keys"), new_account("keys-other")
    created = create_key(rest, owner, "read")
    theirs = create_key(rest, other, "read")

    assert list(listed(rest, other)) == [theirs["apiKey"]["id"]]
    for protocol in PROTOCOLS:
        outcome = gateway.call(
            protocol,
            DELETE_API_KEY,
            api_key_service_pb2.DeleteApiKeyRequest(name=created["apiKey"]["name"]),
            other.headers["authorization"],
        )
        assert outcome.code == grpc.StatusCode.NOT_FOUND, f"{protocol}: {outcome}"

    assert list(listed(rest, owner)) == [created["apiKey"]["id"]]
    still = gateway.call(
        "rest", LIST_GENERATIONS, generation_service_pb2.ListGenerationsRequest(), bearer(created)
    )
    assert still.code == grpc.StatusCode.OK


PAST = "2000-01-01T00:00:00Z"
BAD_INPUT = {
    "empty display name": ({"displayName": "", "scopes": ["read"]}, "display_name"),
    "blank display name": ({"displayName": "   ", "scopes": ["read"]}, "display_name"),
    "unknown scope": ({"displayName": "k", "scopes": ["read", "admin"]}, "scopes[1]"),
    "no scope": ({"displayName": "k", "scopes": []}, "scopes"),
    "expiry in the past": ({"displayName": "k", "scopes": ["read"], "expireTime": PAST}, "expire_time"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_400_invalid_argument_naming_the_field(
    case: str, mesh: RunningMesh, rest: httpx.Client, new_account: Any
) -> None:
    owner = new_account("keys")
    body, field = BAD_INPUT[case]

    reply = rest.post("/api/v1/apikeys", json=body, headers=owner.headers)

    assert reply.status_code == 400, reply.text
    violations = [
        violation for detail in reply.json()["details"] for violation in detail.get("fieldViolations", [])
    ]
    assert field in [v["field"] for v in violations], reply.text
    request = api_key_service_pb2.CreateApiKeyRequest(display_name=body["displayName"], scopes=body["scopes"])
    if "expireTime" in body:
        request.expire_time.FromJsonString(body["expireTime"])
    with grpc.insecure_channel(mesh.gateway_target) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(
            "/pingvas.user.v1.ApiKeyService/CreateApiKey",
            request_serializer=api_key_service_pb2.CreateApiKeyRequest.SerializeToString,
            response_deserializer=api_key_service_pb2.CreateApiKeyResponse.FromString,
        )(request, metadata=owner.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert field in [v.field for v in bad_request.field_violations]
    assert listed(rest, owner) == {}


def test_the_cli_creates_lists_and_revokes_a_users_keys(mesh: RunningMesh, new_account: Any) -> None:
    owner = new_account("keys-cli")

    created = mesh.pingvas(
        "admin", "apikeys", "create", owner.email, "--name", "render farm", "--scope", "generate"
    )

    assert created.returncode == 0, created.stderr
    secret = created.stdout.split("secret (shown only now): ")[1].strip()
    name = created.stdout.split("\t")[0]
    listing = mesh.pingvas("admin", "apikeys", "list", owner.user_id)
    assert listing.returncode == 0, listing.stderr
    assert name in listing.stdout and "render farm" in listing.stdout and secret not in listing.stdout
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as rest:
        headers = {"authorization": f"Bearer {secret}"}
        made = rest.post(
            "/api/v1/generation/create",
            json={"prompt": "a cli moth", "width": 64, "height": 64, "steps": 1},
            headers=headers,
        )
        assert made.status_code == 200, made.text
        rest.post(f"/api/v1/generation/{made.json()['id']}/cancel", json={}, headers=owner.headers)

        revoked = mesh.pingvas("admin", "apikeys", "revoke", owner.email, name)

        assert revoked.returncode == 0, revoked.stderr
        assert rest.get("/api/v1/generation", headers=headers).status_code == 401
    unknown = mesh.pingvas("admin", "apikeys", "list", "nobody-at-all@example.com")
    assert unknown.returncode == 2 and "no user" in unknown.stderr
