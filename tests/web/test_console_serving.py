"""How `pingvas up` serves the console on the API's port: the static-file process behind the
gateway's last route, with its Content-Security-Policy and cache headers, index.html for the
app's own paths, and nothing of the API's (REST, the JWKS, gRPC) ever answered by it."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.mesh import RunningMesh

pytestmark = [pytest.mark.integration]


def test_pages_are_the_app_with_its_security_headers(console_mesh: RunningMesh, console_build: Path) -> None:
    index = (console_build / "index.html").read_text()
    for path in (
        "/",
        "/gallery",
        "/generations/0b6f0c9e-8d4f-4a53-9d37-7a4f3c2f8f11",
        "/oauth/callback?code=x",
    ):
        page = httpx.get(f"{console_mesh.gateway_url}{path}", timeout=30)
        assert (page.status_code, page.text) == (200, index), path
        assert page.headers["cache-control"] == "no-cache"
        policy = page.headers["content-security-policy"]
        assert (
            "default-src 'self'" in policy
            and "script-src 'self'" in policy
            and "connect-src 'self'" in policy
        )
        s3 = console_mesh.s3_env["S3_ENDPOINT_URL"]
        assert f"img-src 'self' blob: data: {s3}" in policy, "the image host, and no other"
        assert page.headers["referrer-policy"] == "no-referrer"


def test_hashed_assets_are_immutable_and_a_missing_one_is_404_not_the_page(
    console_mesh: RunningMesh, console_build: Path
) -> None:
    script = next((console_build / "assets").glob("*.js"))
    asset = httpx.get(f"{console_mesh.gateway_url}/assets/{script.name}", timeout=30)
    assert asset.status_code == 200 and asset.content == script.read_bytes()
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in asset.headers["content-type"]
    assert httpx.get(f"{console_mesh.gateway_url}/assets/gone-0123.js", timeout=30).status_code == 404


def test_the_api_keeps_its_paths(console_mesh: RunningMesh) -> None:
    gateway = console_mesh.gateway_url
    unknown_rest = httpx.get(f"{gateway}/api/v1/no-such-thing", timeout=30)
    assert unknown_rest.status_code == 404 and "<html" not in unknown_rest.text
    jwks = httpx.get(f"{gateway}/.well-known/jwks.json", timeout=30)
    assert jwks.status_code == 200 and jwks.json()["keys"]
    # A gRPC call of a service the gateway does not route is no page either.
    with (
        grpc.insecure_channel(gateway.removeprefix("http://")) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
