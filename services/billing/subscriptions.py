"""Subscription state: created, updated, renewed, failed, expired, upgraded.

A subscription is keyed by its Lemon Squeezy subscription id, and a user has a history of them:
a returning subscriber's new subscription is a new row, with its own first credits, started
email and parked payments, each applied once.

Which subscription decides the plan. Of a user's live subscriptions (active, in a payment grace
period, or cancelled but paid until `ends_at`), the one that started last. So when a new
subscription starts while an old one is cancelled but not yet ended, the new one decides from its
start; the old one's later expiry changes nothing, because a live subscription remains. Only when
the last live subscription expires does the user move to the free plan and lose their credits.
A new subscription's first credits are a reset to its allowance, as a renewal is, so two
overlapping subscriptions never stack credits.

What "plan" means during an upgrade. The user keeps the plan, band and credits they paid for
until Lemon Squeezy confirms the prorated invoice of the change (`subscription_payment_success`
with `billing_reason` `updated`); until then the subscription only records the pending upgrade.
The paid invoice moves the plan and resets the credits to the new allowance; a failed one undoes
the change: the pending upgrade is dropped, Lemon Squeezy's subscription is patched back to the
old variant, and the user gets the failed-payment email. A downgrade waits for the renewal.

Calls to Lemon Squeezy never run inside a PostgreSQL transaction. An upgrade is recorded first
(`UpgradeState.REQUESTED`), committed, then sent; its answer is committed in a second short
transaction. A crash in between leaves the intent, which `reconcile` settles from the API.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing import email
from services.billing.email import EmailKind, EmailOutbox
from services.billing.ledger import CreditLedger
from services.billing.lemonsqueezy import LemonSqueezyClient, LemonSqueezyError
from services.billing.plans import PlanCatalog, PlanOffer, rank
from services.billing.subscription_repository import (
    DeliveryOutcome,
    SubscriptionRecord,
    SubscriptionRepository,
    SubscriptionStatus,
    UpgradeState,
)
from services.common.database import Database
from services.common.errors import FailedPrecondition, FieldViolation, InvalidInput, Unavailable

log = logging.getLogger(__name__)

# Lemon Squeezy's subscription statuses, as the states Pingvas acts on.
_STATUS = {
    "active": SubscriptionStatus.ACTIVE,
    "on_trial": SubscriptionStatus.ACTIVE,
    "paused": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAYMENT_FAILED,
    "unpaid": SubscriptionStatus.PAYMENT_FAILED,
    "cancelled": SubscriptionStatus.CANCELLED,
    "expired": SubscriptionStatus.EXPIRED,
}


class BillingReason(enum.StrEnum):
    """An invoice's `billing_reason`: why Lemon Squeezy charged."""

    INITIAL = "initial"
    RENEWAL = "renewal"
    UPDATED = "updated"  # the prorated charge of a plan change


@dataclass(frozen=True)
class PlanChange:
    """An upgrade preview, or the result of a confirmed change."""

    days_left_in_period: int
    new_plan_credits: int
    credits_reset_now: bool  # an upgrade: credits reset once its invoice is paid, not at renewal
    subscription: SubscriptionRecord | None


@dataclass(frozen=True)
class Synced:
    outcome: DeliveryOutcome
    started: bool  # a subscription new to us started: its parked payments may now apply


def unavailable(error: LemonSqueezyError) -> Unavailable:
    """Lemon Squeezy failures become UNAVAILABLE (HTTP 503): callers may retry, and Lemon Squeezy
    itself retries a webhook that was not acknowledged."""
    return Unavailable(f"Lemon Squeezy did not answer as expected ({error.status}): {error.detail}")


