"""BillingService over gRPC: proto in, domain call, proto out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.billing.v1 import billing_resources_pb2 as resources
from pingvas.billing.v1 import billing_service_pb2 as pb
from pingvas.billing.v1 import billing_service_pb2_grpc as pb_grpc

from services.billing.ledger import CreditLedger, LedgerEntry
from services.billing.plans import PlanCatalog
from services.billing.subscription_repository import SubscriptionRecord
from services.billing.subscriptions import SubscriptionBilling
from services.billing.webhooks import WebhookDelivery
from services.common.auth import Principal, TokenVerifier
from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput
from services.common.rate_limits import PrincipalRateLimiter
from services.common.rpc import Endpoint, public_unary, unary

ERROR_DOMAIN = "billing.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


# Entry ids are PostgreSQL bigints; a token past that range must not reach the query, where it
# would fail as a database error (an INTERNAL) instead of the caller's mistake.
_MAX_ENTRY_ID = 2**63 - 1


def parse_entry_page_token(token: str) -> int:
    """The entry id a `next_page_token` carries; INVALID_ARGUMENT for anything this API never
    returned (int() alone would accept signs, spaces, underscores and ids past bigint)."""
    if len(token) <= 19 and token.isascii() and token.isdigit() and 0 < int(token) <= _MAX_ENTRY_ID:
        return int(token)
    raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")])


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def plan_to_proto(plan: str) -> int:
    return int(resources.Plan.Value(f"PLAN_{plan.upper()}"))


def plan_from_proto(plan: int) -> str:
    if plan == resources.PLAN_UNSPECIFIED:
        raise InvalidInput([FieldViolation("plan", "is required")])
    # Enums are open on the wire: a number the contract never named is the caller's mistake.
    if plan not in resources.Plan.values():
        raise InvalidInput([FieldViolation("plan", f"{plan} is not a plan")])
    return str(resources.Plan.Name(plan)).removeprefix("PLAN_").lower()


def entry_to_proto(entry: LedgerEntry) -> resources.CreditEntry:
    return resources.CreditEntry(
        id=str(entry.id),
        kind=resources.CreditEntryKind.Value(f"CREDIT_ENTRY_KIND_{entry.kind.upper()}"),
        amount=entry.amount,
        held_change=entry.held_change,
        reference=entry.reference,
        create_time=_timestamp(entry.created_at),
    )


def subscription_to_proto(record: SubscriptionRecord) -> resources.Subscription:
    return resources.Subscription(
        plan=plan_to_proto(record.plan),
        status=resources.SubscriptionStatus.Value(f"SUBSCRIPTION_STATUS_{record.status.upper()}"),
        renew_time=_timestamp(record.renews_at),
        end_time=_timestamp(record.ends_at),
        grace_period_end_time=_timestamp(record.grace_period_end),
    )


class BillingServicer(pb_grpc.BillingServiceServicer, Endpoint):
    def __init__(
        self,
        database: Database,
        ledger: CreditLedger,
        plans: PlanCatalog,
        billing: SubscriptionBilling,
        webhooks: WebhookDelivery,
        tokens: TokenVerifier,
        rate_limiter: PrincipalRateLimiter,
    ) -> None:
        Endpoint.__init__(
            self,
            service=pb.DESCRIPTOR.services_by_name["BillingService"],
            tokens=tokens,
            error_domain=ERROR_DOMAIN,
            rate_limiter=rate_limiter,
        )
        self.database = database
        self.ledger = ledger
        self.plans = plans
        self.billing = billing
        self.webhooks = webhooks

    @public_unary
    async def ListPlans(self, request: pb.ListPlansRequest, context: Context) -> pb.ListPlansResponse:
        return pb.ListPlansResponse(
            plans=[
                resources.PlanOffer(
                    plan=plan_to_proto(offer.plan),
                    price_usd=offer.price_usd,
                    monthly_credits=offer.monthly_credits,
                )
                for offer in self.plans.offers()
            ]
        )

    @unary
    async def CreateCheckout(
        self, request: pb.CreateCheckoutRequest, caller: Principal, context: Context
    ) -> pb.CreateCheckoutResponse:
        url = await self.billing.checkout(caller.user_id, plan_from_proto(request.plan))
        return pb.CreateCheckoutResponse(checkout_url=url)

    @unary
    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, caller: Principal, context: Context
    ) -> pb.GetSubscriptionResponse:
        record = await self.billing.subscription_of(caller.user_id)
        if record is None:
            return pb.GetSubscriptionResponse()
        return pb.GetSubscriptionResponse(subscription=subscription_to_proto(record))

    @unary
    async def UpgradeSubscription(
        self, request: pb.UpgradeSubscriptionRequest, caller: Principal, context: Context
    ) -> pb.UpgradeSubscriptionResponse:
        change = await self.billing.change_plan(
            caller.user_id, plan_from_proto(request.plan), validate_only=request.validate_only
        )
        return pb.UpgradeSubscriptionResponse(
            days_left_in_period=change.days_left_in_period,
            new_plan_credits=change.new_plan_credits,
            credits_reset_now=change.credits_reset_now,
            subscription=subscription_to_proto(change.subscription) if change.subscription else None,
        )

    @public_unary
    async def HandleLemonSqueezyWebhook(
        self, request: pb.HandleLemonSqueezyWebhookRequest, context: Context
    ) -> pb.HandleLemonSqueezyWebhookResponse:
        # The signature is the authentication; Envoy passes the header through as metadata.
        signature = next(
            (str(item.value) for item in context.invocation_metadata() or () if item.key == "x-signature"),
            None,
        )
        await self.webhooks.handle(request.body.data, signature)
        return pb.HandleLemonSqueezyWebhookResponse()

    @unary
    async def GetCreditBalance(
        self, request: pb.GetCreditBalanceRequest, caller: Principal, context: Context
    ) -> pb.GetCreditBalanceResponse:
        async with self.database.tenant(caller.user_id) as conn:
            balance = await self.ledger.balance(conn, caller.user_id)
        return pb.GetCreditBalanceResponse(
            balance=resources.CreditBalance(
                balance=balance.balance, held=balance.held, available=balance.available
            )
        )

    @unary
    async def ListCreditEntries(
        self, request: pb.ListCreditEntriesRequest, caller: Principal, context: Context
    ) -> pb.ListCreditEntriesResponse:
        limit = min(request.page_size or 50, 100)
        before_id = parse_entry_page_token(request.page_token) if request.page_token else None
        async with self.database.tenant(caller.user_id) as conn:
            entries = await self.ledger.entries(conn, caller.user_id, limit=limit + 1, before_id=before_id)
        next_token = str(entries[limit - 1].id) if len(entries) > limit else ""
        return pb.ListCreditEntriesResponse(
            entries=[entry_to_proto(e) for e in entries[:limit]], next_page_token=next_token
        )
