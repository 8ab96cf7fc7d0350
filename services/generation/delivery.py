"""Handing a QUEUED generation to Redis: the queue entry and the `queued` event that tells its
watchers where it stands. Acceptance does it after the commit, runs after a requeue, and the
reconciler for whatever Redis lost."""

from __future__ import annotations

import logging

from pingvas.generation.v1 import generation_resources_pb2 as resources

from services.generation.events import EventLog, new_event
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord

log = logging.getLogger(__name__)


class Delivery:
    def __init__(self, queue: TierQueue, events: EventLog) -> None:
        self.queue = queue
        self.events = events

    async def enqueue(self, record: GenerationRecord) -> None:
        """Never raises: PostgreSQL already holds the job, so a failed enqueue only delays it
        until the reconciler enqueues it again."""
        try:
            position = await self.queue.enqueue(
                record.tier, record.user_id, record.id, record.model, record.batch_key, with_position=True
            )
            await self.events.append(
                record.id,
                new_event(record.id, queued=resources.GenerationQueued(position=position or 1)),
                # Never started: a worker that claimed it meanwhile wrote `queued` before `started`.
                only_first=record.attempt == 0,
            )
        except Exception:
            log.warning("enqueue of %s failed; the reconciler will retry", record.id, exc_info=True)
