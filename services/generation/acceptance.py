"""Taking a generation in: validate the request against its model, price it, hold the credits,
record the QUEUED job and enqueue it; and taking it back out when its user cancels.

State lives in PostgreSQL (the truth), delivery in Redis. Insert and hold share one transaction;
the enqueue follows the commit, and a crash between the two only delays the job, because the
reconciler enqueues every QUEUED job that Redis does not have.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from pingvas.generation.v1 import generation_resources_pb2 as resources
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.ledger import CreditLedger, generation_reference
from services.billing.pricing import Pricing
from services.common.database import Database
from services.common.errors import (
    IdempotencyKeyReused,
    NotFound,
    QueueFull,
    TooManyGenerations,
    Violations,
)
from services.generation.catalog import ModelCatalog, ModelInfo
from services.generation.delivery import Delivery
from services.generation.events import EventLog, new_event
from services.generation.lifecycle import GenerationState
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord, GenerationRepository
from services.generation.runs import jobs_by_outcome
from services.generation.webhooks import GenerationWebhooks
from services.webhooks.endpoints import WebhookEvent, WebhookUrlRules, parse_events
from services.webhooks.outbox import WebhookOutbox

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
class WebhookRequest:
    """Where a caller asked this generation's events to go; empty events: all of them."""

    url: str
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedWebhook:
    url: str
    events: tuple[WebhookEvent, ...]


@dataclass(frozen=True)
class ResolvedSpec:
    """A GenerationSpec with its defaults applied and checked against its model."""

    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    seed: int | None
    guidance: float


