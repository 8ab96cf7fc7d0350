"""What the mesh refuses, and how: out of credits (402 / FAILED_PRECONDITION), invalid input
(400 / INVALID_ARGUMENT with field violations), unknown or foreign ids (404) and missing tokens
(401). A refused request is never queued and
never charged."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

VALID = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 4, "seed": 1}


def rich_status(
    error: grpc.RpcError,
) -> tuple[list[error_details_pb2.ErrorInfo], list[error_details_pb2.BadRequest]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in grpc-status-details-bin"
    infos, bad_requests = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            bad_requests.append(bad_request)
    return infos, bad_requests


def nothing_queued_or_charged(mesh: Any, user_id: str, balance_before: int) -> None:
    assert mesh.sql("SELECT id FROM generations WHERE user_id = %s", user_id) == []
    assert (
        mesh.sql(
            "SELECT kind FROM credit_entries WHERE user_id = %s AND kind IN ('hold', 'capture')", user_id
        )
        == []
    )
    (account,) = mesh.sql("SELECT balance, held FROM credit_accounts WHERE user_id = %s", user_id)
    assert (account["balance"], account["held"]) == (balance_before, 0)
    assert mesh.redis().keys(f"queue:*:{user_id}") == []


def test_out_of_credits_is_402_over_rest_and_failed_precondition_over_grpc(
    mesh: Any, new_account: Any, rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    account = new_account("broke")
    drained = mesh.pingvas("admin", "grant-credits", account.email, "-100")
    assert drained.returncode == 0, drained.stderr
    assert "0 credits" in drained.stdout

    reply = rest.post("/api/v1/generation/create", json=VALID, headers=account.headers)
    assert reply.status_code == 402, reply.text
    body = reply.json()
    assert body["details"][0]["reason"] == "INSUFFICIENT_CREDITS"
    assert "insufficient credits" in body["message"]

    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GenerationServiceStub(gateway_channel).CreateGeneration(
            pb.CreateGenerationRequest(
                generation=resources.Generation(prompt="fox", width=64, height=64, steps=4)
            ),
            metadata=account.metadata,
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (info,), _ = rich_status(caught.value)
    assert (info.reason, info.domain) == ("INSUFFICIENT_CREDITS", "generation.pingvas.studio")
    nothing_queued_or_charged(mesh, account.user_id, balance_before=0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": ""}, "generation.prompt"),
        ({"prompt": "   "}, "generation.prompt"),
        ({"prompt": "x" * 2001}, "generation.prompt"),
        ({"prompt": "a fox\u0000"}, "generation.prompt"),  # PostgreSQL text cannot hold NUL
        ({"negative_prompt": "\u0000"}, "generation.negative_prompt"),
        ({"width": 60}, "generation.width"),
        ({"height": 4096}, "generation.height"),
        ({"width": 512}, "generation.width"),  # a multiple of 8, but outside tiny-sd's range
        ({"steps": 0}, "generation.steps"),
        ({"steps": 151}, "generation.steps"),
        ({"seed": -1}, "generation.seed"),
        ({"seed": 4294967296}, "generation.seed"),
        ({"guidance": 31}, "generation.guidance"),
        ({"model": "no-such-model"}, "generation.model"),
    ],
)
def test_invalid_input_names_the_field_over_rest(
    mesh: Any, new_account: Any, rest: httpx.Client, change: dict[str, Any], field: str
) -> None:
    account = new_account("invalid")
    reply = rest.post("/api/v1/generation/create", json={**VALID, **change}, headers=account.headers)
    assert reply.status_code == 400, reply.text
    details = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in reply.json()["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert field in [violation["field"] for violation in details["google.rpc.BadRequest"]["fieldViolations"]]
    nothing_queued_or_charged(mesh, account.user_id, balance_before=100)


def test_every_violation_is_reported_at_once_over_grpc(
    mesh: Any, new_account: Any, gateway_channel: grpc.Channel
) -> None:
    account = new_account("invalid-grpc")
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GenerationServiceStub(gateway_channel).CreateGeneration(
            pb.CreateGenerationRequest(
                generation=resources.Generation(prompt="", width=63, steps=200, seed=-5)
            ),
            metadata=account.metadata,
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, (bad_request,) = rich_status(caught.value)
    assert {v.field for v in bad_request.field_violations} == {
        "generation.prompt",
        "generation.width",
        "generation.steps",
        "generation.seed",
    }
    nothing_queued_or_charged(mesh, account.user_id, balance_before=100)


def test_missing_generation_body_is_invalid(new_account: Any, gateway_channel: grpc.Channel) -> None:
    account = new_account("no-body")
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GenerationServiceStub(gateway_channel).CreateGeneration(
            pb.CreateGenerationRequest(), metadata=account.metadata, timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_and_foreign_generations_are_not_found(
    mesh: Any, new_account: Any, rest: httpx.Client
) -> None:
    owner, stranger = new_account("owner"), new_account("stranger")
    created = rest.post("/api/v1/generation/create", json={**VALID, "steps": 1}, headers=owner.headers).json()

    for path in (f"/api/v1/generation/{created['id']}", f"/api/v1/generation/{created['id']}/events"):
        assert rest.get(path, headers=stranger.headers).status_code == 404
    assert (
        rest.post(f"/api/v1/generation/{created['id']}/cancel", json={}, headers=stranger.headers).status_code
        == 404
    )
    assert (
        rest.get("/api/v1/generation/7b0c33a4-7a0a-4f5e-9d7e-1f6d8c1a2b3c", headers=owner.headers).status_code
        == 404
    )
    malformed = rest.get("/api/v1/generation/not-a-uuid", headers=owner.headers)
    assert malformed.status_code == 400
    assert "generation_id" in malformed.text
    # The stranger's attempt left the owner's generation alone.
    assert rest.get(f"/api/v1/generation/{created['id']}", headers=owner.headers).status_code == 200


def test_requests_without_a_valid_token_are_unauthenticated(
    rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    assert rest.get("/api/v1/users/me").status_code == 401
    assert rest.get("/api/v1/users/me", headers={"authorization": "Bearer not-a-jwt"}).status_code == 401
    assert rest.post("/api/v1/generation/create", json=VALID).status_code == 401
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GenerationServiceStub(gateway_channel).ListGenerations(
            pb.ListGenerationsRequest(), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_dev_login_rejects_a_malformed_email(rest: httpx.Client) -> None:
    reply = rest.post("/api/v1/auth/dev-login", json={"email": "not-an-email"})
    assert reply.status_code == 400
    assert "email" in reply.text


def test_users_me_reports_plan_and_credits(new_account: Any, rest: httpx.Client) -> None:
    account = new_account("me")
    me = rest.get("/api/v1/users/me", headers=account.headers).json()
    assert (me["id"], me["email"], me["plan"]) == (account.user_id, account.email, "PLAN_FREE")
    assert me["credits"] == {"balance": "100", "held": "0", "available": "100"}
    assert rest.get("/api/v1/users/someone-else", headers=account.headers).status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/api/v1/credits/entries", "/api/v1/generation"],
)
@pytest.mark.parametrize(
    "token",
    [
        "1" * 40,  # an entry id past PostgreSQL's bigint once answered 500
        "9223372036854775808",
        "-1",
        "0",
        "+5",
        "1_000",
        "²",
        "not-a-token",
        "bm90fGEtdXVpZA==",  # base64 of "not|a-uuid"
    ],
)
def test_page_tokens_this_api_never_returned_are_invalid_page_token(
    new_account: Any, rest: httpx.Client, path: str, token: str
) -> None:
    account = new_account("page-token")
    reply = rest.get(path, params={"pageToken": token}, headers=account.headers)
    assert reply.status_code == 400, reply.text
    details = {detail["@type"].rsplit("/", 1)[-1]: detail for detail in reply.json()["details"]}
    assert [v["field"] for v in details["google.rpc.BadRequest"]["fieldViolations"]] == ["page_token"]
