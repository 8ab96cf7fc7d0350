"""Access tokens crafted by tests, signed with the mesh's real signing key or a stranger's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.mesh import RunningMesh


def signing_key(mesh: RunningMesh) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The key the user service signs with now, decrypted with the deployment's secret as the
    service does it."""
    secret = json.loads((mesh.home / "secrets.json").read_text())["PINGVAS_JWT_SECRET"]
    row = mesh.sql(
        "SELECT kid, private_key_pem FROM signing_keys WHERE retired_at IS NULL "
        "AND not_before_signing <= now() ORDER BY not_before_signing DESC LIMIT 1"
    )[0]
    key = serialization.load_pem_private_key(row["private_key_pem"].encode(), password=secret.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return str(row["kid"]), key


def claims(user_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "pingvas",
        "aud": "pingvas-api",
        "sub": user_id,
        "email": "x@example.com",
        "iat": now,
        "exp": now + 600,
        **overrides,
    }


def signed_with_the_real_key(mesh: RunningMesh, user_id: str, **overrides: Any) -> str:
    kid, key = signing_key(mesh)
    return jwt.encode(claims(user_id, **overrides), key, algorithm="ES256", headers={"kid": kid})


def signed_by_a_stranger(user_id: str) -> str:
    """Valid claims, signed with a key the mesh never published, under a kid it does not know."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims(user_id), stranger, algorithm="ES256", headers={"kid": uuid.uuid4().hex})