class Acceptance:
    def __init__(
        self,
        *,
        database: Database,
        repository: GenerationRepository,
        ledger: CreditLedger,
        pricing: Pricing,
        catalog: ModelCatalog,
        default_model: str,
        queue: TierQueue,
        events: EventLog,
        delivery: Delivery,
        max_queue_depth: Mapping[str, int] | None = None,
        webhook_rules: WebhookUrlRules,
        max_live_per_user: Mapping[str, int] | None = None,
    ) -> None:
        self.database = database
        self.repository = repository
        self.ledger = ledger
        self.pricing = pricing
        self.catalog = catalog
        self.default_model = default_model
        self.queue = queue
        self.events = events
        self.delivery = delivery
        self.max_queue_depth = dict(max_queue_depth or {})
        self.max_live_per_user = dict(max_live_per_user or {})
        self.webhook_rules = webhook_rules
        self.webhook_outbox = WebhookOutbox()
        self.webhooks = GenerationWebhooks(self.webhook_outbox)

    async def resolve(self, spec: GenerationSpec) -> tuple[ResolvedSpec, ModelInfo]:
        """Apply defaults and the rules that depend on the model; field paths match the API."""
        violations = Violations()
        if not spec.prompt.strip():
            violations.add("generation.prompt", "must not be blank")
        model_name = spec.model or self.default_model
        model = await self.catalog.get(model_name)
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
        self,
        user_id: uuid.UUID,
        spec: GenerationSpec,
        request_id: str = "",
        *,
        webhook: WebhookRequest | None = None,
        api_key_id: uuid.UUID | None = None,
    ) -> GenerationRecord:
        """Validate, then in one transaction insert the QUEUED job and hold its credits; then
        enqueue. A repeated `request_id` with the same parameters returns the first job.

        A webhook needs an API key (`api_key_id`, the caller's), whose secret signs it; a key's
        default webhook applies when the call names none."""
        resolved, _model = await self.resolve(spec)
        resolved_webhook = await self.resolve_webhook(user_id, webhook, api_key_id)
        hold = self.pricing.hold_for(steps=resolved.steps, width=resolved.width, height=resolved.height)
        if request_id:
            existing = await self._same_request(user_id, request_id, resolved)
            if existing is not None:
                return existing
        generation_id = uuid.uuid4()
        seed = resolved.seed if resolved.seed is not None else secrets.randbelow(MAX_SEED + 1)
        try:
            async with self.database.tenant(user_id) as conn:
                plan = await self.repository.user_plan_for_admission(conn, user_id)
                if plan is None:
                    raise NotFound("the signed-in user no longer exists")
                await self._admit(plan)
                await self._admit_user(conn, user_id, plan)
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
                    webhook_url=resolved_webhook.url if resolved_webhook else None,
                    webhook_events=[str(event) for event in resolved_webhook.events]
                    if resolved_webhook
                    else None,
                    api_key_id=api_key_id,
                )
                await self.ledger.hold(conn, user_id, generation_reference(generation_id), hold)
        except IntegrityError:
            # A concurrent request with the same idempotency key won the insert.
            if request_id:
                existing = await self._same_request(user_id, request_id, resolved)
                if existing is not None:
                    return existing
            raise
        await self.delivery.enqueue(record)
        return record

    async def resolve_webhook(
        self, user_id: uuid.UUID, webhook: WebhookRequest | None, api_key_id: uuid.UUID | None
    ) -> ResolvedWebhook | None:
        """The webhook asked for, else the key's default; None when neither. Field paths match
        the API."""
        violations = Violations()
        if webhook is not None:
            if api_key_id is None:
                violations.add(
                    "webhook.url",
                    "needs a call authenticated with an API key, whose webhook signing secret signs "
                    "the deliveries",
                )
            self.webhook_rules.check(webhook.url, "webhook.url", violations)
            violations.raise_if_any()
        if api_key_id is None:
            return None
        async with self.database.tenant(user_id) as conn:
            key = await self.webhook_outbox.key_webhook(conn, api_key_id)
        if webhook is None:
            if key is None or key.default_url is None or not key.can_sign:
                return None
            return ResolvedWebhook(key.default_url, parse_events(()))
        if key is None or not key.can_sign:
            violations.add(
                "webhook.url",
                "this API key predates webhooks and has no signing secret; create a new key to use them",
            )
            violations.raise_if_any()
        return ResolvedWebhook(webhook.url, parse_events(webhook.events))

    async def _admit(self, tier: str) -> None:
        """Backpressure: a full band refuses new work before anything is held or queued."""
        limit = self.max_queue_depth.get(tier)
        if limit is not None and await self.queue.depth(tier) >= limit:
            raise QueueFull(
                f"the {tier} queue is full ({limit} waiting); try again shortly",
                metadata={"tier": tier, "max_queue_depth": str(limit)},
            )

    async def _admit_user(self, conn: AsyncConnection, user_id: uuid.UUID, plan: str) -> None:
        """A user's own cap, so a few accounts cannot fill their band for everyone. It runs in the
        transaction that would take the hold, before it: a refusal rolls back with nothing held."""
        cap = self.max_live_per_user.get(plan)
        if cap is not None and await self.repository.count_live(conn, user_id, at_most=cap) >= cap:
            raise TooManyGenerations(
                f"you have {cap} generations queued or running, the most your plan allows; "
                "retry when one finishes",
                metadata={"plan": plan, "max_live_generations": str(cap)},
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

    async def cancel(self, user_id: uuid.UUID, generation_id: uuid.UUID) -> GenerationRecord:
        """A queued job is cancelled at once and its hold released; a running one is flagged for
        its worker, which owns the rest; a finished one is returned as it is."""
        async with self.database.tenant(user_id) as conn:
            cancelled = await self.repository.cancel_queued(conn, user_id, generation_id)
            if cancelled is not None:
                await self.ledger.release(conn, user_id, generation_reference(generation_id))
                await self.webhooks.record(conn, cancelled, WebhookEvent.COMPLETED)
            else:
                running = await self.repository.request_cancel(conn, user_id, generation_id)
        if cancelled is not None:
            await self.queue.remove(cancelled.tier, user_id, generation_id)
            await self.events.append(
                generation_id,
                new_event(generation_id, cancelled=resources.GenerationCancelled(was_running=False)),
            )
            jobs_by_outcome.add(1, {"outcome": GenerationState.CANCELLED.lower()})
            return cancelled
        if running is not None:
            # The worker checks this flag between denoising steps.
            await self.queue.request_cancel(generation_id)
            return running
        async with self.database.tenant(user_id) as conn:
            record = await self.repository.get(conn, user_id, generation_id)
        if record is None:
            raise NotFound(f"generation {generation_id} not found")
        return record
