"""Composition root of the billing service."""

from __future__ import annotations

import asyncio

from pingvas.billing.v1 import billing_service_pb2 as pb
from pingvas.billing.v1 import billing_service_pb2_grpc as pb_grpc

from services.billing.ledger import CreditLedger
from services.billing.servicer import BillingServicer
from services.common.auth import TokenAuthority
from services.common.database import Database
from services.common.server import GrpcServer, configure_logging, serve_until_terminated
from services.common.settings import BillingSettings


async def main() -> None:
    settings = BillingSettings()  # type: ignore[call-arg]
    configure_logging(settings.log_level, "billing")
    database = Database(settings.database_url, schema=settings.db_schema)
    server = GrpcServer(host=settings.host, port=settings.port, max_message_bytes=settings.max_message_bytes)
    pb_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(database, CreditLedger(), TokenAuthority(settings.jwt_secret)), server.server
    )
    server.add_services([pb.DESCRIPTOR.services_by_name["BillingService"].full_name])
    await serve_until_terminated(
        server, ready=database.ping, grace=settings.shutdown_grace_seconds, cleanup=[database.close]
    )


if __name__ == "__main__":
    asyncio.run(main())
