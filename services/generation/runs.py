"""A generation's runs on GPU workers: start, progress, the one terminal state, and the repair of
runs whose worker was lost.

Workers call `start`, `report_progress`, the `finish_*` methods and `requeue`; the generation
service's reconciler calls `reconcile`. Every change is fenced on the run's attempt number (see
GenerationRepository), so a late result from a lost worker is discarded, and money moves in the
same transaction as the state, as do the webhook deliveries that report it.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from opentelemetry import metrics, trace
from pingvas.generation.v1 import generation_resources_pb2 as resources

from services.billing.ledger import CreditLedger, generation_reference
from services.billing.pricing import Pricing
from services.common.database import Database
from services.common.telemetry import span_without_statements
from services.gallery.repository import ImageRepository, StoredImage
from services.generation.delivery import Delivery
from services.generation.events import EventLog, new_event
from services.generation.failures import Failure, FailureCode
from services.generation.lifecycle import GenerationState
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord, GenerationRepository
from services.generation.webhooks import GenerationWebhooks
from services.webhooks.endpoints import WebhookEvent

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)
# Jobs by outcome: succeeded, failed, cancelled (terminal), requeued (given another attempt).
jobs_by_outcome = meter.create_counter(
    "pingvas.generation.jobs", unit="{job}", description="Generations that reached an outcome, by outcome."
)


@dataclass(frozen=True)
class WorkResult:
    """What a successful run cost and the seed that reproduces it."""

    seed: int
    gpu_seconds: float


class RequeueOutcome(StrEnum):
    """What `requeue` did with a running job."""

    REQUEUED = "requeued"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead-lettered"
    FENCED = "fenced"  # another attempt owns the job; nothing changed


class Runs:
    def __init__(
        self,
        *,
        database: Database,
        repository: GenerationRepository,
        ledger: CreditLedger,
        pricing: Pricing,
        queue: TierQueue,
        events: EventLog,
        delivery: Delivery,
        max_attempts: int = 3,
        lease_seconds: float = 30.0,
    ) -> None:
        self.database = database
        self.repository = repository
        self.ledger = ledger
        self.pricing = pricing
        self.queue = queue
        self.events = events
        self.delivery = delivery
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.images = ImageRepository()
        self.webhooks = GenerationWebhooks()

    async def start(
        self, user_id: uuid.UUID, generation_id: uuid.UUID, worker_id: str
    ) -> GenerationRecord | None:
        """QUEUED -> RUNNING with a new attempt number, the fencing token of this run. None if the
        job is no longer queued (cancelled meanwhile, or already taken by a duplicate delivery)."""
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.mark_running(conn, user_id, generation_id, worker_id)
            if record is not None:
                await self.webhooks.record(conn, record, WebhookEvent.STARTED)
        if record is not None:
            await self.events.append(
                generation_id,
                new_event(generation_id, started=resources.GenerationStarted(attempt=record.attempt)),
                # Claimed before its `queued` was appended: it was next in line.
                after_first=new_event(generation_id, queued=resources.GenerationQueued(position=1)),
            )
        return record

    async def report_progress(self, record: GenerationRecord, step: int, total: int, preview: bytes) -> None:
        await self.events.append(
            record.id,
            new_event(
                record.id,
                progress=resources.GenerationProgress(
                    step=step, total_steps=total, preview=preview, preview_mime_type="image/jpeg"
                ),
            ),
        )

    async def finish_succeeded(
        self, record: GenerationRecord, image: StoredImage, result: WorkResult
    ) -> bool:
        """Record success, the gallery's image row and the charge in one transaction, fenced on
        the attempt. False if fenced out. The image's objects must already be stored: a row is
        never written without its objects (a fenced-out run leaves objects without a row)."""
        charge = min(self.pricing.charge_for(result.gpu_seconds), record.credits_held)
        with self._fenced_finish(record, GenerationState.SUCCEEDED) as span:
            async with self.database.tenant(record.user_id) as conn:
                done = await self.repository.finish_succeeded(
                    conn,
                    record,
                    image_key=image.object_key,
                    seed=result.seed,
                    gpu_seconds=result.gpu_seconds,
                    credits_charged=charge,
                )
                if done is None:
                    span.set_attribute("pingvas.fenced_out", True)
                    return False
                await self.images.insert(conn, image)
                await self.ledger.capture(conn, record.user_id, generation_reference(record.id), charge)
                await self.webhooks.record(conn, done, WebhookEvent.COMPLETED)
        await self._append_terminal(
            record,
            GenerationState.SUCCEEDED,
            succeeded=resources.GenerationSucceeded(
                seed=result.seed, gpu_seconds=result.gpu_seconds, credits_charged=charge
            ),
        )
        return True

    async def finish_failed(self, record: GenerationRecord, failure: Failure) -> bool:
        """Record the failure and release the hold, fenced on the attempt. False if fenced out."""
        with self._fenced_finish(record, GenerationState.FAILED) as span:
            async with self.database.tenant(record.user_id) as conn:
                done = await self.repository.finish_failed(conn, record, failure)
                if done is None:
                    span.set_attribute("pingvas.fenced_out", True)
                    return False
                await self.ledger.release(conn, record.user_id, generation_reference(record.id))
                await self.webhooks.record(conn, done, WebhookEvent.COMPLETED)
        await self._append_terminal(record, GenerationState.FAILED, failed=failure.to_proto())
        return True

    async def finish_cancelled(self, record: GenerationRecord) -> bool:
        """Record the cancel and release the hold, fenced on the attempt. False if fenced out."""
        with self._fenced_finish(record, GenerationState.CANCELLED) as span:
            async with self.database.tenant(record.user_id) as conn:
                done = await self.repository.finish_cancelled(conn, record)
                if done is None:
                    span.set_attribute("pingvas.fenced_out", True)
                    return False
                await self.ledger.release(conn, record.user_id, generation_reference(record.id))
                await self.webhooks.record(conn, done, WebhookEvent.COMPLETED)
        await self._append_terminal(
            record, GenerationState.CANCELLED, cancelled=resources.GenerationCancelled(was_running=True)
        )
        return True

    def _fenced_finish(
        self, record: GenerationRecord, state: GenerationState
    ) -> AbstractContextManager[trace.Span]:
        """The span of a terminal transaction (fenced on the attempt), as a context manager."""
        return span_without_statements(
            tracer,
            "fenced finish",
            attributes={
                "pingvas.generation_id": str(record.id),
                "pingvas.attempt": record.attempt,
                "pingvas.state": state.name,
            },
        )

    async def _append_terminal(self, record: GenerationRecord, state: GenerationState, **event: Any) -> None:
        """Append the terminal event for watchers, and count the outcome."""
        with span_without_statements(
            tracer,
            "terminal event",
            attributes={"pingvas.generation_id": str(record.id), "pingvas.state": state.name},
        ):
            await self.events.append(record.id, new_event(record.id, **event))
        jobs_by_outcome.add(1, {"outcome": state.lower()})

    async def requeue(self, record: GenerationRecord, failure: Failure | None) -> RequeueOutcome:
        """Give a RUNNING job back to the queue, fenced on its attempt: after a lost worker or a
        `failure` (which counts toward dead-lettering), or a spot interruption's hand-back (None,
        which does not). A job whose cancel was requested is cancelled instead, and a job that
        failed `max_attempts` times is dead-lettered as FAILED, with its last failure, and its
        hold released."""
        if record.cancel_requested:
            cancelled = await self.finish_cancelled(record)
            return RequeueOutcome.CANCELLED if cancelled else RequeueOutcome.FENCED
        failures = record.failures + (0 if failure is None else 1)
        if failure is not None and failures >= self.max_attempts:
            log.warning("giving %s up after %d failed attempts", record.id, failures)
            dead = await self.finish_failed(record, failure)
            return RequeueOutcome.DEAD_LETTERED if dead else RequeueOutcome.FENCED
        async with self.database.tenant(record.user_id) as conn:
            back = await self.repository.back_to_queue(conn, record, failures=failures)
        if back is None:
            return RequeueOutcome.FENCED
        await self.delivery.enqueue(back)
        jobs_by_outcome.add(1, {"outcome": "requeued"})
        log.warning(
            "requeued %s after attempt %d: %s",
            record.id,
            record.attempt,
            "handed back" if failure is None else f"{failure.code} (incident {failure.incident_id})",
        )
        return RequeueOutcome.REQUEUED

    async def reconcile(self, *, min_age_seconds: float = 5.0, batch: int = 500) -> int:
        """Repair delivery from PostgreSQL, the truth: re-enqueue every QUEUED job that Redis
        lost (neither waiting nor leased), and requeue every RUNNING job whose lease lapsed.

        Returns how many jobs were repaired. Safe to run anywhere, any number of times: a job
        delivered twice is started once, because `start` is a conditional update, and a stale
        worker's result is fenced out by the attempt number.
        """
        async with self.database.system("reconcile queue") as conn:
            live = await self.repository.live_older_than(conn, min_age_seconds, batch)
        repaired = 0
        for record in live:
            if await self.queue.is_leased(record.id):
                continue
            if record.state == GenerationState.RUNNING:
                # Its worker died or stalled past the lease (kill -9, a lost spot node, a
                # SIGSTOP): another worker takes over, and a late result is fenced out.
                started = record.started_at
                if started is not None and (datetime.now(UTC) - started).total_seconds() < self.lease_seconds:
                    continue  # claimed before Redis was lost; give the worker one lease to renew
                await self.queue.drop_expired_lease(record.id)
                lost = Failure.report(
                    FailureCode.WORKER_LOST,
                    record.run_label,
                    f"worker {record.worker_id} stopped renewing its lease",
                    logger=log,
                )
                outcome = await self.requeue(record, lost)
                repaired += outcome != RequeueOutcome.FENCED
                continue
            if await self.queue.is_waiting(record.tier, record.user_id, record.id):
                continue
            log.warning("re-enqueueing %s, which Redis lost", record.id)
            await self.delivery.enqueue(record)
            repaired += 1
        return repaired
