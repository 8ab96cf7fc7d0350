"""Sessions on the real mesh: ES256 access tokens checked at the edge (Envoy's jwt_authn) and
again by the services, the published JWKS, and refresh tokens that rotate on every use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import jwt
import psycopg2
import psycopg2.errors
import pytest
from cryptography.hazmat.primitives import serialization
from pingvas.user.v1 import user_service_pb2 as pb
from pingvas.user.v1 import user_service_pb2_grpc as pb_grpc
from support.mesh import RunningMesh
from support.tokens import claims, signed_by_a_stranger, signing_key

GENERIC = "invalid or expired token"


def _sign_in(rest: httpx.Client, prefix: str = "session") -> dict[str, Any]:
    reply = rest.post(
        "/api/v1/auth/dev-login", json={"email": f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"}
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _refresh(rest: httpx.Client, token: str) -> httpx.Response:
    return rest.post("/api/v1/auth/refresh", json={"refreshToken": token})


def _me(rest: httpx.Client, access_token: str) -> httpx.Response:
    return rest.get("/api/v1/users/me", headers={"authorization": f"Bearer {access_token}"})


def _service_port(mesh: RunningMesh, name: str) -> int:
    return int(json.loads((mesh.home / "run" / "mesh.json").read_text())["ports"][name])


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _expired(mesh: RunningMesh, user_id: str) -> str:
    kid, key = signing_key(mesh)
    past = int(time.time()) - 3600
    return jwt.encode(claims(user_id, iat=past - 900, exp=past), key, algorithm="ES256", headers={"kid": kid})


def _wrong_issuer(mesh: RunningMesh, user_id: str) -> str:
    kid, key = signing_key(mesh)
    return jwt.encode(claims(user_id, iss="someone-else"), key, algorithm="ES256", headers={"kid": kid})


def _wrong_audience(mesh: RunningMesh, user_id: str) -> str:
    kid, key = signing_key(mesh)
    return jwt.encode(claims(user_id, aud="another-api"), key, algorithm="ES256", headers={"kid": kid})


def _alg_none(mesh: RunningMesh, user_id: str) -> str:
    kid, _key = signing_key(mesh)
    return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64(claims(user_id))}."


def _hs256_with_the_public_key(mesh: RunningMesh, user_id: str) -> str:
    """The algorithm-confusion attack: the public key's PEM as an HMAC secret."""
    kid, key = signing_key(mesh)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(header)}.{_b64(claims(user_id))}".encode()
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    return f"{signing_input.decode()}.{signature.rstrip(b'=').decode()}"


def _unknown_kid(mesh: RunningMesh, user_id: str) -> str:
    return signed_by_a_stranger(user_id)


BAD_TOKENS: dict[str, Callable[[RunningMesh, str], str]] = {
    "expired": _expired,
    "wrong issuer": _wrong_issuer,
    "wrong audience": _wrong_audience,
    "alg none": _alg_none,
    "HS256 with the public key": _hs256_with_the_public_key,
    "unknown kid": _unknown_kid,
}


def test_a_sign_in_returns_an_es256_access_token_with_a_published_kid_and_a_refresh_token(
    mesh: RunningMesh, rest: httpx.Client
) -> None:
    body = _sign_in(rest)

    header = jwt.get_unverified_header(body["accessToken"])
    assert header["alg"] == "ES256"
    published = rest.get("/.well-known/jwks.json")
    assert published.status_code == 200, published.text
    keys = {key["kid"]: key for key in published.json()["keys"]}
    assert header["kid"] in keys
    claims = jwt.decode(
        body["accessToken"],
        jwt.PyJWK.from_dict(keys[header["kid"]]).key,
        algorithms=["ES256"],
        audience="pingvas-api",
        issuer="pingvas",
    )
    assert claims["exp"] - claims["iat"] == int(body["expiresIn"]) == 15 * 60
    assert body["refreshToken"] and int(body["refreshExpiresIn"]) > 0
    # Stored as a hash only.
    assert (
        mesh.sql(
            "SELECT count(*) AS n FROM refresh_tokens WHERE token_hash = sha256(%s::bytea)",
            body["refreshToken"].encode(),
        )[0]["n"]
        == 1
    )
    assert str(body["refreshToken"]) not in json.dumps(mesh.sql("SELECT * FROM refresh_tokens"), default=str)


