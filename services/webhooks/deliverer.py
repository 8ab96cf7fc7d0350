"""The deliverer's loop: claim due deliveries, send each, record the outcome, and retry a failure
with exponential backoff until its 24 hours are over.

Claims and records are short system-role transactions; the sends run between them, outside any
transaction (services.webhooks.outbox). Several deliverers may run: SKIP LOCKED gives each row
to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography.fernet import InvalidToken
from opentelemetry import metrics

from services.common.database import Database
from services.common.storage import ImageKeys, ImageUrls
from services.webhooks.endpoints import WebhookEvent
from services.webhooks.outbox import ClaimedDelivery, WebhookOutbox
from services.webhooks.sealing import SecretSealer
from services.webhooks.sender import AttemptOutcome, WebhookSender

log = logging.getLogger(__name__)
# Attempts by outcome: delivered, retrying (failed, another attempt is scheduled) or given_up
# (failed, and the delivery's window is over), and by event type.
delivery_attempts = metrics.get_meter(__name__).create_counter(
    "pingvas.webhook.deliveries",
    unit="{attempt}",
    description="Webhook delivery attempts, by outcome and event.",
)


class ImageUrlSigner(Protocol):
    async def image_urls(self, keys: ImageKeys) -> ImageUrls: ...


@dataclass(frozen=True)
class RetrySchedule:
    """The delay after each failed attempt (the last repeats), within a window from the
    delivery's creation; the window's end gets one last attempt, and after it the delivery is
    given up."""

    delays: Sequence[timedelta]
    window: timedelta

    def next_attempt(self, *, created_at: datetime, failed_attempts: int, now: datetime) -> datetime | None:
        deadline = created_at + self.window
        if now >= deadline:
            return None
        delay = self.delays[min(failed_attempts, len(self.delays)) - 1]
        return min(now + delay, deadline)


class WebhookDeliverer:
    def __init__(
        self,
        *,
        database: Database,
        outbox: WebhookOutbox,
        sender: WebhookSender,
        sealer: SecretSealer,
        images: ImageUrlSigner,
        schedule: RetrySchedule,
        claim_hold: timedelta,
        batch_size: int,
    ) -> None:
        self.database = database
        self.outbox = outbox
        self.sender = sender
        self.sealer = sealer
        self.images = images
        self.schedule = schedule
        self.claim_hold = claim_hold
        self.batch_size = batch_size

    async def deliver_due(self) -> int:
        """Send every due delivery of one claim, concurrently; returns how many were claimed."""
        async with self.database.system("claim webhook deliveries") as conn:
            claimed = await self.outbox.claim_due(conn, limit=self.batch_size, hold=self.claim_hold)
        results = await asyncio.gather(
            *(self._deliver(delivery) for delivery in claimed), return_exceptions=True
        )
        for delivery, result in zip(claimed, results, strict=True):
            if isinstance(result, Exception):
                # Unrecorded: the claim lapses and the delivery is sent again, under its id.
                log.error("delivering %s failed", delivery.webhook_id, exc_info=result)
        return len(claimed)

    async def run(self, stop: asyncio.Event, poll_seconds: float) -> None:
        """Deliver until `stop`: at once again after a full batch, else every `poll_seconds`."""
        while not stop.is_set():
            claimed = 0
            try:
                claimed = await self.deliver_due()
            except Exception:
                log.exception("webhook delivery failed; retrying in %.1fs", poll_seconds)
            if claimed >= self.batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)

    async def _payload(self, delivery: ClaimedDelivery) -> dict[str, Any]:
        """The stored payload; a completed success also gets its image's URLs, signed now (they
        expire, so each attempt carries fresh ones), as GetGeneration would show them."""
        if delivery.event != WebhookEvent.COMPLETED or delivery.image_keys is None:
            return delivery.payload
        urls = await self.images.image_urls(delivery.image_keys)
        data = {
            **delivery.payload["data"],
            "imageUrl": urls.image,
            "thumbnailUrl": urls.thumbnail,
            "image": f"users/{delivery.user_id}/images/{delivery.generation_id}",
        }
        return {**delivery.payload, "data": data}

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        try:
            secret = self.sealer.unseal(delivery.sealed_signing_secret)
        except InvalidToken:
            outcome = AttemptOutcome(
                delivered=False,
                status=None,
                error="the key's signing secret does not unseal: PINGVAS_JWT_SECRET changed",
            )
        else:
            outcome = await self.sender.send(
                delivery.url,
                webhook_id=delivery.webhook_id,
                payload=await self._payload(delivery),
                secret=secret,
            )
        async with self.database.system("record a webhook delivery") as conn:
            if outcome.delivered:
                await self.outbox.record_delivered(conn, delivery, outcome.status or 0)
                delivery_attempts.add(1, {"outcome": "delivered", "event": delivery.event.type})
                log.info(
                    "delivered %s (%s) on attempt %d",
                    delivery.webhook_id,
                    delivery.event.type,
                    delivery.attempts,
                )
                return
            now = await self.outbox.clock(conn)
            retry_at = self.schedule.next_attempt(
                created_at=delivery.created_at, failed_attempts=delivery.attempts, now=now
            )
            await self.outbox.record_failure(
                conn, delivery, status=outcome.status, error=outcome.error, retry_at=retry_at
            )
        delivery_attempts.add(
            1, {"outcome": "retrying" if retry_at else "given_up", "event": delivery.event.type}
        )
        if retry_at is None:
            log.error(
                "giving up on %s (%s) after %d attempts: %s",
                delivery.webhook_id,
                delivery.event.type,
                delivery.attempts,
                outcome.error,
            )
        else:
            log.warning(
                "%s (%s) attempt %d failed (%s); retrying at %s",
                delivery.webhook_id,
                delivery.event.type,
                delivery.attempts,
                outcome.error,
                retry_at.isoformat(),
            )
