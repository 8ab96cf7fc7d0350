"""Generation jobs from acceptance to their one terminal state.

This is the domain of the seed's image-generation sequence. The generation service calls
`create`, `get`, `page`, `cancel` and `watch`; GPU workers call `start` and the `finish_*`
methods. State lives in PostgreSQL (the truth), delivery in Redis (the queue and event logs).
Every transition is a conditional UPDATE; a worker's is also fenced on its attempt number, so a
late result from a lost worker is discarded.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb
from sqlalchemy.exc import IntegrityError

from services.billing.ledger import CreditLedger, generation_reference
from services.billing.pricing import Pricing
from services.common.database import Database
from services.common.errors import (
    FieldViolation,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    QueueFull,
    Violations,
)
from services.common.signing import ImageUrlSigner
from services.generation.catalog import ModelCatalog, ModelInfo
from services.generation.events import EventLog, event_kind, is_terminal, new_event
from services.generation.failures import Failure, FailureCode
from services.generation.lifecycle import EventKind, GenerationState
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord, GenerationRepository

log = logging.getLogger(__name__)

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationSpec:
    """What a caller asked for; None means "the default"."""

    prompt: str
    negative_prompt: str = ""
    model: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class ResolvedSpec:
    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    seed: int | None
    guidance: float


@dataclass(frozen=True)
class WorkResult:
    png: bytes
    seed: int
    gpu_seconds: float


def parse_generation_id(value: str, field: str = "generation_id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput([FieldViolation(field, "must be a generation id (a UUID)")]) from None


def encode_page_token(record: GenerationRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, generation_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(generation_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput([FieldViolation("page_token", "is not a token this API returned")]) from None


class GenerationJobs:
    def __init__(
        self,
        *,
        database: Database,
        repository: GenerationRepository,
        ledger: CreditLedger,
        queue: TierQueue,
        events: EventLog,
        catalog: ModelCatalog,
        pricing: Pricing,
        default_model: str,
        image_urls: ImageUrlSigner | None = None,
        max_queue_depth: Mapping[str, int] | None = None,
        max_attempts: int = 3,
        lease_seconds: float = 30.0,
    ) -> None:
        self.database = database
        self.repository = repository
        self.ledger = ledger
        self.queue = queue
        self.events = events
        self.catalog = catalog
        self.pricing = pricing
        self.default_model = default_model
        # Only the generation service signs URLs; workers leave it unset.
        self.image_urls = image_urls
        self.max_queue_depth = dict(max_queue_depth or {})
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds

    # --- acceptance -------------------------------------------------------------------------

    def resolve(self, spec: GenerationSpec) -> tuple[ResolvedSpec, ModelInfo]:
        """Apply defaults and the rules that depend on the model; field paths match the API."""
        violations = Violations()
        if not spec.prompt.strip():
            violations.add("generation.prompt", "must not be blank")
        model_name = spec.model or self.default_model
        model = self.catalog.get(model_name)
        if model is None:
            known = ", ".join(self.catalog.names()) or "none installed"
            violations.add("generation.model", f"unknown model {model_name!r} (available: {known})")
            violations.raise_if_any()
            raise AssertionError("unreachable")
        width = spec.width if spec.width is not None else model.native_size
        height = spec.height if spec.height is not None else model.native_size
        for name, value in (("width", width), ("height", height)):
            if value % 8:
                violations.add(f"generation.{name}", "must be a multiple of 8")
            elif not model.min_size <= value <= model.max_size:
                violations.add(
                    f"generation.{name}",
                    f"must be between {model.min_size} and {model.max_size} for model {model.name}",
                )
        steps = spec.steps if spec.steps is not None else DEFAULT_STEPS
        if not 1 <= steps <= 150:
            violations.add("generation.steps", "must be between 1 and 150")
        if spec.seed is not None and not 0 <= spec.seed <= MAX_SEED:
            violations.add("generation.seed", f"must be between 0 and {MAX_SEED}")
        violations.raise_if_any()
        resolved = ResolvedSpec(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            model=model.name,
            width=width,
            height=height,
            steps=steps,
            seed=spec.seed,
            guidance=spec.guidance if spec.guidance is not None else DEFAULT_GUIDANCE,
        )
        return resolved, model

    async def create(
        self, user_id: uuid.UUID, spec: GenerationSpec, request_id: str = ""
    ) -> GenerationRecord:
        """Validate, then in one transaction insert the QUEUED job and hold its credits; then
        enqueue. A crash between commit and enqueue only delays the job: the reconciler
        enqueues every QUEUED job that Redis does not have."""
        resolved, _model = self.resolve(spec)
        hold = self.pricing.hold_for(steps=resolved.steps, width=resolved.width, height=resolved.height)
        if request_id:
            existing = await self._same_request(user_id, request_id, resolved)
            if existing is not None:
                return existing
        generation_id = uuid.uuid4()
        seed = resolved.seed if resolved.seed is not None else secrets.randbelow(MAX_SEED + 1)
        try:
            async with self.database.tenant(user_id) as conn:
                plan = await self.repository.user_plan(conn, user_id)
                if plan is None:
                    raise NotFound("the signed-in user no longer exists")
                await self._admit(plan)
                record = await self.repository.insert(
                    conn,
                    id=generation_id,
                    user_id=user_id,
                    state=GenerationState.QUEUED,
                    tier=plan,
                    prompt=resolved.prompt,
                    negative_prompt=resolved.negative_prompt,
                    model=resolved.model,
                    width=resolved.width,
                    height=resolved.height,
                    steps=resolved.steps,
                    seed=seed,
                    guidance=resolved.guidance,
                    request_id=request_id or None,
                    attempt=0,
                    credits_held=hold,
                    credits_charged=0,
                    gpu_seconds=0.0,
                    cancel_requested=False,
                )
                await self.ledger.hold(conn, user_id, generation_reference(generation_id), hold)
        except IntegrityError:
            # A concurrent request with the same idempotency key won the insert.
            if request_id:
                existing = await self._same_request(user_id, request_id, resolved)
                if existing is not None:
                    return existing
            raise
        await self._enqueue(record)
        return record

    async def _admit(self, tier: str) -> None:
        """Backpressure: a full band refuses new work before anything is held or queued."""
        limit = self.max_queue_depth.get(tier)
        if limit is not None and await self.queue.depth(tier) >= limit:
            raise QueueFull(
                f"the {tier} queue is full ({limit} waiting); try again shortly",
                metadata={"tier": tier, "max_queue_depth": str(limit)},
            )

    async def _same_request(
        self, user_id: uuid.UUID, request_id: str, resolved: ResolvedSpec
    ) -> GenerationRecord | None:
        async with self.database.tenant(user_id) as conn:
            existing = await self.repository.get_by_request_id(conn, user_id, request_id)
        if existing is None:
            return None
        same = (
            existing.prompt == resolved.prompt
            and existing.negative_prompt == resolved.negative_prompt
            and existing.model == resolved.model
            and (existing.width, existing.height, existing.steps)
            == (resolved.width, resolved.height, resolved.steps)
            and (resolved.seed is None or existing.seed == resolved.seed)
            and abs(existing.guidance - resolved.guidance) < 1e-6
        )
        if not same:
            raise IdempotencyKeyReused(
                f"request_id {request_id!r} was already used with different parameters"
            )
        return existing

    async def _enqueue(self, record: GenerationRecord) -> None:
        try:
            await self.queue.enqueue(record.tier, record.user_id, record.id, record.model, record.batch_key)
            position = await self.queue.position(record.tier, record.user_id, record.id)
            await self.events.append(
                record.id, new_event(record.id, queued=resources.GenerationQueued(position=position or 1))
            )
        except Exception:
            log.warning("enqueue of %s failed; the reconciler will retry", record.id, exc_info=True)

    # --- reading ----------------------------------------------------------------------------

    async def get(self, user_id: uuid.UUID, generation_id: uuid.UUID) -> GenerationRecord:
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.get(conn, user_id, generation_id)
        if record is None:
            raise NotFound(f"generation {generation_id} not found")
        return record

    async def page(
        self, user_id: uuid.UUID, *, page_size: int, page_token: str
    ) -> tuple[list[GenerationRecord], str]:
        limit = min(page_size or 20, 100)
        after = decode_page_token(page_token) if page_token else None
        async with self.database.tenant(user_id) as conn:
            records = await self.repository.page(conn, user_id, limit=limit + 1, after=after)
        next_token = encode_page_token(records[limit - 1]) if len(records) > limit else ""
        return records[:limit], next_token

    # --- cancellation -----------------------------------------------------------------------

    async def cancel(self, user_id: uuid.UUID, generation_id: uuid.UUID) -> GenerationRecord:
        async with self.database.tenant(user_id) as conn:
            cancelled = await self.repository.cancel_queued(conn, user_id, generation_id)
            if cancelled is not None:
                await self.ledger.release(conn, user_id, generation_reference(generation_id))
            else:
                running = await self.repository.request_cancel(conn, user_id, generation_id)
        if cancelled is not None:
            await self.queue.remove(cancelled.tier, user_id, generation_id)
            await self.events.append(
                generation_id,
                new_event(generation_id, cancelled=resources.GenerationCancelled(was_running=False)),
            )
            return cancelled
        if running is not None:
            # The worker checks this flag between denoising steps.
            await self.queue.request_cancel(generation_id)
            return running
        return await self.get(user_id, generation_id)

    # --- watching ---------------------------------------------------------------------------

    async def watch(
        self,
        user_id: uuid.UUID,
        generation_id: uuid.UUID,
        *,
        after_sequence: int = 0,
        poll_ms: int = 500,
        truth_check_seconds: float = 2.0,
    ) -> AsyncIterator[pb.WatchGenerationResponse]:
        """Replay the stored events after `after_sequence`, then follow live ones until the
        terminal event. See WatchGeneration in the contract for the full semantics."""
        record = await self.get(user_id, generation_id)
        if record.is_terminal:
            yield await self._terminal_event(record)
            return
        loop = asyncio.get_running_loop()
        stream_cursor = "0"
        last_sequence = after_sequence
        queued_sequence = 0
        last_position: int | None = None
        still_queued = True
        next_truth_check = loop.time() + truth_check_seconds
        while True:
            for stored in await self.events.read(generation_id, stream_cursor, block_ms=poll_ms):
                stream_cursor = stored.stream_id
                event = stored.event
                still_queued = event_kind(event) == EventKind.QUEUED
                if still_queued:
                    queued_sequence = event.sequence
                    position = await self.queue.position(record.tier, user_id, generation_id)
                    if position is not None:
                        event.queued.position = position
                    last_position = event.queued.position
                if event.sequence <= last_sequence:
                    continue
                last_sequence = event.sequence
                if is_terminal(event):
                    yield self._with_image_url(record, event)
                    return
                yield event
            if still_queued and queued_sequence:
                position = await self.queue.position(record.tier, user_id, generation_id)
                if position is not None and position != last_position:
                    last_position = position
                    yield new_event(
                        generation_id,
                        sequence=queued_sequence,
                        queued=resources.GenerationQueued(position=position),
                    )
            if loop.time() >= next_truth_check:
                # PostgreSQL is the truth: a terminal state whose event Redis lost still ends
                # the stream.
                next_truth_check = loop.time() + truth_check_seconds
                record = await self.get(user_id, generation_id)
                if record.is_terminal:
                    tail = await self.events.read(generation_id, stream_cursor, block_ms=None)
                    for stored in tail:
                        if stored.event.sequence > last_sequence and not is_terminal(stored.event):
                            last_sequence = stored.event.sequence
                            yield stored.event
                    yield await self._terminal_event(record, last_sequence)
                    return

    async def _terminal_event(
        self, record: GenerationRecord, last_sequence: int = 0
    ) -> pb.WatchGenerationResponse:
        stored = await self.events.last(record.id)
        if stored is not None and is_terminal(stored):
            return self._with_image_url(record, stored)
        # The log expired or lost its tail: rebuild the event from the row.
        event = self.terminal_event_from_record(record)
        event.sequence = max(last_sequence + 1, stored.sequence + 1 if stored else 1)
        return self._with_image_url(record, event)

    @staticmethod
    def terminal_event_from_record(record: GenerationRecord) -> pb.WatchGenerationResponse:
        if record.state == GenerationState.SUCCEEDED:
            event = new_event(
                record.id,
                succeeded=resources.GenerationSucceeded(
                    seed=record.seed, gpu_seconds=record.gpu_seconds, credits_charged=record.credits_charged
                ),
            )
        elif record.failure is not None:
            event = new_event(record.id, failed=record.failure.to_proto())
        else:
            event = new_event(
                record.id, cancelled=resources.GenerationCancelled(was_running=record.started_at is not None)
            )
        if record.finished_at is not None:
            event.time.FromDatetime(record.finished_at)
        return event

    def image_url(self, record: GenerationRecord) -> str:
        """A fresh signed URL, made when read, so replayed events never carry a stale one."""
        if record.state != GenerationState.SUCCEEDED or self.image_urls is None:
            return ""
        return self.image_urls.url(record.id, record.user_id)

    def _with_image_url(
        self, record: GenerationRecord, event: pb.WatchGenerationResponse
    ) -> pb.WatchGenerationResponse:
        if event_kind(event) == EventKind.SUCCEEDED and self.image_urls is not None:
            event.succeeded.image_url = self.image_urls.url(record.id, record.user_id)
        return event

    # --- the worker's side ------------------------------------------------------------------

    async def start(
        self, user_id: uuid.UUID, generation_id: uuid.UUID, worker_id: str
    ) -> GenerationRecord | None:
        """QUEUED -> RUNNING with a new attempt number, the fencing token of this run. None if the
        job is no longer queued (cancelled meanwhile, or already taken by a duplicate delivery)."""
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.mark_running(conn, user_id, generation_id, worker_id)
        if record is not None:
            await self.events.append(
                generation_id,
                new_event(generation_id, started=resources.GenerationStarted(attempt=record.attempt)),
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

    async def finish_succeeded(self, record: GenerationRecord, image_key: str, result: WorkResult) -> bool:
        """Record success and capture the charge, fenced on the attempt. False if fenced out."""
        charge = min(self.pricing.charge_for(result.gpu_seconds), record.credits_held)
        async with self.database.tenant(record.user_id) as conn:
            done = await self.repository.finish_succeeded(
                conn,
                record,
                image_key=image_key,
                seed=result.seed,
                gpu_seconds=result.gpu_seconds,
                credits_charged=charge,
            )
            if done is None:
                return False
            await self.ledger.capture(conn, record.user_id, generation_reference(record.id), charge)
        await self.events.append(
            record.id,
            new_event(
                record.id,
                succeeded=resources.GenerationSucceeded(
                    seed=result.seed, gpu_seconds=result.gpu_seconds, credits_charged=charge
                ),
            ),
        )
        return True

    async def finish_failed(self, record: GenerationRecord, failure: Failure) -> bool:
        async with self.database.tenant(record.user_id) as conn:
            done = await self.repository.finish_failed(conn, record, failure)
            if done is None:
                return False
            await self.ledger.release(conn, record.user_id, generation_reference(record.id))
        await self.events.append(record.id, new_event(record.id, failed=failure.to_proto()))
        return True

    async def finish_cancelled(self, record: GenerationRecord) -> bool:
        async with self.database.tenant(record.user_id) as conn:
            done = await self.repository.finish_cancelled(conn, record)
            if done is None:
                return False
            await self.ledger.release(conn, record.user_id, generation_reference(record.id))
        await self.events.append(
            record.id, new_event(record.id, cancelled=resources.GenerationCancelled(was_running=True))
        )
        return True

    # --- retries and repair ------------------------------------------------------------------

    async def requeue(self, record: GenerationRecord, failure: Failure | None) -> str:
        """Give a RUNNING job back to the queue, fenced on its attempt: after a lost worker or a
        `failure` (which counts toward dead-lettering), or a spot interruption's hand-back (None,
        which does not). A job whose cancel was requested is cancelled instead, and a job that
        failed `max_attempts` times is dead-lettered as FAILED, with its last failure, and its
        hold released. Returns what happened: requeued, cancelled, dead-lettered, or fenced."""
        if record.cancel_requested:
            return "cancelled" if await self.finish_cancelled(record) else "fenced"
        failures = record.failures + (0 if failure is None else 1)
        if failure is not None and failures >= self.max_attempts:
            log.warning("giving %s up after %d failed attempts", record.id, failures)
            dead = await self.finish_failed(record, failure)
            return "dead-lettered" if dead else "fenced"
        async with self.database.tenant(record.user_id) as conn:
            back = await self.repository.back_to_queue(conn, record, failures=failures)
        if back is None:
            return "fenced"
        await self._enqueue(back)
        log.warning(
            "requeued %s after attempt %d: %s",
            record.id,
            record.attempt,
            "handed back" if failure is None else f"{failure.code} (incident {failure.incident_id})",
        )
        return "requeued"

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
                repaired += outcome != "fenced"
                continue
            if await self.queue.is_waiting(record.tier, record.user_id, record.id):
                continue
            log.warning("re-enqueueing %s, which Redis lost", record.id)
            await self._enqueue(record)
            repaired += 1
        return repaired
