"""The limits mesh's low limits and how its tests sign up (tests/limits/)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx

from support.accounts import Account

# Starter users get a rate a test reaches at once, in a window short enough to wait out.
STARTER_RATE = (4, 2)  # requests, per seconds
SIGN_IN_PER_IP = 3  # per minute
FREE_LIVE_GENERATIONS = 2  # queued or running, per user
UNARY_TIMEOUT_SECONDS = 5  # the gateway's deadline for a unary call

_addresses = itertools.count(1)


def client_ip() -> str:
    """An address no other caller used (TEST-NET-2), so a sign-up draws on a fresh per-IP
    allowance."""
    n = next(_addresses)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def sign_up(mesh: Any, prefix: str, *, plan: str = "free") -> Account:
    """A fresh user signed up from an address of its own, on `plan` before its first call."""
    email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
    reply = httpx.post(
        f"{mesh.gateway_url}/api/v1/auth/dev-login",
        json={"email": email},
        headers={"x-forwarded-for": client_ip()},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    if plan != "free":
        assert mesh.pingvas("admin", "set-plan", email, plan).returncode == 0
    return Account(email=email, token=body["accessToken"], user_id=body["user"]["id"])
