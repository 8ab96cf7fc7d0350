"""Builds the billing domain from settings, for the two processes that run it: the billing
service (services/billing/__main__.py) and the `pingvas billing` jobs (reconcile, expire), which
a Kubernetes CronJob runs in production."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.billing.email import EmailOutbox
from services.billing.ledger import CreditLedger
from services.billing.lemonsqueezy import LemonSqueezyClient
from services.billing.plans import PlanCatalog
from services.billing.reconcile import BillingReconciler
from services.billing.subscription_repository import SubscriptionRepository
from services.billing.subscriptions import SubscriptionBilling
from services.billing.webhooks import WebhookDelivery
from services.common.database import Database
from services.common.settings import (
    DEV_LEMONSQUEEZY_API_KEY,
    DEV_LEMONSQUEEZY_WEBHOOK_SECRET,
    LemonSqueezySettings,
    PlanSettings,
)


@dataclass
class BillingParts:
    database: Database
    ledger: CreditLedger
    plans: PlanCatalog
    lemonsqueezy: LemonSqueezyClient
    outbox: EmailOutbox
    billing: SubscriptionBilling
    webhooks: WebhookDelivery
    reconciler: BillingReconciler

    async def close(self) -> None:
        await self.lemonsqueezy.aclose()
        await self.database.close()


def build_billing(
    *,
    env: str,
    database_url: str,
    system_database_url: str,
    db_schema: str,
    grace_period_days: int = 3,
    application_name: str = "pingvas-billing",
) -> BillingParts:
    lemonsqueezy_settings = LemonSqueezySettings()
    # The billing jobs (`pingvas billing ...`) build this without a service's start-up checks.
    if env == "prod" and (
        lemonsqueezy_settings.api_key == DEV_LEMONSQUEEZY_API_KEY
        or lemonsqueezy_settings.webhook_secret == DEV_LEMONSQUEEZY_WEBHOOK_SECRET
    ):
        raise SystemExit(
            "PINGVAS_LEMONSQUEEZY_API_KEY and PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET must be set in prod"
        )
    database = Database(
        database_url, schema=db_schema, system_url=system_database_url, application_name=application_name
    )
    ledger = CreditLedger()
    plans = PlanCatalog(PlanSettings(), lemonsqueezy_settings)
    lemonsqueezy = LemonSqueezyClient(
        lemonsqueezy_settings.api_url,
        lemonsqueezy_settings.api_key,
        lemonsqueezy_settings.store_id,
        timeout=lemonsqueezy_settings.timeout_seconds,
    )
    outbox = EmailOutbox()
    repository = SubscriptionRepository()
    billing = SubscriptionBilling(
        database=database,
        repository=repository,
        ledger=ledger,
        plans=plans,
        lemonsqueezy=lemonsqueezy,
        outbox=outbox,
        grace_period=timedelta(days=grace_period_days),
    )
    webhooks = WebhookDelivery(
        database=database,
        repository=repository,
        billing=billing,
        webhook_secret=lemonsqueezy_settings.webhook_secret,
        accept_test_mode=lemonsqueezy_settings.test_mode,
    )
    reconciler = BillingReconciler(
        database=database,
        repository=repository,
        billing=billing,
        webhooks=webhooks,
        lemonsqueezy=lemonsqueezy,
    )
    return BillingParts(database, ledger, plans, lemonsqueezy, outbox, billing, webhooks, reconciler)
