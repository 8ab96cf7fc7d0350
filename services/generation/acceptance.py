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
from typing import TypeVar

from pingvas.generation.v1 import generation_resources_pb2 as resources
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.ledger import CreditLedger, generation_reference
from services.billing.pricing import Pricing
from services.common.database import Database
from services.common.errors import (
    FieldViolation,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidInput,
    NotFound,
    QueueFull,
    TooManyGenerations,
    Violations,
)
from services.generation.catalog import ModelCatalog, ModelInfo, ModelKind
from services.generation.delivery import Delivery
from services.generation.events import EventLog, new_event
from services.generation.inputs import InputImage, InputImages
from services.generation.lifecycle import GenerationState
from services.generation.modes import GenerationMode, LoraWeight, steps_run
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord, GenerationRepository
from services.generation.runs import jobs_by_outcome
from services.generation.samplers import DEFAULT_SAMPLER, Sampler
from services.generation.webhooks import GenerationWebhooks
from services.webhooks.endpoints import WebhookEvent, WebhookUrlRules, parse_events
from services.webhooks.outbox import WebhookOutbox

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
# InvokeAI's and Automatic1111's default denoising strength for image-to-image.
DEFAULT_STRENGTH = 0.75
MAX_SEED = 2**32 - 1
MAX_LORAS = 5
MAX_BATCH = 4

_V = TypeVar("_V")


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
    sampler: str = ""
    strength: float | None = None
    init_image_id: str = ""
    mask_image_id: str = ""
    loras: tuple[LoraWeight, ...] = ()

    def over(self, recorded: GenerationRecord) -> GenerationSpec:
        """This spec with what it leaves unset taken from `recorded` ("use again"): strings
        when empty, optional numbers when None, the LoRAs when it names none."""

        def pick(mine: _V | None, theirs: _V) -> _V:
            return theirs if mine is None or mine == "" or mine == () else mine

        return GenerationSpec(
            prompt=pick(self.prompt, recorded.prompt),
            negative_prompt=pick(self.negative_prompt, recorded.negative_prompt),
            model=pick(self.model, recorded.model),
            width=pick(self.width, recorded.width),
            height=pick(self.height, recorded.height),
            steps=pick(self.steps, recorded.steps),
            seed=pick(self.seed, recorded.seed),
            guidance=pick(self.guidance, recorded.guidance),
            sampler=pick(self.sampler, recorded.sampler),
            strength=pick(self.strength, recorded.strength),
            init_image_id=pick(self.init_image_id, recorded.init_image_id or ""),
            mask_image_id=pick(self.mask_image_id, recorded.mask_image_id or ""),
            loras=pick(self.loras, recorded.loras),
        )


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
    sampler: Sampler
    strength: float | None  # None for text-to-image
    init_image: InputImage | None
    mask_image: InputImage | None
    loras: tuple[LoraWeight, ...]

    @property
    def mode(self) -> GenerationMode:
        return GenerationMode.of(has_init=self.init_image is not None, has_mask=self.mask_image is not None)

    @property
    def steps_run(self) -> int:
        return steps_run(self.steps, self.strength)


@dataclass(frozen=True)
class BatchItem:
    """One generation of a batch: what it asks for and where its events go."""

    spec: GenerationSpec
    webhook: WebhookRequest | None = None
    from_image_id: str = ""
    request_id: str = ""  # refused: a batch is retried whole, each item created afresh


@dataclass(frozen=True)
class _Accepted:
    """A generation ready to insert: resolved, seeded, priced."""

    id: uuid.UUID
    resolved: ResolvedSpec
    seed: int
    hold: int
    webhook: ResolvedWebhook | None