def test_the_jwks_never_holds_private_key_material(mesh: RunningMesh, rest: httpx.Client) -> None:
    _sign_in(rest)

    published = rest.get("/.well-known/jwks.json").json()

    assert published["keys"]
    for key in published["keys"]:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert "d" not in key and key["kty"] == "EC" and key["alg"] == "ES256"
    for row in mesh.sql("SELECT private_key_pem FROM signing_keys"):
        # Encrypted at rest with the deployment's secret.
        assert row["private_key_pem"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "PRIVATE KEY" not in mesh.log("user")


def test_the_tenant_role_reads_the_public_keys_but_never_the_private_ones(mesh: RunningMesh) -> None:
    with psycopg2.connect(mesh.app_database_url) as conn, conn.cursor() as cursor:
        cursor.execute(f"SET search_path TO {mesh.schema}")
        cursor.execute("SELECT kid, public_jwk FROM signing_keys")
        assert cursor.fetchall()
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("SELECT private_key_pem FROM signing_keys")
    conn.close()


def test_a_refresh_rotates_the_refresh_token_and_returns_a_working_access_token(
    rest: httpx.Client,
) -> None:
    first = _sign_in(rest)

    reply = _refresh(rest, first["refreshToken"])

    assert reply.status_code == 200, reply.text
    second = reply.json()
    assert second["refreshToken"] != first["refreshToken"]
    assert _me(rest, second["accessToken"]).json()["id"] == first["user"]["id"]
    third = _refresh(rest, second["refreshToken"])
    assert third.status_code == 200, third.text
    assert third.json()["refreshToken"] not in (first["refreshToken"], second["refreshToken"])


def test_reusing_a_spent_refresh_token_revokes_its_whole_family(
    mesh: RunningMesh, rest: httpx.Client
) -> None:
    first = _sign_in(rest)
    second = _refresh(rest, first["refreshToken"]).json()
    # The spend happened longer ago than the reuse interval (10 s): said in the truth rather
    # than waited for.
    mesh.sql(
        "UPDATE refresh_tokens SET rotated_at = rotated_at - interval '1 minute' "
        "WHERE token_hash = sha256(%s::bytea)",
        first["refreshToken"].encode(),
    )

    reused = _refresh(rest, first["refreshToken"])

    assert reused.status_code == 401, reused.text
    assert reused.json()["message"] == "invalid or expired refresh token"
    # The thief's (or the user's) newer token is dead too: the family is revoked.
    assert _refresh(rest, second["refreshToken"]).status_code == 401
    family = mesh.sql("SELECT revoked_at FROM refresh_tokens WHERE user_id = %s::uuid", first["user"]["id"])
    assert len(family) == 2 and all(row["revoked_at"] is not None for row in family)
    # Another sign-in of the same user is another family, untouched.
    assert _refresh(rest, _sign_in(rest)["refreshToken"]).status_code == 200


def test_two_refreshes_at_once_both_get_the_same_new_refresh_token(rest: httpx.Client) -> None:
    first = _sign_in(rest)

    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: _refresh(rest, first["refreshToken"]), range(4)))

    assert [reply.status_code for reply in replies] == [200] * 4, [reply.text for reply in replies]
    assert len({reply.json()["refreshToken"] for reply in replies}) == 1
    for reply in replies:
        assert _me(rest, reply.json()["accessToken"]).status_code == 200
    # Within the interval a tab that refreshes late is answered the same, and nothing was revoked.
    late = _refresh(rest, first["refreshToken"])
    assert late.status_code == 200 and late.json()["refreshToken"] == replies[0].json()["refreshToken"]
    assert _refresh(rest, late.json()["refreshToken"]).status_code == 200


