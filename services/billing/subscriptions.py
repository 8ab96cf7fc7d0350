"""Subscriptions: the seed's payment sequence (checkout, webhooks, grace and expiry, upgrades).

Lemon Squeezy is the merchant of record and tells us what happened through signed webhooks.
Each delivery is applied at most once (a dedupe key per event, resource and resource version),
in one transaction with its effects: the subscription row, the user's plan, ledger entries and
queued emails. Deliveries that arrive out of order are judged by the resource's `updated_at`, so
a stale update never resurrects an expired subscription; payments that arrive before their
subscription is known are parked and applied when it is. `reconcile` pulls what webhooks missed
from the API, and grants exactly once because ledger entries are keyed by the same references.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing import email
from services.billing.email import EmailOutbox
from services.billing.ledger import CreditLedger
from services.billing.lemonsqueezy import (
    LemonSqueezyClient,
    LemonSqueezyError,
    WebhookEvent,
    verify_signature,
)
from services.billing.plans import PlanCatalog, PlanOffer, rank
from services.common.database import Database
from services.common.errors import FailedPrecondition, FieldViolation, InvalidInput, NotFound, Unavailable
from services.common.schema import subscriptions, users, webhook_deliveries

log = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "subscription_created",
        "subscription_updated",
        "subscription_cancelled",
        "subscription_resumed",
        "subscription_expired",
        "subscription_paused",
        "subscription_unpaused",
    }
)
PAYMENT_EVENTS = frozenset(
    {"subscription_payment_success", "subscription_payment_failed", "subscription_payment_recovered"}
)

# Lemon Squeezy's subscription statuses, as the states Pingvas acts on.
_STATUS = {
    "active": "active",
    "on_trial": "active",
    "paused": "active",
    "past_due": "payment_failed",
    "unpaid": "payment_failed",
    "cancelled": "cancelled",
    "expired": "expired",
}


@dataclass(frozen=True)
class SubscriptionRecord:
    user_id: uuid.UUID
    provider_subscription_id: str
    plan: str
    variant_id: str
    status: str
    renews_at: datetime | None
    ends_at: datetime | None
    grace_period_end: datetime | None
    pending_plan: str | None
    provider_updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> SubscriptionRecord:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PlanChange:
    """An upgrade preview, or the result of a confirmed change."""

    days_left_in_period: int
    new_plan_credits: int
    credits_reset_now: bool
    subscription: SubscriptionRecord | None


@contextlib.contextmanager
def lemonsqueezy_errors() -> Iterator[None]:
    """Lemon Squeezy failures become UNAVAILABLE (HTTP 503): callers may retry, and Lemon Squeezy
    itself retries a webhook that was not acknowledged."""
    try:
        yield
    except LemonSqueezyError as error:
        raise Unavailable(
            f"Lemon Squeezy did not answer as expected ({error.status}): {error.detail}"
        ) from error


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SubscriptionBilling:
    def __init__(
        self,
        *,
        database: Database,
        ledger: CreditLedger,
        plans: PlanCatalog,
        lemonsqueezy: LemonSqueezyClient,
        outbox: EmailOutbox,
        webhook_secret: str,
        accept_test_mode: bool,
        grace_period: timedelta = timedelta(days=3),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.database = database
        self.ledger = ledger
        self.plans = plans
        self.lemonsqueezy = lemonsqueezy
        self.outbox = outbox
        self.webhook_secret = webhook_secret
        self.accept_test_mode = accept_test_mode
        self.grace_period = grace_period
        self.clock = clock

    # --- reading ----------------------------------------------------------------------------

    async def subscription_of(self, user_id: uuid.UUID) -> SubscriptionRecord | None:
        async with self.database.tenant(user_id) as conn:
            return await self._subscription(conn, user_id)

    @staticmethod
    async def _subscription(
        conn: AsyncConnection, user_id: uuid.UUID, *, lock: bool = False
    ) -> SubscriptionRecord | None:
        query = sa.select(subscriptions).where(subscriptions.c.user_id == user_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else SubscriptionRecord.from_row(row)

    async def _user_email(self, conn: AsyncConnection, user_id: uuid.UUID) -> str:
        found = (
            await conn.execute(sa.select(users.c.email).where(users.c.id == user_id))
        ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"user {user_id} not found")
        return str(found)

    # --- checkout ---------------------------------------------------------------------------

    async def checkout(self, user_id: uuid.UUID, plan: str) -> str:
        """A Lemon Squeezy checkout for `plan`; its webhooks come back with our user id."""
        offer = self._sellable(plan)
        async with self.database.tenant(user_id) as conn:
            address = await self._user_email(conn, user_id)
        assert offer.variant_id is not None
        with lemonsqueezy_errors():
            return await self.lemonsqueezy.create_checkout(
                variant_id=offer.variant_id, email=address, user_id=str(user_id)
            )

    def _sellable(self, plan: str) -> PlanOffer:
        if plan not in ("starter", "pro", "studio"):
            raise InvalidInput([FieldViolation("plan", "must be one of PLAN_STARTER, PLAN_PRO, PLAN_STUDIO")])
        return self.plans.get(plan)

    # --- webhooks ---------------------------------------------------------------------------

    async def handle_webhook(self, raw_body: bytes, signature: str | None) -> str:
        """Verify and apply one delivery. Returns what happened (processed, duplicate, parked,
        stale, ignored) for the log; the HTTP answer is 200 in every case but a bad signature."""
        verify_signature(self.webhook_secret, raw_body, signature)
        event = WebhookEvent.parse(raw_body)
        if event.test_mode and not self.accept_test_mode:
            return "ignored: test mode"
        if event.event_name not in SUBSCRIPTION_EVENTS | PAYMENT_EVENTS | {"order_refunded"}:
            return f"ignored: {event.event_name} is not handled"
        async with self.database.system(f"webhook {event.event_name}") as conn:
            return await self._apply_delivery(conn, event)

    async def _apply_delivery(self, conn: AsyncConnection, event: WebhookEvent) -> str:
        version = event.updated_at.isoformat() if event.updated_at else ""
        # Concurrent deliveries of one change serialize on this unique key: the second waits
        # for the first to commit, then finds the row and does nothing.
        recorded = (
            await conn.execute(
                insert(webhook_deliveries)
                .values(
                    dedupe_key=f"{event.event_name}:{event.resource_id}:{version}",
                    event_name=event.event_name,
                    resource_id=event.resource_id,
                    subscription_id=event.subscription_id,
                    status="processed",
                    payload=event.raw,
                    processed_at=sa.func.now(),
                )
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(webhook_deliveries.c.id)
            )
        ).scalar_one_or_none()
        if recorded is None:
            return "duplicate"
        outcome = await self._apply(conn, event)
        if outcome != "processed":
            await conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == recorded)
                .values(status="parked" if outcome == "parked" else "ignored")
            )
        return outcome

    async def _apply(self, conn: AsyncConnection, event: WebhookEvent) -> str:
        if event.event_name in SUBSCRIPTION_EVENTS:
            return await self._apply_subscription_event(conn, event)
        if event.event_name in PAYMENT_EVENTS:
            return await self._apply_payment_event(conn, event)
        return await self._apply_refund(conn, event)

    async def _user_for(self, conn: AsyncConnection, event: WebhookEvent) -> uuid.UUID | None:
        """Our user: from the checkout's custom data, else from the subscription we know."""
        if event.user_id:
            try:
                return uuid.UUID(event.user_id)
            except ValueError:
                log.warning("webhook %s carries a malformed user id", event.resource_id)
        if event.subscription_id:
            found = (
                await conn.execute(
                    sa.select(subscriptions.c.user_id).where(
                        subscriptions.c.provider_subscription_id == event.subscription_id
                    )
                )
            ).scalar_one_or_none()
            return found
        return None

    async def _apply_subscription_event(self, conn: AsyncConnection, event: WebhookEvent) -> str:
        user_id = await self._user_for(conn, event)
        if user_id is None:
            log.warning("%s for unknown subscription %s: no user", event.event_name, event.resource_id)
            return "ignored"
        return await self.sync_subscription(
            conn, user_id, event.resource_id, event.attributes, event.updated_at, event.event_name
        )

    async def sync_subscription(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        subscription_id: str,
        attributes: dict[str, Any],
        updated_at: datetime | None,
        event_name: str,
    ) -> str:
        """Bring our subscription in line with Lemon Squeezy's resource, unless ours is newer."""
        offer = self.plans.by_variant(attributes.get("variant_id"))
        if offer is None:
            log.warning(
                "subscription %s has unknown variant %s", subscription_id, attributes.get("variant_id")
            )
            return "ignored"
        version = updated_at or self.clock()
        current = await self._subscription(conn, user_id, lock=True)
        if current is not None and current.provider_updated_at > version:
            return "stale"
        status = (
            "expired" if event_name == "subscription_expired" else _STATUS.get(str(attributes.get("status")))
        )
        if status is None:
            return "ignored"
        plan = offer.plan if current is None or current.pending_plan is None else current.plan
        grace = None
        if status == "payment_failed":
            grace = (
                current.grace_period_end if current is not None else None
            ) or self.clock() + self.grace_period
        values = {
            "provider_subscription_id": subscription_id,
            "provider_customer_id": str(attributes.get("customer_id") or "") or None,
            "plan": plan,
            "variant_id": str(attributes.get("variant_id")),
            "status": status,
            "renews_at": _parse_time(attributes.get("renews_at")),
            "ends_at": _parse_time(attributes.get("ends_at")),
            "grace_period_end": grace,
            "provider_updated_at": version,
            "updated_at": sa.func.now(),
        }
        await conn.execute(
            insert(subscriptions)
            .values(user_id=user_id, **values)
            .on_conflict_do_update(index_elements=["user_id"], set_=values)
        )
        address = await self._user_email(conn, user_id)
        if status == "expired":
            await self._downgrade_to_free(
                conn, user_id, address, reference=f"subscription:{subscription_id}:expired"
            )
            return "processed"
        await conn.execute(sa.update(users).where(users.c.id == user_id).values(plan=plan))
        if current is None:
            await self.ledger.open_account(conn, user_id)
            granted = offer.monthly_credits > 0 and await self.ledger.grant(
                conn, user_id, offer.monthly_credits, f"subscription:{subscription_id}:created"
            )
            await self._email(
                conn,
                user_id,
                address,
                "subscription_started",
                f"started:{subscription_id}",
                email.subscription_started(plan, offer.monthly_credits),
            )
            log.info(
                "subscription %s started for %s on %s (granted: %s)", subscription_id, user_id, plan, granted
            )
            await self._replay_parked(conn, subscription_id)
        return "processed"

    async def _replay_parked(self, conn: AsyncConnection, subscription_id: str) -> None:
        parked = (
            await conn.execute(
                sa.select(webhook_deliveries.c.id, webhook_deliveries.c.payload)
                .where(
                    webhook_deliveries.c.subscription_id == subscription_id,
                    webhook_deliveries.c.status == "parked",
                )
                .order_by(webhook_deliveries.c.id)
                .with_for_update()
            )
        ).all()
        for row in parked:
            event = WebhookEvent.parse(json.dumps(row.payload).encode())
            outcome = await self._apply(conn, event)
            await conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == row.id)
                .values(
                    status="processed" if outcome == "processed" else "ignored", processed_at=sa.func.now()
                )
            )
            log.info("applied parked %s %s: %s", event.event_name, event.resource_id, outcome)

    async def _apply_payment_event(self, conn: AsyncConnection, event: WebhookEvent) -> str:
        subscription_id = event.subscription_id
        user_id = await self._user_for(conn, event)
        current = await self._subscription(conn, user_id, lock=True) if user_id else None
        if current is None or current.provider_subscription_id != subscription_id:
            # The payment overtook its subscription_created: keep it until that arrives.
            return "parked"
        assert user_id is not None
        address = await self._user_email(conn, user_id)
        if event.event_name == "subscription_payment_success":
            if event.attributes.get("billing_reason") != "renewal":
                return "processed"  # the initial payment: subscription_created granted already
            await self.apply_renewal(conn, current, invoice_id=event.resource_id, address=address)
            return "processed"
        if event.event_name == "subscription_payment_failed":
            if current.status not in ("active", "payment_failed"):
                return "stale"
            grace_end = current.grace_period_end or self.clock() + self.grace_period
            await conn.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.user_id == user_id)
                .values(status="payment_failed", grace_period_end=grace_end, updated_at=sa.func.now())
            )
            await self._email(
                conn,
                user_id,
                address,
                "payment_failed",
                f"payment_failed:{event.resource_id}",
                email.payment_failed(current.plan, grace_end),
            )
            return "processed"
        # subscription_payment_recovered
        if current.status != "payment_failed":
            return "stale"
        await conn.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.user_id == user_id)
            .values(status="active", grace_period_end=None, updated_at=sa.func.now())
        )
        return "processed"

    async def apply_renewal(
        self, conn: AsyncConnection, current: SubscriptionRecord, *, invoice_id: str, address: str
    ) -> bool:
        """A paid renewal: the period's plan (a pending downgrade takes effect now), credits reset
        to its grant, and the new renewal date from Lemon Squeezy. Keyed by the invoice, so the
        webhook and the reconciler apply it once between them."""
        plan = current.pending_plan or current.plan
        offer = self.plans.get(plan)
        reset = await self.ledger.reset(
            conn, current.user_id, offer.monthly_credits, f"invoice:{invoice_id}:renewal"
        )
        if not reset:
            return False
        with lemonsqueezy_errors():
            fresh = await self.lemonsqueezy.get_subscription(current.provider_subscription_id)
        renews_at = _parse_time(fresh.get("attributes", {}).get("renews_at")) or current.renews_at
        await conn.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.user_id == current.user_id)
            .values(
                plan=plan,
                pending_plan=None,
                status="active",
                grace_period_end=None,
                renews_at=renews_at,
                updated_at=sa.func.now(),
            )
        )
        await conn.execute(sa.update(users).where(users.c.id == current.user_id).values(plan=plan))
        await self._email(
            conn,
            current.user_id,
            address,
            "subscription_renewed",
            f"renewed:{invoice_id}",
            email.subscription_renewed(plan, offer.monthly_credits, renews_at),
        )
        return True

    async def _apply_refund(self, conn: AsyncConnection, event: WebhookEvent) -> str:
        """A refunded order takes back its plan's credits in proportion to the amount refunded,
        as one compensating ledger entry (never below what running generations hold)."""
        user_id = await self._user_for(conn, event)
        if user_id is None:
            return "ignored"
        variant = (event.attributes.get("first_order_item") or {}).get("variant_id")
        offer = self.plans.by_variant(variant)
        total = int(event.attributes.get("total") or 0)
        refunded = int(event.attributes.get("refunded_amount") or 0)
        if offer is None or offer.monthly_credits <= 0 or total <= 0 or refunded <= 0:
            return "ignored"
        credits = math.ceil(offer.monthly_credits * min(refunded, total) / total)
        await self.ledger.refund(conn, user_id, credits, f"order:{event.resource_id}:refund")
        return "processed"

    async def _downgrade_to_free(
        self, conn: AsyncConnection, user_id: uuid.UUID, address: str, *, reference: str
    ) -> None:
        await conn.execute(sa.update(users).where(users.c.id == user_id).values(plan="free"))
        await self.ledger.revoke(conn, user_id, reference)
        await self._email(
            conn, user_id, address, "subscription_expired", reference, email.subscription_expired()
        )

    async def _email(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        to_address: str,
        kind: str,
        dedupe_key: str,
        message: tuple[str, str],
    ) -> None:
        """Queue an email in this transaction; the outbox sends it later, once per dedupe key."""
        subject, body = message
        await self.outbox.enqueue(
            conn,
            user_id=user_id,
            dedupe_key=dedupe_key,
            kind=kind,
            to_address=to_address,
            subject=subject,
            body=body,
        )

    # --- grace and expiry -------------------------------------------------------------------

    async def expire_lapsed(self) -> int:
        """Move subscriptions past their grace period (or cancelled ones past their end) to
        expired: plan free, credits revoked, email queued. Safe to run any number of times."""
        now = self.clock()
        async with self.database.system("expire lapsed subscriptions") as conn:
            lapsed = (
                await conn.execute(
                    sa.update(subscriptions)
                    .where(
                        sa.or_(
                            sa.and_(
                                subscriptions.c.status == "payment_failed",
                                subscriptions.c.grace_period_end < now,
                            ),
                            sa.and_(subscriptions.c.status == "cancelled", subscriptions.c.ends_at < now),
                        )
                    )
                    .values(status="expired", updated_at=sa.func.now())
                    .returning(subscriptions.c.user_id, subscriptions.c.provider_subscription_id)
                )
            ).all()
            for row in lapsed:
                address = await self._user_email(conn, row.user_id)
                await self._downgrade_to_free(
                    conn,
                    row.user_id,
                    address,
                    reference=f"subscription:{row.provider_subscription_id}:expired",
                )
                log.info(
                    "subscription %s expired; %s is on the free plan",
                    row.provider_subscription_id,
                    row.user_id,
                )
        return len(lapsed)

    # --- plan changes -----------------------------------------------------------------------

    async def change_plan(self, user_id: uuid.UUID, plan: str, *, validate_only: bool) -> PlanChange:
        """Preview or confirm a plan change. An upgrade takes effect now (credits reset to the new
        grant); a downgrade at the end of the period."""
        offer = self._sellable(plan)
        now = self.clock()
        async with self.database.tenant(user_id) as conn:
            current = await self._subscription(conn, user_id, lock=not validate_only)
            if current is None or current.status not in ("active", "payment_failed"):
                raise FailedPrecondition("there is no active subscription to change; subscribe first")
            upgrade = rank(plan) > rank(current.plan)
            days_left = (
                max(0, math.ceil((current.renews_at - now).total_seconds() / 86400))
                if current.renews_at
                else 0
            )
            if validate_only or plan == current.plan:
                return PlanChange(
                    days_left, offer.monthly_credits, upgrade, None if validate_only else current
                )
            assert offer.variant_id is not None
            with lemonsqueezy_errors():
                changed = await self.lemonsqueezy.update_subscription_variant(
                    current.provider_subscription_id, offer.variant_id, invoice_immediately=upgrade
                )
            version = _parse_time(changed.get("attributes", {}).get("updated_at")) or now
            if upgrade:
                values: dict[str, Any] = {"plan": plan, "pending_plan": None}
            else:
                values = {"pending_plan": plan}
            await conn.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.user_id == user_id)
                .values(
                    variant_id=offer.variant_id,
                    provider_updated_at=version,
                    updated_at=sa.func.now(),
                    **values,
                )
            )
            if upgrade:
                await conn.execute(sa.update(users).where(users.c.id == user_id).values(plan=plan))
                await self.ledger.reset(
                    conn,
                    user_id,
                    offer.monthly_credits,
                    f"subscription:{current.provider_subscription_id}:upgrade:{version.isoformat()}",
                )
                await self._email(
                    conn,
                    user_id,
                    await self._user_email(conn, user_id),
                    "subscription_upgraded",
                    f"upgraded:{current.provider_subscription_id}:{version.isoformat()}",
                    email.subscription_upgraded(plan, offer.monthly_credits),
                )
            updated = await self._subscription(conn, user_id)
        return PlanChange(days_left, offer.monthly_credits, upgrade, updated)

    # --- reconciliation ---------------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Apply what webhooks missed: every subscription's current state and every paid renewal
        invoice, from the API. Ledger references match the webhook path's, so nothing is granted
        twice however the two interleave."""
        counts = {"subscriptions": 0, "renewals": 0}
        with lemonsqueezy_errors():
            remote_subscriptions = await self.lemonsqueezy.list_subscriptions()
            remote_invoices = await self.lemonsqueezy.list_subscription_invoices()
        for resource in remote_subscriptions:
            attributes = resource.get("attributes", {})
            async with self.database.system("reconcile subscription") as conn:
                user_id = await self._user_for_subscription(conn, str(resource["id"]), attributes)
                if user_id is None:
                    continue
                outcome = await self.sync_subscription(
                    conn,
                    user_id,
                    str(resource["id"]),
                    attributes,
                    _parse_time(attributes.get("updated_at")),
                    "subscription_expired"
                    if attributes.get("status") == "expired"
                    else "subscription_updated",
                )
                counts["subscriptions"] += outcome == "processed"
        for invoice in remote_invoices:
            attributes = invoice.get("attributes", {})
            if attributes.get("billing_reason") != "renewal" or attributes.get("status") != "paid":
                continue
            async with self.database.system("reconcile invoice") as conn:
                row = (
                    await conn.execute(
                        sa.select(subscriptions).where(
                            subscriptions.c.provider_subscription_id == str(attributes.get("subscription_id"))
                        )
                    )
                ).one_or_none()
                if row is None:
                    continue
                current = SubscriptionRecord.from_row(row)
                address = await self._user_email(conn, current.user_id)
                counts["renewals"] += await self.apply_renewal(
                    conn, current, invoice_id=str(invoice["id"]), address=address
                )
        return counts

    async def _user_for_subscription(
        self, conn: AsyncConnection, subscription_id: str, attributes: dict[str, Any]
    ) -> uuid.UUID | None:
        known = (
            await conn.execute(
                sa.select(subscriptions.c.user_id).where(
                    subscriptions.c.provider_subscription_id == subscription_id
                )
            )
        ).scalar_one_or_none()
        if known is not None:
            return uuid.UUID(str(known))
        # A subscription whose created webhook never came: its customer's email is the link.
        address = str(attributes.get("user_email") or "").strip().lower()
        return (
            await conn.execute(sa.select(users.c.id).where(users.c.email == address))
        ).scalar_one_or_none()
