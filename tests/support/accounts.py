"""Users signed up through the gateway's dev login, as a browser would."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx


@dataclass
class Account:
    email: str
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


def dev_login(gateway_url: str, prefix: str = "user") -> Account:
    """A fresh user (its own tenant) with a unique email starting with `prefix`."""
    email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
    reply = httpx.post(f"{gateway_url}/api/v1/auth/dev-login", json={"email": email}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    return Account(email=email, token=body["accessToken"], user_id=body["user"]["id"])
