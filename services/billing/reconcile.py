"""Reconciliation: apply what webhooks missed, and settle what a crash left half done.

It reads every subscription and invoice from the API first, then applies each in its own short
transaction. Ledger references match the webhook path's, so nothing is granted twice however the
two interleave. An upgrade left `requested` or `reverting` (a process died between its call to
Lemon Squeezy and the commit of the answer) is settled from the variant Lemon Squeezy now has.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from services.billing.lemonsqueezy import LemonSqueezyClient
from services.billing.subscription_repository import DeliveryOutcome, SubscriptionRepository
from services.billing.subscriptions import BillingReason, SubscriptionBilling, lemonsqueezy_errors, parse_time
from services.billing.webhooks import WebhookDelivery
from services.common.database import Database

# An intent younger than this may belong to a request still waiting for Lemon Squeezy.
UNSETTLED_AFTER = timedelta(minutes=5)


class BillingReconciler:
    def __init__(
        self,
        *,
        database: Database,
        repository: SubscriptionRepository,
        billing: SubscriptionBilling,
        webhooks: WebhookDelivery,
        lemonsqueezy: LemonSqueezyClient,
    ) -> None:
        self.database = database
        self.repository = repository
        self.billing = billing
        self.webhooks = webhooks
        self.lemonsqueezy = lemonsqueezy

    async def reconcile(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with lemonsqueezy_errors():
            remote_subscriptions = await self.lemonsqueezy.list_subscriptions()
            remote_invoices = await self.lemonsqueezy.list_subscription_invoices()
        by_id = {str(resource["id"]): resource.get("attributes", {}) for resource in remote_subscriptions}
        for subscription_id, attributes in by_id.items():
            counts["subscriptions"] += await self._subscription(subscription_id, attributes)
        for invoice in remote_invoices:
            attributes = invoice.get("attributes", {})
            if attributes.get("status") != "paid":
                continue
            remote = by_id.get(str(attributes.get("subscription_id")), {})
            counts[str(attributes.get("billing_reason"))] += await self._paid_invoice(
                str(invoice["id"]), attributes, remote
            )
        await self._unsettled_upgrades(by_id, counts)
        return counts

    async def _subscription(self, subscription_id: str, attributes: dict[str, Any]) -> bool:
        async with self.database.system("reconcile subscription") as conn:
            user_id = await self.repository.user_of(conn, subscription_id)
            if user_id is None:
                # A subscription whose created webhook never came: its customer's email is the link.
                user_id = await self.repository.user_by_email(conn, str(attributes.get("user_email") or ""))
            if user_id is None:
                return False
            synced = await self.billing.sync_subscription(
                conn,
                user_id,
                subscription_id,
                attributes,
                parse_time(attributes.get("updated_at")),
                expired=attributes.get("status") == "expired",
            )
            if synced.started:
                await self.webhooks.replay_parked(conn, subscription_id)
            return synced.outcome is DeliveryOutcome.PROCESSED

    async def _paid_invoice(
        self, invoice_id: str, attributes: dict[str, Any], remote: dict[str, Any]
    ) -> bool:
        reason = attributes.get("billing_reason")
        if reason not in (BillingReason.RENEWAL, BillingReason.UPDATED):
            return False
        async with self.database.system("reconcile invoice") as conn:
            current = await self.repository.get(conn, str(attributes.get("subscription_id")), lock=True)
            if current is None:
                return False
            if reason == BillingReason.UPDATED:
                return await self.billing.apply_upgrade_payment(conn, current, invoice_id=invoice_id)
            return await self.billing.apply_renewal(
                conn, current, invoice_id=invoice_id, renews_at=parse_time(remote.get("renews_at"))
            )

    async def _unsettled_upgrades(self, remote: dict[str, dict[str, Any]], counts: Counter[str]) -> None:
        async with self.database.system("find unsettled upgrades") as conn:
            unsettled = await self.repository.unsettled_upgrades(conn, self.billing.clock() - UNSETTLED_AFTER)
        for record in unsettled:
            variant = str(remote.get(record.provider_subscription_id, {}).get("variant_id", ""))
            counts[f"upgrades {await self.billing.settle_upgrade(record, variant)}"] += 1