@contextlib.contextmanager
def lemonsqueezy_errors() -> Iterator[None]:
    try:
        yield
    except LemonSqueezyError as error:
        raise unavailable(error) from error


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SubscriptionBilling:
    def __init__(
        self,
        *,
        database: Database,
        repository: SubscriptionRepository,
        ledger: CreditLedger,
        plans: PlanCatalog,
        lemonsqueezy: LemonSqueezyClient,
        outbox: EmailOutbox,
        grace_period: timedelta = timedelta(days=3),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.database = database
        self.repository = repository
        self.ledger = ledger
        self.plans = plans
        self.lemonsqueezy = lemonsqueezy
        self.outbox = outbox
        self.grace_period = grace_period
        self.clock = clock

    # --- reading and checkout ---------------------------------------------------------------

    async def subscription_of(self, user_id: uuid.UUID) -> SubscriptionRecord | None:
        async with self.database.tenant(user_id) as conn:
            return await self.repository.latest(conn, user_id)

    async def checkout(self, user_id: uuid.UUID, plan: str) -> str:
        """A Lemon Squeezy checkout for `plan`; its webhooks come back with our user id."""
        offer = self._sellable(plan)
        async with self.database.tenant(user_id) as conn:
            address = await self.repository.email_of(conn, user_id)
        assert offer.variant_id is not None
        with lemonsqueezy_errors():
            return await self.lemonsqueezy.create_checkout(
                variant_id=offer.variant_id, email=address, user_id=str(user_id)
            )

    def _sellable(self, plan: str) -> PlanOffer:
        if plan not in ("starter", "pro", "studio"):
            raise InvalidInput([FieldViolation("plan", "must be one of PLAN_STARTER, PLAN_PRO, PLAN_STUDIO")])
        return self.plans.get(plan)

    # --- created, updated, cancelled, expired -----------------------------------------------

    async def sync_subscription(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        subscription_id: str,
        attributes: dict[str, Any],
        updated_at: datetime | None,
        *,
        expired: bool,
    ) -> Synced:
        """Bring one subscription in line with Lemon Squeezy's resource, unless ours is newer."""
        offer = self.plans.by_variant(attributes.get("variant_id"))
        if offer is None:
            log.warning(
                "subscription %s has unknown variant %s", subscription_id, attributes.get("variant_id")
            )
            return Synced(DeliveryOutcome.IGNORED, False)
        version = updated_at or self.clock()
        current = await self.repository.get(conn, subscription_id, lock=True)
        if current is not None and current.provider_updated_at > version:
            return Synced(DeliveryOutcome.STALE, False)
        status = SubscriptionStatus.EXPIRED if expired else _STATUS.get(str(attributes.get("status")))
        if status is None:
            return Synced(DeliveryOutcome.IGNORED, False)
        values: dict[str, Any] = {
            "provider_customer_id": str(attributes.get("customer_id") or "") or None,
            "variant_id": str(attributes.get("variant_id")),
            "status": status,
            "renews_at": parse_time(attributes.get("renews_at")),
            "ends_at": parse_time(attributes.get("ends_at")),
            "grace_period_end": None,
            "provider_updated_at": version,
        }
        if status is SubscriptionStatus.PAYMENT_FAILED:
            values["grace_period_end"] = (
                current.grace_period_end if current is not None else None
            ) or self.clock() + self.grace_period
        if current is None:
            values |= {
                "plan": offer.plan,
                "pending_plan": None,
                "started_at": parse_time(attributes.get("created_at")) or version,
            }
        elif rank(offer.plan) < rank(current.plan):
            values["pending_plan"] = offer.plan  # a downgrade takes effect at renewal
        elif offer.plan == current.plan:
            values["pending_plan"] = None
        # A higher variant is an upgrade: the plan moves when its invoice is paid, not here.
        if current is None:
            await self.repository.save(conn, user_id, subscription_id, values)
        else:
            await self.repository.update(conn, subscription_id, **values)

        started = current is None and status is not SubscriptionStatus.EXPIRED
        if started:
            await self.ledger.open_account(conn, user_id)
            if offer.monthly_credits > 0:
                await self.ledger.reset(
                    conn, user_id, offer.monthly_credits, f"subscription:{subscription_id}:created"
                )
            await self._email(
                conn,
                user_id,
                EmailKind.SUBSCRIPTION_STARTED,
                f"started:{subscription_id}",
                email.subscription_started(offer.plan, offer.monthly_credits),
            )
            log.info("subscription %s started for %s on %s", subscription_id, user_id, offer.plan)
        ended = current is not None and current.live and status is SubscriptionStatus.EXPIRED
        await self._settle_plan(conn, user_id, ended=subscription_id if ended else None)
        return Synced(DeliveryOutcome.PROCESSED, started)

    async def _settle_plan(self, conn: AsyncConnection, user_id: uuid.UUID, *, ended: str | None) -> None:
        """Set the user's plan from the subscription that decides it. When `ended` (a subscription
        that just expired) leaves no live one, the user moves to free and loses their credits."""
        deciding = await self.repository.deciding(conn, user_id)
        await self.repository.set_user_plan(conn, user_id, deciding.plan if deciding else "free")
        if deciding is None and ended is not None:
            reference = f"subscription:{ended}:expired"
            await self.ledger.revoke(conn, user_id, reference)
            await self._email(
                conn, user_id, EmailKind.SUBSCRIPTION_EXPIRED, reference, email.subscription_expired()
            )

    # --- payments ---------------------------------------------------------------------------

    async def renewal_date(self, subscription_id: str) -> datetime | None:
        """The next renewal date as Lemon Squeezy has it; asked before the renewal's transaction,
        so the user's credits are never locked while the API answers."""
        try:
            fresh = await self.lemonsqueezy.get_subscription(subscription_id)
        except LemonSqueezyError as error:
            if error.status == 404:  # not there (yet): the renewal keeps the date we have
                return None
            raise unavailable(error) from error
        return parse_time(fresh.get("attributes", {}).get("renews_at"))

    async def payment_event(
        self,
        conn: AsyncConnection,
        event_name: str,
        current: SubscriptionRecord,
        invoice_id: str,
        attributes: dict[str, Any],
        *,
        renews_at: datetime | None,
    ) -> DeliveryOutcome:
        reason = attributes.get("billing_reason")
        if event_name == "subscription_payment_success":
            if reason == BillingReason.RENEWAL:
                await self.apply_renewal(conn, current, invoice_id=invoice_id, renews_at=renews_at)
            elif reason == BillingReason.UPDATED:
                await self.apply_upgrade_payment(conn, current, invoice_id=invoice_id)
            # The initial payment: subscription_created granted already.
            return DeliveryOutcome.PROCESSED
        if event_name == "subscription_payment_failed":
            if reason == BillingReason.UPDATED:
                return await self._upgrade_payment_failed(conn, current, invoice_id)
            if current.status not in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAYMENT_FAILED):
                return DeliveryOutcome.STALE
            grace_end = current.grace_period_end or self.clock() + self.grace_period
            await self.repository.update(
                conn,
                current.provider_subscription_id,
                status=SubscriptionStatus.PAYMENT_FAILED,
                grace_period_end=grace_end,
            )
            await self._email(
                conn,
                current.user_id,
                EmailKind.PAYMENT_FAILED,
                f"payment_failed:{invoice_id}",
                email.payment_failed(current.plan, grace_end),
            )
            return DeliveryOutcome.PROCESSED
        # subscription_payment_recovered
        if current.status is not SubscriptionStatus.PAYMENT_FAILED:
            return DeliveryOutcome.STALE
        await self.repository.update(
            conn, current.provider_subscription_id, status=SubscriptionStatus.ACTIVE, grace_period_end=None
        )
        return DeliveryOutcome.PROCESSED

    async def apply_renewal(
        self,
        conn: AsyncConnection,
        current: SubscriptionRecord,
        *,
        invoice_id: str,
        renews_at: datetime | None,
    ) -> bool:
        """A paid renewal: the period's plan (a pending downgrade takes effect now), credits reset
        to its grant, and the new renewal date. Keyed by the invoice, so the webhook and the
        reconciler apply it once between them."""
        plan = current.pending_plan or current.plan
        offer = self.plans.get(plan)
        reset = await self.ledger.reset(
            conn, current.user_id, offer.monthly_credits, f"invoice:{invoice_id}:renewal"
        )
        if not reset:
            return False
        renews_at = renews_at or current.renews_at
        await self.repository.update(
            conn,
            current.provider_subscription_id,
            plan=plan,
            pending_plan=None,
            status=SubscriptionStatus.ACTIVE,
            grace_period_end=None,
            renews_at=renews_at,
        )
        await self._settle_plan(conn, current.user_id, ended=None)
        await self._email(
            conn,
            current.user_id,
            EmailKind.SUBSCRIPTION_RENEWED,
            f"renewed:{invoice_id}",
            email.subscription_renewed(plan, offer.monthly_credits, renews_at),
        )
        return True

    async def apply_upgrade_payment(
        self, conn: AsyncConnection, current: SubscriptionRecord, *, invoice_id: str
    ) -> bool:
        """The paid invoice of a plan change: the upgrade takes effect, credits reset to the new
        grant. Keyed by the invoice, so redeliveries and the reconciler apply it once."""
        target = current.pending_upgrade
        if target is None:
            # A change made elsewhere (Lemon Squeezy's customer portal): the variant says where to.
            by_variant = self.plans.by_variant(current.variant_id)
            target = by_variant.plan if by_variant is not None else None
        if (
            target is None
            or rank(target) <= rank(current.plan)
            or current.upgrade_state is UpgradeState.REVERTING
        ):
            return False
        offer = self.plans.get(target)
        if not await self.ledger.reset(
            conn, current.user_id, offer.monthly_credits, f"invoice:{invoice_id}:upgrade"
        ):
            return False
        await self.repository.update(
            conn,
            current.provider_subscription_id,
            plan=target,
            pending_plan=None,
            pending_upgrade=None,
            upgrade_state=None,
            previous_variant_id=None,
            upgrade_requested_at=None,
        )
        await self._settle_plan(conn, current.user_id, ended=None)
        await self._email(
            conn,
            current.user_id,
            EmailKind.SUBSCRIPTION_UPGRADED,
            f"upgraded:{invoice_id}",
            email.subscription_upgraded(target, offer.monthly_credits),
        )
        log.info("upgrade of %s to %s paid (%s)", current.provider_subscription_id, target, invoice_id)
        return True

    async def _upgrade_payment_failed(
        self, conn: AsyncConnection, current: SubscriptionRecord, invoice_id: str
    ) -> DeliveryOutcome:
        """The upgrade's invoice failed: mark it for undoing (the PATCH back runs after this
        transaction, in `finish_revert`). The plan and credits never moved, so they stay."""
        state, plan = current.upgrade_state, current.pending_upgrade
        if state not in (UpgradeState.REQUESTED, UpgradeState.AWAITING_PAYMENT) or plan is None:
            return DeliveryOutcome.STALE
        await self.repository.move_upgrade(
            conn,
            current.provider_subscription_id,
            plan=plan,
            from_state=state,
            to_state=UpgradeState.REVERTING,
        )
        await self._email(
            conn,
            current.user_id,
            EmailKind.PAYMENT_FAILED,
            f"payment_failed:{invoice_id}",
            email.upgrade_payment_failed(current.plan, plan),
        )
        return DeliveryOutcome.PROCESSED

    async def finish_revert(self, subscription_id: str) -> bool:
        """Patch a failed upgrade's subscription back to its old variant, outside any
        transaction, then drop the upgrade. Left for `reconcile` when Lemon Squeezy fails."""
        async with self.database.system("read an upgrade to undo") as conn:
            current = await self.repository.get(conn, subscription_id)
        if (
            current is None
            or current.upgrade_state is not UpgradeState.REVERTING
            or current.pending_upgrade is None
            or current.previous_variant_id is None
        ):
            return False
        try:
            await self.lemonsqueezy.update_subscription_variant(
                subscription_id, current.previous_variant_id, invoice_immediately=False
            )
        except LemonSqueezyError as error:
            log.warning("could not patch %s back after a failed upgrade: %s", subscription_id, error)
            return False
        async with self.database.system("finish undoing an upgrade") as conn:
            return await self.repository.move_upgrade(
                conn,
                subscription_id,
                plan=current.pending_upgrade,
                from_state=UpgradeState.REVERTING,
                to_state=None,
                variant_id=current.previous_variant_id,
            )

    async def refund(
        self, conn: AsyncConnection, user_id: uuid.UUID, order_id: str, attributes: dict[str, Any]
    ) -> DeliveryOutcome:
        """A refunded order takes back its plan's credits in proportion to the amount refunded,
        as one compensating ledger entry (never below what running generations hold)."""
        variant = (attributes.get("first_order_item") or {}).get("variant_id")
        offer = self.plans.by_variant(variant)
        total = int(attributes.get("total") or 0)
        refunded = int(attributes.get("refunded_amount") or 0)
        if offer is None or offer.monthly_credits <= 0 or total <= 0 or refunded <= 0:
            return DeliveryOutcome.IGNORED
        credits = math.ceil(offer.monthly_credits * min(refunded, total) / total)
        await self.ledger.refund(conn, user_id, credits, f"order:{order_id}:refund")
        return DeliveryOutcome.PROCESSED

    async def _email(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        kind: EmailKind,
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
            to_address=await self.repository.email_of(conn, user_id),
            subject=subject,
            body=body,
        )

    # --- grace and expiry -------------------------------------------------------------------

    async def expire_lapsed(self) -> int:
        """Move subscriptions past their grace period (or cancelled ones past their end) to
        expired; a user left without a live subscription moves to free. Safe to rerun."""
        async with self.database.system("expire lapsed subscriptions") as conn:
            lapsed = await self.repository.expire_lapsed(conn, self.clock())
            for record in lapsed:
                await self._settle_plan(conn, record.user_id, ended=record.provider_subscription_id)
                log.info("subscription %s of %s expired", record.provider_subscription_id, record.user_id)
        return len(lapsed)

    # --- plan changes -----------------------------------------------------------------------

    async def change_plan(self, user_id: uuid.UUID, plan: str, *, validate_only: bool) -> PlanChange:
        """Preview or confirm a plan change. An upgrade is recorded, sent to Lemon Squeezy and
        takes effect when its invoice is paid; a downgrade takes effect at renewal."""
        offer = self._sellable(plan)
        now = self.clock()
        async with self.database.tenant(user_id) as conn:
            current = await self.repository.deciding(conn, user_id)
            if current is None or current.status not in (
                SubscriptionStatus.ACTIVE,
                SubscriptionStatus.PAYMENT_FAILED,
            ):
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
            # One change at a time: a downgrade sent while an upgrade awaits its invoice would be
            # overtaken by that invoice.
            if (upgrade and not await self.repository.record_upgrade(conn, current, plan, now)) or (
                not upgrade and current.upgrade_state is not None
            ):
                raise FailedPrecondition("another plan change is under way; try again when it settles")
        # Committed: a crash during the call below leaves the intent for `reconcile`.
        subscription_id = current.provider_subscription_id
        assert offer.variant_id is not None
        try:
            await self.lemonsqueezy.update_subscription_variant(
                subscription_id, offer.variant_id, invoice_immediately=upgrade
            )
        except LemonSqueezyError as error:
            if upgrade and not error.retryable:
                # Refused outright: nothing changed at Lemon Squeezy, so nothing is pending.
                async with self.database.tenant(user_id) as conn:
                    await self.repository.move_upgrade(
                        conn, subscription_id, plan=plan, from_state=UpgradeState.REQUESTED, to_state=None
                    )
            raise unavailable(error) from error
        async with self.database.tenant(user_id) as conn:
            if upgrade:
                await self.repository.move_upgrade(
                    conn,
                    subscription_id,
                    plan=plan,
                    from_state=UpgradeState.REQUESTED,
                    to_state=UpgradeState.AWAITING_PAYMENT,
                    variant_id=offer.variant_id,
                )
            else:
                await self.repository.update(
                    conn, subscription_id, pending_plan=plan, variant_id=offer.variant_id
                )
            updated = await self.repository.get(conn, subscription_id)
        return PlanChange(days_left, offer.monthly_credits, upgrade, updated)

    async def settle_upgrade(self, record: SubscriptionRecord, remote_variant: str) -> str:
        """Settle an upgrade a crash left between Lemon Squeezy's answer and our commit, from the
        variant Lemon Squeezy has now. Returns what was done, for the reconciler's count."""
        plan = record.pending_upgrade
        assert plan is not None
        offer = self.plans.get(plan)
        if record.upgrade_state is UpgradeState.REVERTING:
            return "reverted" if await self.finish_revert(record.provider_subscription_id) else "left"
        async with self.database.system("settle an interrupted upgrade") as conn:
            if remote_variant == offer.variant_id:  # the PATCH landed: the invoice decides now
                moved = await self.repository.move_upgrade(
                    conn,
                    record.provider_subscription_id,
                    plan=plan,
                    from_state=UpgradeState.REQUESTED,
                    to_state=UpgradeState.AWAITING_PAYMENT,
                    variant_id=remote_variant,
                )
                return "awaiting payment" if moved else "left"
            moved = await self.repository.move_upgrade(
                conn,
                record.provider_subscription_id,
                plan=plan,
                from_state=UpgradeState.REQUESTED,
                to_state=None,
            )
            return "dropped" if moved else "left"
