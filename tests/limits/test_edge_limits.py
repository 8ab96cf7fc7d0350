"""What the gateway refuses before a backend works for it: the routes that run before sign-in
past their per-IP rate (429 / RESOURCE_EXHAUSTED with x-ratelimit-reset, the IP taken from the
trusted X-Forwarded-For hop, so a spoofed extra entry changes nothing), a REST body past its
limit (413), a gRPC message past the services' limit (RESOURCE_EXHAUSTED), and a client deadline
longer than the gateway's (capped). The mesh: sign-in 3 per minute per IP, one trusted hop, a
5 s unary deadline (tests/limits/conftest.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import httpx
import psycopg2
import pytest
from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from pingvas.generation.v1 import generation_service_pb2_grpc as pb_grpc
from pingvas.user.v1 import user_service_pb2 as user_pb
from pingvas.user.v1 import user_service_pb2_grpc as user_grpc
from support.limits import SIGN_IN_PER_IP, UNARY_TIMEOUT_SECONDS, client_ip, sign_up

from gateway.envoy import MAX_TRANSCODED_REQUEST_BYTES

pytestmark = pytest.mark.integration


def dev_login(rest: httpx.Client, forwarded_for: str) -> httpx.Response:
    email = f"edge-{uuid.uuid4().hex[:10]}@example.com"
    return rest.post(
        "/api/v1/auth/dev-login", json={"email": email}, headers={"x-forwarded-for": forwarded_for}
    )


def test_sign_in_past_its_per_ip_rate_is_429_with_x_ratelimit_reset(limits_mesh: Any) -> None:
    client, other = client_ip(), client_ip()
    with httpx.Client(base_url=limits_mesh.gateway_url, timeout=30) as rest:
        for _ in range(SIGN_IN_PER_IP):
            assert dev_login(rest, client).status_code == 200
        refused = dev_login(rest, client)
        assert refused.status_code == 429, refused.text
        reset = int(refused.headers["x-ratelimit-reset"])
        assert 0 < reset <= 60
        assert refused.headers["x-ratelimit-limit"].startswith(str(SIGN_IN_PER_IP))
        assert refused.headers["x-ratelimit-remaining"] == "0"

        # The client cannot dodge it by adding an address of its own on the left: only the entry
        # the trusted proxy appended (the rightmost) names it.
        spoofed = dev_login(rest, f"{client_ip()}, {client}")
        assert spoofed.status_code == 429, spoofed.text

        # Each IP has its own allowance, whatever the forged entries say.
        assert dev_login(rest, f"{client}, {other}").status_code == 200

    # Native gRPC is counted on the same bucket, and refused RESOURCE_EXHAUSTED.
    with grpc.insecure_channel(limits_mesh.gateway_target) as channel, pytest.raises(grpc.RpcError) as caught:
        user_grpc.UserServiceStub(channel).DevLogin(
            user_pb.DevLoginRequest(email=f"edge-{uuid.uuid4().hex[:10]}@example.com"),
            metadata=(("x-forwarded-for", client),),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_rest_body_past_the_limit_is_413(limits_mesh: Any) -> None:
    account = sign_up(limits_mesh, "oversized-rest")
    prompt = "a" * (MAX_TRANSCODED_REQUEST_BYTES + 1)
    with httpx.Client(base_url=limits_mesh.gateway_url, timeout=60) as rest:
        reply = rest.post("/api/v1/generation/create", json={"prompt": prompt}, headers=account.headers)
    assert reply.status_code == 413, reply.text[:500]
    assert limits_mesh.sql("SELECT id FROM generations WHERE user_id = %s", account.user_id) == []


def test_a_grpc_message_past_the_limit_is_resource_exhausted(limits_mesh: Any) -> None:
    account = sign_up(limits_mesh, "oversized-grpc")
    request = pb.CreateGenerationRequest(
        generation=resources.Generation(prompt="a" * (MAX_TRANSCODED_REQUEST_BYTES + 1))
    )
    with grpc.insecure_channel(limits_mesh.gateway_target) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GenerationServiceStub(channel).CreateGeneration(
            request, metadata=account.metadata, timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limits_mesh.sql("SELECT id FROM generations WHERE user_id = %s", account.user_id) == []


def test_a_client_deadline_past_the_gateways_is_capped(limits_mesh: Any) -> None:
    account = sign_up(limits_mesh, "deadline")
    with grpc.insecure_channel(limits_mesh.gateway_target) as channel:
        users = user_grpc.UserServiceStub(channel)
        users.GetUser(user_pb.GetUserRequest(name="users/me"), metadata=account.metadata, timeout=30)
        lock = psycopg2.connect(limits_mesh.admin_database_url)
        try:
            with lock.cursor() as cursor:
                cursor.execute(f"SET search_path TO {limits_mesh.schema}")
                # Every read of `users` waits now, as behind a stuck migration.
                cursor.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                users.GetUser(
                    user_pb.GetUserRequest(name="users/me"), metadata=account.metadata, timeout=3600
                )
            elapsed = time.monotonic() - started
            with httpx.Client(base_url=limits_mesh.gateway_url, timeout=3600) as rest:
                started = time.monotonic()
                over_rest = rest.get("/api/v1/users/me", headers=account.headers)
                rest_elapsed = time.monotonic() - started
        finally:
            lock.rollback()
            lock.close()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value
    assert UNARY_TIMEOUT_SECONDS - 0.5 <= elapsed < UNARY_TIMEOUT_SECONDS + 10
    assert over_rest.status_code == 504, over_rest.text
    assert UNARY_TIMEOUT_SECONDS - 0.5 <= rest_elapsed < UNARY_TIMEOUT_SECONDS + 10
