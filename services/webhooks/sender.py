"""One delivery attempt: the payload signed as the Standard Webhooks specification says, POSTed
through the SSRF guard, redirects not followed. Only a 2xx answer counts as delivered."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from services.webhooks.guard import DestinationGuard, DestinationRefused, PinnedTransport

log = logging.getLogger(__name__)

USER_AGENT = "Pingvas-Webhooks/1"


@dataclass(frozen=True)
class AttemptOutcome:
    delivered: bool
    status: int | None  # the receiver's answer; None when there was none
    error: str  # why it did not count; "" when delivered


def signed_headers(secret: str, webhook_id: str, body: str, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with `secret` at `at`."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


class WebhookSender:
    def __init__(self, guard: DestinationGuard, *, timeout_seconds: float) -> None:
        self.guard = guard
        self.timeout_seconds = timeout_seconds

    async def send(
        self, url: str, *, webhook_id: str, payload: dict[str, Any], secret: str
    ) -> AttemptOutcome:
        try:
            destination = await self.guard.check(url)
        except DestinationRefused as refusal:
            return AttemptOutcome(delivered=False, status=None, error=f"refused: {refusal}")
        body = json.dumps(payload, separators=(",", ":"))
        headers = {
            **signed_headers(secret, webhook_id, body, datetime.now(UTC)),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        try:
            async with httpx.AsyncClient(
                transport=PinnedTransport(destination),
                timeout=self.timeout_seconds,
                follow_redirects=False,
                trust_env=False,
            ) as client:
                reply = await client.post(destination.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as error:
            return AttemptOutcome(delivered=False, status=None, error=f"{type(error).__name__}: {error}")
        if 200 <= reply.status_code < 300:
            return AttemptOutcome(delivered=True, status=reply.status_code, error="")
        if reply.is_redirect:
            return AttemptOutcome(
                delivered=False, status=reply.status_code, error="redirects are not followed"
            )
        return AttemptOutcome(delivered=False, status=reply.status_code, error=f"HTTP {reply.status_code}")
