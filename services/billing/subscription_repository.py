"""The SQL of subscriptions and webhook deliveries, and the one place that sets a user's plan.

Every method takes the caller's open transaction; the domain (`subscriptions.py`, `webhooks.py`)
decides, this module only reads and writes. State changes are conditional updates, fenced by the
state they leave, so a late or repeated caller changes nothing.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import NotFound
from services.common.schema import subscriptions, users, webhook_deliveries


class SubscriptionStatus(enum.StrEnum):
    """The states Pingvas acts on (`subscriptions.status`)."""

    ACTIVE = "active"
    PAYMENT_FAILED = "payment_failed"
    CANCELLED = "cancelled"  # still paid for until ends_at
    EXPIRED = "expired"


LIVE_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAYMENT_FAILED, SubscriptionStatus.CANCELLED)


class UpgradeState(enum.StrEnum):
    """Where an upgrade stands (`subscriptions.upgrade_state`); NULL when none is under way."""

    REQUESTED = "requested"  # recorded; the PATCH to Lemon Squeezy may or may not have landed
    AWAITING_PAYMENT = "awaiting_payment"  # Lemon Squeezy changed the variant and invoiced it
    REVERTING = "reverting"  # the invoice failed; the PATCH back may or may not have landed


class DeliveryOutcome(enum.StrEnum):
    """What one webhook delivery did. The first four are also stored in `webhook_deliveries`."""

    PROCESSED = "processed"
    PARKED = "parked"  # a payment that overtook its subscription; replayed when it is known
    IGNORED = "ignored"
    QUARANTINED = "quarantined"  # the payer is not provably our user; waits for an operator
    DUPLICATE = "duplicate"  # applied before: nothing to do
    STALE = "stale"  # older than what we applied

    @property
    def stored(self) -> DeliveryOutcome:
        """The status a delivery row records for this outcome."""
        return DeliveryOutcome.IGNORED if self is DeliveryOutcome.STALE else self


@dataclass(frozen=True)
class SubscriptionRecord:
    user_id: uuid.UUID
    provider_subscription_id: str
    plan: str
    variant_id: str
    status: SubscriptionStatus
    renews_at: datetime | None
    ends_at: datetime | None
    grace_period_end: datetime | None
    pending_plan: str | None
    started_at: datetime
    pending_upgrade: str | None
    upgrade_state: UpgradeState | None
    previous_variant_id: str | None
    upgrade_requested_at: datetime | None
    provider_updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> SubscriptionRecord:
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        values["status"] = SubscriptionStatus(values["status"])
        if values["upgrade_state"] is not None:
            values["upgrade_state"] = UpgradeState(values["upgrade_state"])
        return cls(**values)

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES


@dataclass(frozen=True)
class StoredDelivery:
    id: int
    event_name: str
    resource_id: str
    subscription_id: str | None
    status: DeliveryOutcome
    reason: str | None
    payload: dict[str, Any]
    received_at: datetime


def _delivery(row: Any) -> StoredDelivery:
    return StoredDelivery(
        row.id,
        row.event_name,
        row.resource_id,
        row.subscription_id,
        DeliveryOutcome(row.status),
        row.reason,
        row.payload,
        row.received_at,
    )


class SubscriptionRepository:
    # --- users ------------------------------------------------------------------------------

    async def email_of(self, conn: AsyncConnection, user_id: uuid.UUID) -> str:
        found = (
            await conn.execute(sa.select(users.c.email).where(users.c.id == user_id))
        ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"user {user_id} not found")
        return str(found)

    async def user_by_email(self, conn: AsyncConnection, address: str) -> uuid.UUID | None:
        normalized = address.strip().lower()
        if not normalized:
            return None
        found = (
            await conn.execute(sa.select(users.c.id).where(sa.func.lower(users.c.email) == normalized))
        ).scalar_one_or_none()
        return None if found is None else uuid.UUID(str(found))

    async def user_exists(self, conn: AsyncConnection, user_id: uuid.UUID) -> bool:
        found = await conn.execute(sa.select(users.c.id).where(users.c.id == user_id))
        return found.first() is not None

    async def set_user_plan(self, conn: AsyncConnection, user_id: uuid.UUID, plan: str) -> None:
        """The one place billing sets a user's plan, and so the band their jobs queue in."""
        await conn.execute(
            sa.update(users).where(users.c.id == user_id, users.c.plan != plan).values(plan=plan)
        )

    # --- subscriptions ----------------------------------------------------------------------

    async def get(
        self, conn: AsyncConnection, subscription_id: str, *, lock: bool = False
    ) -> SubscriptionRecord | None:
        query = sa.select(subscriptions).where(subscriptions.c.provider_subscription_id == subscription_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else SubscriptionRecord.from_row(row)

    async def user_of(self, conn: AsyncConnection, subscription_id: str) -> uuid.UUID | None:
        found = (
            await conn.execute(
                sa.select(subscriptions.c.user_id).where(
                    subscriptions.c.provider_subscription_id == subscription_id
                )
            )
        ).scalar_one_or_none()
        return None if found is None else uuid.UUID(str(found))

    async def deciding(self, conn: AsyncConnection, user_id: uuid.UUID) -> SubscriptionRecord | None:
        """The subscription that decides the user's plan: of the live ones, the latest started."""
        row = (
            await conn.execute(
                sa.select(subscriptions)
                .where(
                    subscriptions.c.user_id == user_id,
                    subscriptions.c.status.in_([str(s) for s in LIVE_STATUSES]),
                )
                .order_by(subscriptions.c.started_at.desc(), subscriptions.c.created_at.desc())
                .limit(1)
            )
        ).one_or_none()
        return None if row is None else SubscriptionRecord.from_row(row)

    async def latest(self, conn: AsyncConnection, user_id: uuid.UUID) -> SubscriptionRecord | None:
        """The deciding subscription, else the one that ended last (to show it expired)."""
        deciding = await self.deciding(conn, user_id)
        if deciding is not None:
            return deciding
        row = (
            await conn.execute(
                sa.select(subscriptions)
                .where(subscriptions.c.user_id == user_id)
                .order_by(subscriptions.c.started_at.desc())
                .limit(1)
            )
        ).one_or_none()
        return None if row is None else SubscriptionRecord.from_row(row)

    async def save(
        self, conn: AsyncConnection, user_id: uuid.UUID, subscription_id: str, values: dict[str, Any]
    ) -> None:
        """Insert the subscription or update it from Lemon Squeezy's resource; its user never
        changes."""
        values = {**values, "updated_at": sa.func.now()}
        await conn.execute(
            insert(subscriptions)
            .values(user_id=user_id, provider_subscription_id=subscription_id, **values)
            .on_conflict_do_update(index_elements=["provider_subscription_id"], set_=values)
        )

    async def update(self, conn: AsyncConnection, subscription_id: str, **values: Any) -> None:
        await conn.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.provider_subscription_id == subscription_id)
            .values(updated_at=sa.func.now(), **values)
        )

    async def expire_lapsed(self, conn: AsyncConnection, now: datetime) -> list[SubscriptionRecord]:
        """Move subscriptions past their grace period, or cancelled ones past their end, to
        expired; returns them."""
        rows = (
            await conn.execute(
                sa.update(subscriptions)
                .where(
                    sa.or_(
                        sa.and_(
                            subscriptions.c.status == SubscriptionStatus.PAYMENT_FAILED,
                            subscriptions.c.grace_period_end < now,
                        ),
                        sa.and_(
                            subscriptions.c.status == SubscriptionStatus.CANCELLED,
                            subscriptions.c.ends_at < now,
                        ),
                    )
                )
                .values(status=SubscriptionStatus.EXPIRED, updated_at=sa.func.now())
                .returning(*subscriptions.c)
            )
        ).all()
        return [SubscriptionRecord.from_row(row) for row in rows]

    # --- upgrades ---------------------------------------------------------------------------

    async def record_upgrade(
        self, conn: AsyncConnection, current: SubscriptionRecord, plan: str, now: datetime
    ) -> bool:
        """Record the intent to upgrade before Lemon Squeezy is asked. False if another change is
        under way (a repeat of the same upgrade is allowed: its PATCH is idempotent)."""
        result = await conn.execute(
            sa.update(subscriptions)
            .where(
                subscriptions.c.provider_subscription_id == current.provider_subscription_id,
                sa.or_(
                    subscriptions.c.upgrade_state.is_(None),
                    sa.and_(
                        subscriptions.c.pending_upgrade == plan,
                        subscriptions.c.upgrade_state != UpgradeState.REVERTING,
                    ),
                ),
            )
            .values(
                pending_upgrade=plan,
                upgrade_state=sa.func.coalesce(subscriptions.c.upgrade_state, str(UpgradeState.REQUESTED)),
                previous_variant_id=sa.func.coalesce(subscriptions.c.previous_variant_id, current.variant_id),
                upgrade_requested_at=sa.func.coalesce(subscriptions.c.upgrade_requested_at, now),
                updated_at=sa.func.now(),
            )
            .returning(subscriptions.c.provider_subscription_id)
        )
        return result.first() is not None

    async def move_upgrade(
        self,
        conn: AsyncConnection,
        subscription_id: str,
        *,
        plan: str,
        from_state: UpgradeState,
        to_state: UpgradeState | None,
        **values: Any,
    ) -> bool:
        """Move an upgrade of `plan` from one state to the next (None: it is over); False if it
        was not in `from_state`, because someone else moved it first."""
        ended: dict[str, Any] = (
            {"pending_upgrade": None, "previous_variant_id": None, "upgrade_requested_at": None}
            if to_state is None
            else {}
        )
        result = await conn.execute(
            sa.update(subscriptions)
            .where(
                subscriptions.c.provider_subscription_id == subscription_id,
                subscriptions.c.pending_upgrade == plan,
                subscriptions.c.upgrade_state == from_state,
            )
            .values(upgrade_state=to_state, updated_at=sa.func.now(), **ended, **values)
            .returning(subscriptions.c.provider_subscription_id)
        )
        return result.first() is not None

    async def unsettled_upgrades(self, conn: AsyncConnection, before: datetime) -> list[SubscriptionRecord]:
        """Upgrades left requested or reverting since `before`: a process died between its call
        to Lemon Squeezy and the commit that records the answer."""
        rows = (
            await conn.execute(
                sa.select(subscriptions).where(
                    subscriptions.c.upgrade_state.in_([UpgradeState.REQUESTED, UpgradeState.REVERTING]),
                    subscriptions.c.updated_at < before,
                )
            )
        ).all()
        return [SubscriptionRecord.from_row(row) for row in rows]

    # --- webhook deliveries -----------------------------------------------------------------

    async def record_delivery(
        self,
        conn: AsyncConnection,
        *,
        dedupe_key: str,
        event_name: str,
        resource_id: str,
        subscription_id: str | None,
        payload: dict[str, Any],
    ) -> int | None:
        """Record a delivery as processed; None if it was recorded before. Concurrent deliveries
        of one change serialize on the unique key: the second waits for the first to commit,
        then finds the row."""
        recorded = (
            await conn.execute(
                insert(webhook_deliveries)
                .values(
                    dedupe_key=dedupe_key,
                    event_name=event_name,
                    resource_id=resource_id,
                    subscription_id=subscription_id,
                    status=DeliveryOutcome.PROCESSED,
                    payload=payload,
                    processed_at=sa.func.now(),
                )
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(webhook_deliveries.c.id)
            )
        ).scalar_one_or_none()
        return None if recorded is None else int(recorded)

    async def set_delivery_status(
        self, conn: AsyncConnection, delivery_id: int, outcome: DeliveryOutcome, reason: str | None = None
    ) -> None:
        values: dict[str, Any] = {"status": outcome.stored, "processed_at": sa.func.now()}
        if reason is not None:
            values["reason"] = reason
        await conn.execute(
            sa.update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(**values)
        )

    async def parked(self, conn: AsyncConnection, subscription_id: str) -> list[StoredDelivery]:
        rows = (
            await conn.execute(
                sa.select(webhook_deliveries)
                .where(
                    webhook_deliveries.c.subscription_id == subscription_id,
                    webhook_deliveries.c.status == DeliveryOutcome.PARKED,
                )
                .order_by(webhook_deliveries.c.id)
                .with_for_update()
            )
        ).all()
        return [_delivery(row) for row in rows]

    async def quarantined(self, conn: AsyncConnection) -> list[StoredDelivery]:
        rows = (
            await conn.execute(
                sa.select(webhook_deliveries)
                .where(webhook_deliveries.c.status == DeliveryOutcome.QUARANTINED)
                .order_by(webhook_deliveries.c.id)
            )
        ).all()
        return [_delivery(row) for row in rows]

    async def lock_delivery(self, conn: AsyncConnection, delivery_id: int) -> StoredDelivery | None:
        row = (
            await conn.execute(
                sa.select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).with_for_update()
            )
        ).one_or_none()
        return None if row is None else _delivery(row)
