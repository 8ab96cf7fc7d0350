"""BillingService over gRPC. The credit balance and ledger listing are served now; checkout,
subscriptions, upgrades and Lemon Squeezy webhooks land with the billing issue and answer
UNIMPLEMENTED until then."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.billing.v1 import billing_resources_pb2 as resources
from pingvas.billing.v1 import billing_service_pb2 as pb
from pingvas.billing.v1 import billing_service_pb2_grpc as pb_grpc

from services.billing.ledger import CreditLedger, LedgerEntry
from services.common.auth import Principal, TokenAuthority
from services.common.database import Database
from services.common.errors import FieldViolation, InvalidInput
from services.common.rpc import Endpoint, not_implemented_yet, unary

ERROR_DOMAIN = "billing.pingvas.studio"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def entry_to_proto(entry: LedgerEntry) -> resources.CreditEntry:
    created = Timestamp()
    created.FromDatetime(entry.created_at)
    return resources.CreditEntry(
        id=str(entry.id),
        kind=resources.CreditEntryKind.Value(f"CREDIT_ENTRY_KIND_{entry.kind.upper()}"),
        amount=entry.amount,
        held_change=entry.held_change,
        reference=entry.reference,
        create_time=created,
    )


class BillingServicer(pb_grpc.BillingServiceServicer, Endpoint):
    def __init__(self, database: Database, ledger: CreditLedger, tokens: TokenAuthority) -> None:
        Endpoint.__init__(self, tokens=tokens, error_domain=ERROR_DOMAIN)
        self.database = database
        self.ledger = ledger

    ListPlans = not_implemented_yet("ListPlans")

    CreateCheckout = not_implemented_yet("Lemon Squeezy checkout")

    GetSubscription = not_implemented_yet("GetSubscription")

    UpgradeSubscription = not_implemented_yet("UpgradeSubscription")

    HandleLemonSqueezyWebhook = not_implemented_yet("Lemon Squeezy webhooks")

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
        before_id: int | None = None
        if request.page_token:
            try:
                before_id = int(request.page_token)
            except ValueError:
                raise InvalidInput(
                    [FieldViolation("page_token", "is not a token this API returned")]
                ) from None
        async with self.database.tenant(caller.user_id) as conn:
            entries = await self.ledger.entries(conn, caller.user_id, limit=limit + 1, before_id=before_id)
        next_token = str(entries[limit - 1].id) if len(entries) > limit else ""
        return pb.ListCreditEntriesResponse(
            entries=[entry_to_proto(e) for e in entries[:limit]], next_page_token=next_token
        )
