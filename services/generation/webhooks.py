"""A generation's webhook deliveries, recorded in the transaction of the change they report: the
job's RUNNING for `started`, its terminal state for `completed`. The payload is the generation
as the API shows it at that moment (proto JSON), under Replicate's and Standard Webhooks'
`type`/`timestamp`/`data`; image URLs expire, so the deliverer adds them to each attempt.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncConnection

from services.generation.repository import GenerationRecord
from services.generation.representation import generation_to_proto
from services.webhooks.endpoints import WebhookEvent
from services.webhooks.outbox import WebhookOutbox


class GenerationWebhooks:
    def __init__(self, outbox: WebhookOutbox | None = None) -> None:
        self.outbox = outbox or WebhookOutbox()

    async def record(self, conn: AsyncConnection, record: GenerationRecord, event: WebhookEvent) -> None:
        """Enqueue `event` of `record` (as it is now) if its webhook asked for it."""
        if record.webhook_url is None or record.api_key_id is None:
            return
        if event not in (record.webhook_events or ()):
            return
        payload = {
            "type": event.type,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": json_format.MessageToDict(generation_to_proto(record, None)),
        }
        await self.outbox.enqueue(
            conn,
            user_id=record.user_id,
            generation_id=record.id,
            api_key_id=record.api_key_id,
            event=event,
            url=record.webhook_url,
            payload=payload,
        )