def test_logout_revokes_the_session(mesh: RunningMesh, rest: httpx.Client) -> None:
    first = _sign_in(rest)
    second = _refresh(rest, first["refreshToken"]).json()

    reply = rest.post("/api/v1/auth/logout", json={"refreshToken": second["refreshToken"]})

    assert reply.status_code == 200, reply.text
    assert _refresh(rest, second["refreshToken"]).status_code == 401
    assert all(
        row["revoked_at"] is not None
        for row in mesh.sql(
            "SELECT revoked_at FROM refresh_tokens WHERE user_id = %s::uuid", first["user"]["id"]
        )
    )
    assert rest.post("/api/v1/auth/logout", json={"refreshToken": "not-a-token"}).status_code == 401


def test_a_refresh_without_a_token_is_invalid_argument(rest: httpx.Client) -> None:
    reply = _refresh(rest, "")

    assert reply.status_code == 400, reply.text
    violations = [d for d in reply.json()["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == "refresh_token"


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_access_token_is_refused_at_the_edge_and_by_the_service(
    mesh: RunningMesh, rest: httpx.Client, gateway_channel: grpc.Channel, kind: str
) -> None:
    user_id = _sign_in(rest)["user"]["id"]
    token = BAD_TOKENS[kind](mesh, user_id)
    metadata = (("authorization", f"Bearer {token}"),)
    request = pb.GetUserRequest(name="users/me")

    reply = _me(rest, token)
    assert reply.status_code == 401
    assert reply.text == GENERIC

    with pytest.raises(grpc.RpcError) as through_gateway:
        pb_grpc.UserServiceStub(gateway_channel).GetUser(request, metadata=metadata, timeout=30)
    assert through_gateway.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert through_gateway.value.details() == GENERIC

    with (
        grpc.insecure_channel(f"127.0.0.1:{_service_port(mesh, 'user')}") as direct,
        pytest.raises(grpc.RpcError) as at_the_service,
    ):
        pb_grpc.UserServiceStub(direct).GetUser(request, metadata=metadata, timeout=30)
    assert at_the_service.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert at_the_service.value.details() == GENERIC


def test_a_valid_token_crafted_with_the_real_key_is_accepted(mesh: RunningMesh, rest: httpx.Client) -> None:
    """The control for the refusals above: the same crafting, valid claims, passes everywhere."""
    user_id = _sign_in(rest)["user"]["id"]
    kid, key = signing_key(mesh)

    token = jwt.encode(claims(user_id), key, algorithm="ES256", headers={"kid": kid})

    assert _me(rest, token).json()["id"] == user_id


def test_an_api_key_passes_the_edge_and_the_service_answers_for_it(
    rest: httpx.Client, gateway_channel: grpc.Channel
) -> None:
    reply = _me(rest, "pv_not_a_key_yet")

    # The service's answer (a google.rpc.Status as JSON), not the edge's plain text.
    assert reply.status_code == 401
    assert reply.json()["message"] == GENERIC
    assert reply.json()["details"][0]["domain"] == "user.pingvas.studio"
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.UserServiceStub(gateway_channel).GetUser(
            pb.GetUserRequest(name="users/me"), metadata=(("authorization", "Bearer pv_x"),), timeout=30
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.trailing_metadata() and any(
        item.key == "grpc-status-details-bin" for item in refused.value.trailing_metadata()
    )


def test_every_service_and_protocol_is_guarded_at_the_edge(mesh: RunningMesh, rest: httpx.Client) -> None:
    """Not only the user service, and gRPC-Web too: the edge refuses before any backend runs."""
    token = signed_by_a_stranger(_sign_in(rest)["user"]["id"])
    headers = {"authorization": f"Bearer {token}"}

    for path in ("/api/v1/generation", "/api/v1/credits/balance"):
        reply = rest.get(path, headers=headers)
        assert (reply.status_code, reply.text) == (401, GENERIC), path

    grpc_web = rest.post(
        "/pingvas.generation.v1.GenerationService/ListGenerations",
        content=b"\x00\x00\x00\x00\x00",  # one uncompressed frame holding an empty message
        headers={**headers, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert grpc_web.headers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert grpc_web.headers["grpc-message"] == GENERIC
