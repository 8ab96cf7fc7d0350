"""The SQL of partner webhook deliveries (migration 0013): the outbox rows, and the API key
settings they come from.

A delivery row is inserted in the tenant transaction of the change it reports, at most once per
(generation, event): a redone change inserts nothing. The deliverer claims due rows as the
system role with `FOR UPDATE SKIP LOCKED` and, in the same short transaction, pushes their next
attempt past the claim's hold and counts the attempt, then commits before it sends: no lock is
held across a network call, and a deliverer that dies mid-send leaves a row that falls due again
when the hold ends, to be sent again under the same id (at least once).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.schema import api_keys, images, webhook_outbox
from services.common.storage import ImageKeys
from services.webhooks.endpoints import WebhookEvent


class DeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx answered one attempt
    FAILED = "failed"  # no 2xx within the retry window; given up


@dataclass(frozen=True)
class KeyWebhook:
    """An API key's webhook settings, as the generation service reads them at acceptance."""

    default_url: str | None
    can_sign: bool  # keys made before webhooks have no signing secret


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    user_id: uuid.UUID
    event: WebhookEvent
    url: str
    payload: dict[str, Any]
    generation_id: uuid.UUID
    sealed_signing_secret: str  # services.webhooks.sealing
    attempts: int  # including the one this claim makes
    created_at: datetime
    # The generation's stored image, once it succeeded: each attempt signs fresh URLs of it.
    image_keys: ImageKeys | None

    @property
    def webhook_id(self) -> str:
        """The `webhook-id` header: the same on every attempt, for receivers to deduplicate."""
        return f"msg_{self.id.hex}"


class WebhookOutbox:
    async def clock(self, conn: AsyncConnection) -> datetime:
        """The database's time, the clock every row's times are on."""
        now: datetime = (await conn.execute(sa.select(sa.func.now()))).scalar_one()
        return now

    async def key_webhook(self, conn: AsyncConnection, key_id: uuid.UUID) -> KeyWebhook | None:
        """The key's webhook settings, in the key owner's tenant transaction."""
        row = (
            await conn.execute(
                sa.select(api_keys.c.default_webhook_url, api_keys.c.webhook_signing_secret).where(
                    api_keys.c.id == key_id
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return KeyWebhook(
            default_url=row.default_webhook_url, can_sign=row.webhook_signing_secret is not None
        )

    async def enqueue(
        self,
        conn: AsyncConnection,
        *,
        user_id: uuid.UUID,
        generation_id: uuid.UUID,
        api_key_id: uuid.UUID,
        event: WebhookEvent,
        url: str,
        payload: dict[str, Any],
    ) -> bool:
        """Insert the delivery in the caller's transaction; False if this event was recorded."""
        inserted = await conn.execute(
            insert(webhook_outbox)
            .values(
                id=uuid.uuid4(),
                user_id=user_id,
                generation_id=generation_id,
                api_key_id=api_key_id,
                event=str(event),
                url=url,
                payload=payload,
            )
            .on_conflict_do_nothing(index_elements=[webhook_outbox.c.generation_id, webhook_outbox.c.event])
            .returning(webhook_outbox.c.id)
        )
        return inserted.first() is not None

    async def claim_due(self, conn: AsyncConnection, *, limit: int, hold: timedelta) -> list[ClaimedDelivery]:
        """Claim up to `limit` due deliveries (system role): each counts an attempt and is not due
        again until `hold` has passed, by when its sender has recorded the outcome or died."""
        due = (
            sa.select(webhook_outbox.c.id)
            .where(
                webhook_outbox.c.state == DeliveryState.PENDING,
                webhook_outbox.c.next_attempt_at <= sa.func.now(),
            )
            .order_by(webhook_outbox.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        claimed = (
            sa.update(webhook_outbox)
            .where(webhook_outbox.c.id.in_(sa.select(due.c.id)))
            .values(attempts=webhook_outbox.c.attempts + 1, next_attempt_at=sa.func.now() + hold)
            .returning(webhook_outbox)
            .cte("claimed")
        )
        rows = await conn.execute(
            sa.select(claimed, api_keys.c.webhook_signing_secret, images.c.object_key, images.c.thumbnail_key)
            .join(api_keys, api_keys.c.id == claimed.c.api_key_id)
            .outerjoin(images, images.c.id == claimed.c.generation_id)
        )
        return [
            ClaimedDelivery(
                id=row.id,
                user_id=row.user_id,
                event=WebhookEvent(row.event),
                url=row.url,
                payload=row.payload,
                generation_id=row.generation_id,
                sealed_signing_secret=row.webhook_signing_secret,
                attempts=row.attempts,
                created_at=row.created_at,
                image_keys=ImageKeys(row.object_key, row.thumbnail_key) if row.object_key else None,
            )
            for row in rows
        ]

    async def record_delivered(self, conn: AsyncConnection, delivery: ClaimedDelivery, status: int) -> bool:
        """Mark it delivered; False if it already was (a lapsed claim's other attempt got there)."""
        done = await conn.execute(
            sa.update(webhook_outbox)
            .where(webhook_outbox.c.id == delivery.id, webhook_outbox.c.state == DeliveryState.PENDING)
            .values(
                state=DeliveryState.DELIVERED, last_status=status, last_error=None, finished_at=sa.func.now()
            )
            .returning(webhook_outbox.c.id)
        )
        return done.first() is not None

    async def record_failure(
        self,
        conn: AsyncConnection,
        delivery: ClaimedDelivery,
        *,
        status: int | None,
        error: str,
        retry_at: datetime | None,
    ) -> bool:
        """Record a failed attempt: due again at `retry_at`, or given up when it is None. Fenced
        on the attempt: a claim that lapsed and was taken again writes nothing."""
        values: dict[str, Any] = {"last_status": status, "last_error": error[:1000]}
        if retry_at is None:
            values |= {"state": DeliveryState.FAILED, "finished_at": sa.func.now()}
        else:
            values["next_attempt_at"] = retry_at
        done = await conn.execute(
            sa.update(webhook_outbox)
            .where(
                webhook_outbox.c.id == delivery.id,
                webhook_outbox.c.state == DeliveryState.PENDING,
                webhook_outbox.c.attempts == delivery.attempts,
            )
            .values(**values)
            .returning(webhook_outbox.c.id)
        )
        return done.first() is not None
