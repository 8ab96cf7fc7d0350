"""Lemon Squeezy webhook delivery: verify, dedupe, quarantine, park, dispatch.

Each delivery is applied at most once (a dedupe key per event, resource and resource version),
in one transaction with its effects. Payments that arrive before their subscription is known are
parked and replayed when it starts.

Who the payer is. `custom_data.user_id` comes from a checkout URL, which anyone can edit, so it is
a claim, not a proof. A delivery whose claimed user is not the subscription's known user, or whose
customer email belongs to another account, is quarantined: answered 200 (Lemon Squeezy must not
retry it), stored with its reason, and changing nothing. An operator lists them with
`pingvas billing quarantine` and applies one after review with `pingvas billing quarantine apply
<id>`; applied, it acts for the subscription's known user, or for a subscription new to us, for
the user the checkout named.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.lemonsqueezy import WebhookEvent, verify_signature
from services.billing.subscription_repository import (
    DeliveryOutcome,
    StoredDelivery,
    SubscriptionRepository,
)
from services.billing.subscriptions import BillingReason, SubscriptionBilling
from services.common.database import Database
from services.common.errors import FailedPrecondition, NotFound

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
REFUND_EVENTS = frozenset({"order_refunded"})


@dataclass(frozen=True)
class Payer:
    """Whom a delivery acts for, and why it cannot be trusted (None when it can)."""

    user_id: uuid.UUID | None
    doubt: str | None


class WebhookDelivery:
    def __init__(
        self,
        *,
        database: Database,
        repository: SubscriptionRepository,
        billing: SubscriptionBilling,
        webhook_secret: str,
        accept_test_mode: bool,
    ) -> None:
        self.database = database
        self.repository = repository
        self.billing = billing
        self.webhook_secret = webhook_secret
        self.accept_test_mode = accept_test_mode

    async def handle(self, raw_body: bytes, signature: str | None) -> DeliveryOutcome:
        """Verify and apply one delivery. The HTTP answer is 200 for every outcome; a bad
        signature is 401, and a dependency that is down is 503 so that Lemon Squeezy retries."""
        verify_signature(self.webhook_secret, raw_body, signature)
        event = WebhookEvent.parse(raw_body)
        if event.test_mode and not self.accept_test_mode:
            return DeliveryOutcome.IGNORED
        if event.event_name not in SUBSCRIPTION_EVENTS | PAYMENT_EVENTS | REFUND_EVENTS:
            log.info("ignored webhook %s: not handled", event.event_name)
            return DeliveryOutcome.IGNORED
        renews_at = await self._renewal_date(event)
        async with self.database.system(f"webhook {event.event_name}") as conn:
            recorded = await self.repository.record_delivery(
                conn,
                dedupe_key=f"{event.event_name}:{event.resource_id}:{_version(event)}",
                event_name=event.event_name,
                resource_id=event.resource_id,
                subscription_id=event.subscription_id,
                payload=event.raw,
            )
            if recorded is None:
                return DeliveryOutcome.DUPLICATE
            outcome, reason = await self._apply(conn, event, renews_at=renews_at, vouched=False)
            if outcome is not DeliveryOutcome.PROCESSED:
                await self.repository.set_delivery_status(conn, recorded, outcome, reason)
        await self._after_commit(event, outcome)
        log.info("webhook %s %s: %s", event.event_name, event.resource_id, outcome)
        return outcome

    async def _renewal_date(self, event: WebhookEvent) -> datetime | None:
        """A renewal's next date comes from the API, asked before any transaction opens."""
        if (
            event.event_name == "subscription_payment_success"
            and event.attributes.get("billing_reason") == BillingReason.RENEWAL
            and event.subscription_id
        ):
            return await self.billing.renewal_date(event.subscription_id)
        return None

    async def _after_commit(self, event: WebhookEvent, outcome: DeliveryOutcome) -> None:
        # A failed upgrade payment is undone at Lemon Squeezy once its state is committed.
        if (
            outcome is DeliveryOutcome.PROCESSED
            and event.event_name == "subscription_payment_failed"
            and event.subscription_id
        ):
            await self.billing.finish_revert(event.subscription_id)

    async def _payer(self, conn: AsyncConnection, event: WebhookEvent) -> Payer:
        known = await self.repository.user_of(conn, event.subscription_id) if event.subscription_id else None
        claimed: uuid.UUID | None = None
        if event.user_id:
            try:
                claimed = uuid.UUID(event.user_id)
            except ValueError:
                return Payer(known, f"custom_data.user_id {event.user_id!r} is not a user id")
        if claimed is not None and known is not None and claimed != known:
            return Payer(known, f"custom_data.user_id {claimed} is not the subscription's user {known}")
        address = str(event.attributes.get("user_email") or "")
        owner = await self.repository.user_by_email(conn, address) if address else None
        if claimed is not None and owner is not None and owner != claimed:
            return Payer(
                known or claimed,
                f"the customer email {address} belongs to user {owner}, not to {claimed}",
            )
        user_id = known or claimed
        if user_id is not None and not await self.repository.user_exists(conn, user_id):
            return Payer(None, None)
        return Payer(user_id, None)

    async def _apply(
        self,
        conn: AsyncConnection,
        event: WebhookEvent,
        *,
        renews_at: datetime | None,
        vouched: bool,
    ) -> tuple[DeliveryOutcome, str | None]:
        """Apply one event in the caller's transaction. `vouched`: an operator reviewed it."""
        payer = await self._payer(conn, event)
        if payer.doubt is not None and not vouched:
            log.warning("quarantined %s %s: %s", event.event_name, event.resource_id, payer.doubt)
            return DeliveryOutcome.QUARANTINED, payer.doubt
        if event.event_name in PAYMENT_EVENTS:
            current = (
                await self.repository.get(conn, event.subscription_id, lock=True)
                if event.subscription_id
                else None
            )
            if current is None:
                # The payment overtook its subscription_created: keep it until that arrives.
                return DeliveryOutcome.PARKED, None
            outcome = await self.billing.payment_event(
                conn, event.event_name, current, event.resource_id, event.attributes, renews_at=renews_at
            )
            return outcome, None
        if payer.user_id is None:
            log.warning("%s %s: no user of ours", event.event_name, event.resource_id)
            return DeliveryOutcome.IGNORED, None
        if event.event_name in REFUND_EVENTS:
            return await self.billing.refund(conn, payer.user_id, event.resource_id, event.attributes), None
        synced = await self.billing.sync_subscription(
            conn,
            payer.user_id,
            event.resource_id,
            event.attributes,
            event.updated_at,
            expired=event.event_name == "subscription_expired",
        )
        if synced.started:
            await self.replay_parked(conn, event.resource_id)
        return synced.outcome, None

    async def replay_parked(self, conn: AsyncConnection, subscription_id: str) -> None:
        """Apply the payments that waited for this subscription, in arrival order."""
        for delivery in await self.repository.parked(conn, subscription_id):
            event = _event_of(delivery)
            outcome, reason = await self._apply(conn, event, renews_at=None, vouched=False)
            await self.repository.set_delivery_status(conn, delivery.id, outcome, reason)
            log.info("applied parked %s %s: %s", event.event_name, event.resource_id, outcome)

    # --- quarantine -------------------------------------------------------------------------

    async def quarantined(self) -> list[StoredDelivery]:
        async with self.database.system("list quarantined webhook deliveries") as conn:
            return await self.repository.quarantined(conn)

    async def apply_quarantined(self, delivery_id: int) -> DeliveryOutcome:
        """Apply a quarantined delivery an operator reviewed; its reason stays on record."""
        async with self.database.system(f"apply quarantined webhook delivery {delivery_id}") as conn:
            delivery = await self.repository.lock_delivery(conn, delivery_id)
            if delivery is None:
                raise NotFound(f"webhook delivery {delivery_id} not found")
            if delivery.status is not DeliveryOutcome.QUARANTINED:
                raise FailedPrecondition(
                    f"webhook delivery {delivery_id} is {delivery.status}, not quarantined"
                )
            event = _event_of(delivery)
            outcome, _ = await self._apply(conn, event, renews_at=None, vouched=True)
            await self.repository.set_delivery_status(conn, delivery_id, outcome)
        await self._after_commit(event, outcome)
        log.info("applied quarantined %s %s: %s", event.event_name, event.resource_id, outcome)
        return outcome


def _version(event: WebhookEvent) -> str:
    return event.updated_at.isoformat() if event.updated_at else ""


def _event_of(delivery: StoredDelivery) -> WebhookEvent:
    return WebhookEvent.parse(json.dumps(delivery.payload).encode())
