"""Key rotation on a mesh of its own whose key-set cache period is 2 s, so a new key starts
signing within seconds: tokens the old key signed stay valid at the edge and at every service."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import jwt
import pytest
from pingvas.generation.v1 import generation_service_pb2 as generation
from pingvas.generation.v1 import generation_service_pb2_grpc as generation_grpc
from support.mesh import MeshStarter, RunningMesh

from services.common.database import Database
from services.common.keyring import SigningKeyring

CACHE_SECONDS = 2


@pytest.fixture(scope="module")
def rotation_mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    with own_mesh(
        "rotation-home",
        {
            "PINGVAS_JWKS_CACHE_SECONDS": str(CACHE_SECONDS),
            # Tokens and keys only: nothing here runs a generation, so no worker is started.
            "PINGVAS_WORKERS": "0",
        },
    ) as running:
        yield running


def _sign_in(rest: httpx.Client) -> str:
    reply = rest.post(
        "/api/v1/auth/dev-login", json={"email": f"rotation-{uuid.uuid4().hex[:10]}@example.com"}
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["accessToken"])


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def _rotate(mesh: RunningMesh) -> str:
    """What the user service does when its key has signed long enough, done now."""
    secret = json.loads((mesh.home / "secrets.json").read_text())["PINGVAS_JWT_SECRET"]
    database = Database(mesh.app_database_url, schema=mesh.schema, system_url=mesh.system_database_url)
    try:
        keyring = SigningKeyring(
            database,
            secret=secret,
            publication_lead_seconds=CACHE_SECONDS,
            rotation_seconds=30 * 24 * 3600,
            token_ttl_seconds=900,
        )
        return await keyring.rotate()
    finally:
        await database.close()


def _accepted_everywhere(mesh: RunningMesh, rest: httpx.Client, token: str) -> None:
    headers = {"authorization": f"Bearer {token}"}
    assert rest.get("/api/v1/users/me", headers=headers).status_code == 200
    assert rest.get("/api/v1/generation", headers=headers).status_code == 200
    assert rest.get("/api/v1/credits/balance", headers=headers).status_code == 200
    port = json.loads((mesh.home / "run" / "mesh.json").read_text())["ports"]["generation"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as direct:
        generation_grpc.GenerationServiceStub(direct).ListGenerations(
            generation.ListGenerationsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )


def test_a_rotation_publishes_the_new_key_first_and_keeps_issued_tokens_valid(
    rotation_mesh: RunningMesh,
) -> None:
    with httpx.Client(base_url=rotation_mesh.gateway_url, timeout=30) as rest:
        old_token = _sign_in(rest)
        _accepted_everywhere(rotation_mesh, rest, old_token)

        new_kid = asyncio.run(_rotate(rotation_mesh))

        # Published at once, before it signs anything.
        published = {key["kid"] for key in rest.get("/.well-known/jwks.json").json()["keys"]}
        assert {_kid(old_token), new_kid} <= published
        assert _kid(_sign_in(rest)) == _kid(old_token)

        deadline = time.monotonic() + 60
        new_token = _sign_in(rest)
        while _kid(new_token) != new_kid:
            assert time.monotonic() < deadline, "the new key never began signing"
            time.sleep(0.2)
            new_token = _sign_in(rest)

        _accepted_everywhere(rotation_mesh, rest, new_token)
        _accepted_everywhere(rotation_mesh, rest, old_token)