class Acceptance:
    def __init__(
        self,
        *,
        database: Database,
        repository: GenerationRepository,
        ledger: CreditLedger,
        pricing: Pricing,
        catalog: ModelCatalog,
        inputs: InputImages,
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
        self.inputs = inputs
        self.default_model = default_model
        self.queue = queue
        self.events = events
        self.delivery = delivery
        self.max_queue_depth = dict(max_queue_depth or {})
        self.max_live_per_user = dict(max_live_per_user or {})
        self.webhook_rules = webhook_rules
        self.webhook_outbox = WebhookOutbox()
        self.webhooks = GenerationWebhooks(self.webhook_outbox)

    async def resolve(
        self, user_id: uuid.UUID, spec: GenerationSpec, *, path: str = "generation"
    ) -> tuple[ResolvedSpec, ModelInfo]:
        """Apply defaults and the rules that depend on the model, the caller's input images and
        the catalog's LoRAs; field paths match the API (`path` names the generation in the
        request)."""
        violations = Violations()
        if not spec.prompt.strip():
            violations.add(f"{path}.prompt", "must not be blank")
        model_name = spec.model or self.default_model
        model = await self.catalog.get(model_name)
        if model is None or model.kind != ModelKind.PIPELINE:
            known = ", ".join(await self._pipeline_names()) or "none installed"
            violations.add(f"{path}.model", f"unknown model {model_name!r} (available: {known})")
            violations.raise_if_any()
            raise AssertionError("unreachable")
        init_image = mask_image = None
        if spec.init_image_id:
            init_image = await self.inputs.find(
                user_id, spec.init_image_id, f"{path}.init_image_id", violations
            )
        if spec.mask_image_id:
            if not spec.init_image_id:
                violations.add(f"{path}.mask_image_id", "needs an init_image_id, the image it masks")
            else:
                mask_image = await self.inputs.find(
                    user_id, spec.mask_image_id, f"{path}.mask_image_id", violations
                )
        if (
            init_image is not None
            and mask_image is not None
            and ((mask_image.width, mask_image.height) != (init_image.width, init_image.height))
        ):
            violations.add(
                f"{path}.mask_image_id",
                f"is {mask_image.width}x{mask_image.height}, but the init image is "
                f"{init_image.width}x{init_image.height}; a mask must be its init image's size",
            )
        # Unset sizes follow the init image, so image-to-image keeps its input's shape.
        native_width, native_height = (
            (init_image.width, init_image.height) if init_image else (model.native_size, model.native_size)
        )
        width = spec.width if spec.width is not None else native_width
        height = spec.height if spec.height is not None else native_height
        for name, value in (("width", width), ("height", height)):
            if value % 8:
                violations.add(f"{path}.{name}", "must be a multiple of 8")
            elif not model.min_size <= value <= model.max_size:
                violations.add(
                    f"{path}.{name}",
                    f"must be between {model.min_size} and {model.max_size} for model {model.name}",
                )
        steps = spec.steps if spec.steps is not None else DEFAULT_STEPS
        if not 1 <= steps <= 150:
            violations.add(f"{path}.steps", "must be between 1 and 150")
        if spec.seed is not None and not 0 <= spec.seed <= MAX_SEED:
            violations.add(f"{path}.seed", f"must be between 0 and {MAX_SEED}")
        sampler = self._sampler(spec.sampler, model, f"{path}.sampler", violations)
        strength: float | None = None
        if spec.strength is not None and not spec.init_image_id:
            violations.add(f"{path}.strength", "applies to an init image only; set init_image_id")
        elif spec.strength is not None and not 0 <= spec.strength <= 1:
            violations.add(f"{path}.strength", "must be between 0 and 1")
        elif spec.init_image_id:
            strength = spec.strength if spec.strength is not None else DEFAULT_STRENGTH
        if model.inpainting_only and not spec.mask_image_id:
            violations.add(
                f"{path}.model",
                f"{model.name} is an inpainting model: it needs an init_image_id and a mask_image_id",
            )
        await self._check_loras(spec.loras, model, f"{path}.loras", violations)
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
            sampler=sampler or DEFAULT_SAMPLER,
            strength=strength,
            init_image=init_image,
            mask_image=mask_image,
            loras=spec.loras,
        )
        return resolved, model

    @staticmethod
    def _sampler(name: str, model: ModelInfo, field: str, violations: Violations) -> Sampler | None:
        """The sampler named, or the model's default (its first) when none is."""
        if not name:
            return model.samplers[0] if model.samplers else DEFAULT_SAMPLER
        try:
            sampler = Sampler(name)
        except ValueError:
            violations.add(field, f"unknown sampler {name!r} (known: {', '.join(Sampler)})")
            return None
        if sampler not in model.samplers:
            violations.add(
                field,
                f"{name} is not available for model {model.name} (it allows {', '.join(model.samplers)})",
            )
            return None
        return sampler

    async def _check_loras(
        self, loras: tuple[LoraWeight, ...], model: ModelInfo, field: str, violations: Violations
    ) -> None:
        if len(loras) > MAX_LORAS:
            violations.add(field, f"must name at most {MAX_LORAS} LoRAs")
            return
        seen: set[str] = set()
        for index, lora in enumerate(loras):
            item = f"{field}[{index}].name"
            if lora.name in seen:
                violations.add(item, f"names LoRA {lora.name!r} a second time")
                continue
            seen.add(lora.name)
            info = await self.catalog.get(lora.name)
            if info is None or info.kind != ModelKind.LORA:
                violations.add(item, f"unknown LoRA {lora.name!r}")
            elif info.family != model.family:
                violations.add(
                    item,
                    f"LoRA {lora.name} is for {info.family} models, and model {model.name} is {model.family}",
                )

    async def _pipeline_names(self) -> list[str]:
        names = []
        for name in self.catalog.names():
            info = await self.catalog.get(name)
            if info is not None and info.kind == ModelKind.PIPELINE:
                names.append(name)
        return names

    async def recall(
        self, user_id: uuid.UUID, image_id: str, spec: GenerationSpec, *, field: str
    ) -> GenerationSpec:
        """ "Use again": `spec` over the parameters recorded for one of the caller's gallery
        images."""
        try:
            parsed = uuid.UUID(image_id)
        except ValueError:
            raise InvalidInput(
                [FieldViolation(field, "must be the id of one of your gallery images")]
            ) from None
        async with self.database.tenant(user_id) as conn:
            recorded = await self.repository.made_image(conn, user_id, parsed)
        if recorded is None:
            raise NotFound(f"{field}: you have no image {image_id}")
        return spec.over(recorded)

    async def create(
        self,
        user_id: uuid.UUID,
        spec: GenerationSpec,
        request_id: str = "",
        *,
        webhook: WebhookRequest | None = None,
        api_key_id: uuid.UUID | None = None,
        from_image_id: str = "",
    ) -> GenerationRecord:
        """Validate, then in one transaction insert the QUEUED job and hold its credits; then
        enqueue. A repeated `request_id` with the same parameters returns the first job.

        A webhook needs an API key (`api_key_id`, the caller's), whose secret signs it; a key's
        default webhook applies when the call names none. `from_image_id` takes what `spec`
        leaves unset from one of the caller's gallery images."""
        if from_image_id:
            spec = await self.recall(user_id, from_image_id, spec, field="from_image_id")
        resolved, _model = await self.resolve(user_id, spec)
        resolved_webhook = await self.resolve_webhook(user_id, webhook, api_key_id)
        if request_id:
            existing = await self._same_request(user_id, request_id, resolved)
            if existing is not None:
                return existing
        accepted = self._accepted(resolved, resolved.seed, resolved_webhook)
        await self._keep_inputs(resolved)
        try:
            (record,) = await self._insert(user_id, [accepted], request_id=request_id, api_key_id=api_key_id)
        except IntegrityError:
            # A concurrent request with the same idempotency key won the insert.
            if request_id:
                existing = await self._same_request(user_id, request_id, resolved)
                if existing is not None:
                    return existing
            raise
        await self.delivery.enqueue(record)
        return record

    async def create_batch(
        self,
        user_id: uuid.UUID,
        items: list[BatchItem],
        *,
        parent: str = "",
        api_key_id: uuid.UUID | None = None,
    ) -> list[GenerationRecord]:
        """Accept 1 to 4 generations, all or none: every item is validated first, then one
        transaction inserts them all and takes one hold each, so a refusal (of any item, or
        credits that cover fewer than all) leaves nothing held. An item without a seed gets the
        first item's seed (the server's choice when it has none) plus its index."""
        if parent and parent != f"users/{user_id}":
            raise NotFound(f"parent {parent!r} is not you; a batch is created for the caller")
        if not 1 <= len(items) <= MAX_BATCH:
            raise InvalidInput([FieldViolation("requests", f"must hold 1 to {MAX_BATCH} generations")])
        resolved_items: list[tuple[ResolvedSpec, ResolvedWebhook | None]] = []
        violations = Violations()
        for index, item in enumerate(items):
            path = f"requests[{index}]"
            spec = item.spec
            if item.request_id:
                violations.add(f"{path}.request_id", "must be empty in a batch")
            try:
                if item.from_image_id:
                    spec = await self.recall(user_id, item.from_image_id, spec, field=f"{path}.from_image_id")
                resolved, _model = await self.resolve(user_id, spec, path=f"{path}.generation")
            except InvalidInput as invalid:
                violations.items.extend(invalid.violations)
                continue
            webhook = await self.resolve_webhook(
                user_id, item.webhook, api_key_id, field=f"{path}.webhook.url"
            )
            resolved_items.append((resolved, webhook))
        violations.raise_if_any()
        first_seed = resolved_items[0][0].seed
        base_seed = first_seed if first_seed is not None else secrets.randbelow(MAX_SEED + 1)
        accepted = [
            self._accepted(
                resolved,
                resolved.seed if resolved.seed is not None else (base_seed + index) % (MAX_SEED + 1),
                webhook,
            )
            for index, (resolved, webhook) in enumerate(resolved_items)
        ]
        for resolved, _webhook in resolved_items:
            await self._keep_inputs(resolved)
        records = await self._insert(user_id, accepted, request_id="", api_key_id=api_key_id)
        for record in records:
            await self.delivery.enqueue(record)
        return records

    def _accepted(
        self, resolved: ResolvedSpec, seed: int | None, webhook: ResolvedWebhook | None
    ) -> _Accepted:
        # img2img and inpainting run only the last strength x steps of the schedule: the hold
        # covers the steps actually run.
        hold = self.pricing.hold_for(steps=resolved.steps_run, width=resolved.width, height=resolved.height)
        return _Accepted(
            id=uuid.uuid4(),
            resolved=resolved,
            seed=seed if seed is not None else secrets.randbelow(MAX_SEED + 1),
            hold=hold,
            webhook=webhook,
        )

    async def _keep_inputs(self, resolved: ResolvedSpec) -> None:
        for image in (resolved.init_image, resolved.mask_image):
            if image is not None:
                await self.inputs.keep(image)

    async def _insert(
        self,
        user_id: uuid.UUID,
        batch: list[_Accepted],
        *,
        request_id: str,
        api_key_id: uuid.UUID | None,
    ) -> list[GenerationRecord]:
        """In one transaction: admit the batch, insert each QUEUED job and hold its credits."""
        records = []
        async with self.database.tenant(user_id) as conn:
            plan = await self.repository.user_plan_for_admission(conn, user_id)
            if plan is None:
                raise NotFound("the signed-in user no longer exists")
            await self._admit(plan)
            await self._admit_user(conn, user_id, plan, adding=len(batch))
            held = 0
            for accepted in batch:
                resolved, webhook = accepted.resolved, accepted.webhook
                records.append(
                    await self.repository.insert(
                        conn,
                        id=accepted.id,
                        user_id=user_id,
                        state=GenerationState.QUEUED,
                        tier=plan,
                        prompt=resolved.prompt,
                        negative_prompt=resolved.negative_prompt,
                        model=resolved.model,
                        width=resolved.width,
                        height=resolved.height,
                        steps=resolved.steps,
                        seed=accepted.seed,
                        guidance=resolved.guidance,
                        sampler=str(resolved.sampler),
                        strength=resolved.strength,
                        init_image_id=resolved.init_image.id if resolved.init_image else None,
                        init_image_key=resolved.init_image.key if resolved.init_image else None,
                        mask_image_id=resolved.mask_image.id if resolved.mask_image else None,
                        mask_image_key=resolved.mask_image.key if resolved.mask_image else None,
                        loras=[lora.as_json() for lora in resolved.loras],
                        mode=str(resolved.mode),
                        request_id=request_id or None,
                        attempt=0,
                        credits_held=accepted.hold,
                        credits_charged=0,
                        gpu_seconds=0.0,
                        cancel_requested=False,
                        webhook_url=webhook.url if webhook else None,
                        webhook_events=[str(event) for event in webhook.events] if webhook else None,
                        api_key_id=api_key_id,
                    )
                )
                try:
                    await self.ledger.hold(conn, user_id, generation_reference(accepted.id), accepted.hold)
                except InsufficientCredits as short:
                    if len(batch) == 1:
                        raise
                    # The transaction rolls back every hold of the batch; say what all of it needs.
                    raise InsufficientCredits(
                        needed=sum(item.hold for item in batch), available=short.available + held
                    ) from None
                held += accepted.hold
        return records

    async def resolve_webhook(
        self,
        user_id: uuid.UUID,
        webhook: WebhookRequest | None,
        api_key_id: uuid.UUID | None,
        *,
        field: str = "webhook.url",
    ) -> ResolvedWebhook | None:
        """The webhook asked for, else the key's default; None when neither. Violations name
        `field`, the webhook's URL in the request."""
        violations = Violations()
        if webhook is not None:
            if api_key_id is None:
                violations.add(
                    field,
                    "needs a call authenticated with an API key, whose webhook signing secret signs "
                    "the deliveries",
                )
            self.webhook_rules.check(webhook.url, field, violations)
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
                field,
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

    async def _admit_user(
        self, conn: AsyncConnection, user_id: uuid.UUID, plan: str, *, adding: int = 1
    ) -> None:
        """A user's own cap, so a few accounts cannot fill their band for everyone. It runs in the
        transaction that would take the hold, before it: a refusal rolls back with nothing held."""
        cap = self.max_live_per_user.get(plan)
        if cap is not None and await self.repository.count_live(conn, user_id, at_most=cap) + adding > cap:
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
            and existing.sampler == resolved.sampler
            and existing.strength == resolved.strength
            and existing.init_image_id == (resolved.init_image.id if resolved.init_image else None)
            and existing.mask_image_id == (resolved.mask_image.id if resolved.mask_image else None)
            and existing.loras == resolved.loras
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
