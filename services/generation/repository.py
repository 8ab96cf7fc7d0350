"""SQL for the generations table. Every statement runs on a tenant transaction handed in, and
every state change is a named, conditional UPDATE fenced by state (and attempt, for workers):
the domain says which move it wants, and only this module knows how to write it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.pagination import Position, newest_first
from services.common.schema import generations, images, users
from services.common.storage import ImageKeys
from services.generation.failures import Failure, FailureCode
from services.generation.lifecycle import LIVE_STATES, TERMINAL_STATES, GenerationState
from services.generation.modes import GenerationMode, LoraWeight, lora_set_key, steps_run


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    id: uuid.UUID
    user_id: uuid.UUID
    state: GenerationState
    tier: str
    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    seed: int
    guidance: float
    request_id: str | None
    attempt: int
    failures: int
    worker_id: str | None
    credits_held: int
    credits_charged: int
    gpu_seconds: float
    image_key: str | None
    failure_code: str | None
    incident_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Where its events go (services.webhooks), fixed at acceptance; None: nowhere.
    webhook_url: str | None
    webhook_events: tuple[str, ...] | None
    api_key_id: uuid.UUID | None
    # Beyond text-to-image (migration 0014): the sampler used, the img2img strength (None for
    # text-to-image), the input images as named and the objects the worker reads, the LoRAs.
    sampler: str
    strength: float | None
    init_image_id: str | None
    init_image_key: str | None
    mask_image_id: str | None
    mask_image_key: str | None
    loras: tuple[LoraWeight, ...]
    mode: GenerationMode

    @property
    def run_label(self) -> str:
        """This attempt at the job, as logs name it."""
        return f"generation {self.id} attempt {self.attempt}"

    @property
    def failure(self) -> Failure | None:
        """Why it failed, once FAILED."""
        if self.state != GenerationState.FAILED:
            return None
        return Failure(FailureCode(self.failure_code or FailureCode.UNKNOWN), self.incident_id or "")

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def image_keys(self) -> ImageKeys:
        """Where this job's image and thumbnail are stored once it succeeds (the seed's layout):
        the worker stores them there, and every URL of them is signed for these keys."""
        return ImageKeys.of(self.user_id, self.id, self.created_at)

    @property
    def batch_key(self) -> str:
        """The run settings one pipeline call shares across a batch; prompts, seeds and input
        images may differ. The sampler, the mode (with its strength, which sets the steps run)
        and the LoRA set are the pipeline's own configuration, so they split batches."""
        strength = "" if self.strength is None else f"{self.strength:g}"
        return (
            f"{self.model}|{self.width}x{self.height}|{self.steps}|{self.guidance:g}"
            f"|{self.sampler}|{self.mode}{strength and '@' + strength}|{lora_set_key(self.loras)}"
        )

    @property
    def steps_run(self) -> int:
        """The denoising steps the run takes: img2img and inpainting skip the first
        (1 - strength) of the schedule."""
        return steps_run(self.steps, self.strength)

    @classmethod
    def from_row(cls, row: Any) -> GenerationRecord:
        values = {column: getattr(row, column) for column in cls.__dataclass_fields__}
        events = values["webhook_events"]
        return cls(
            **{
                **values,
                "state": GenerationState(values["state"]),
                "webhook_events": None if events is None else tuple(events),
                "loras": tuple(LoraWeight.from_json(lora) for lora in values["loras"]),
                "mode": GenerationMode(values["mode"]),
            }
        )


@dataclass(frozen=True)
class StoredInput:
    """An object of the images bucket a generation may start from, with what its row says."""

    key: str
    size_bytes: int
    width: int
    height: int


def live_count_query(user_id: uuid.UUID, *, at_most: int) -> sa.Select[Any]:
    live = (
        sa.select(sa.literal(1))
        .where(generations.c.user_id == user_id, generations.c.state.in_(sorted(LIVE_STATES)))
        .limit(at_most)
        .subquery()
    )
    return sa.select(sa.func.count()).select_from(live)


# Built once: composing an INSERT of every column per call cost 0.9 ms of CPU here, and the
# values, all plain, go as its parameters.
_INSERT_GENERATION = sa.insert(generations).returning(generations)


class GenerationRepository:
    async def user_plan_for_admission(self, conn: AsyncConnection, user_id: uuid.UUID) -> str | None:
        """The user's plan, its row locked until the transaction ends, so that one user's
        concurrent creates are admitted one at a time and each counts the others' jobs. FOR NO KEY
        UPDATE: foreign-key checks of other transactions (ledger entries) are not blocked."""
        query = sa.select(users.c.plan).where(users.c.id == user_id).with_for_update(key_share=True)
        return (await conn.execute(query)).scalar_one_or_none()

    async def count_live(self, conn: AsyncConnection, user_id: uuid.UUID, *, at_most: int) -> int:
        """The user's queued and running generations, counted up to `at_most` (enough to compare
        with a cap), through the partial index `generations_live_by_user` (migration 0008)."""
        return int((await conn.execute(live_count_query(user_id, at_most=at_most))).scalar_one())

    async def insert(self, conn: AsyncConnection, **values: Any) -> GenerationRecord:
        """`values` are plain values, sent as the statement's parameters."""
        row = (await conn.execute(_INSERT_GENERATION, values)).one()
        return GenerationRecord.from_row(row)

    async def get(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_id: uuid.UUID
    ) -> GenerationRecord | None:
        return await self._one(conn, generations.c.id == generation_id, generations.c.user_id == user_id)

    async def finished_among(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_ids: list[uuid.UUID]
    ) -> list[GenerationRecord]:
        """Those of the user's generations that have reached a terminal state, in one query."""
        rows = await conn.execute(
            sa.select(generations).where(
                generations.c.user_id == user_id,
                generations.c.id.in_(generation_ids),
                generations.c.state.in_(TERMINAL_STATES),
            )
        )
        return [GenerationRecord.from_row(row) for row in rows]

    async def get_by_request_id(
        self, conn: AsyncConnection, user_id: uuid.UUID, request_id: str
    ) -> GenerationRecord | None:
        return await self._one(conn, generations.c.user_id == user_id, generations.c.request_id == request_id)

    async def image_object(
        self, conn: AsyncConnection, user_id: uuid.UUID, image_id: uuid.UUID
    ) -> StoredInput | None:
        """The PNG of one of the user's gallery images, as an input of a new generation."""
        row = (
            await conn.execute(
                sa.select(images.c.object_key, images.c.size_bytes, images.c.width, images.c.height).where(
                    images.c.id == image_id, images.c.user_id == user_id
                )
            )
        ).one_or_none()
        return None if row is None else StoredInput(row.object_key, row.size_bytes, row.width, row.height)

    async def made_image(
        self, conn: AsyncConnection, user_id: uuid.UUID, image_id: uuid.UUID
    ) -> GenerationRecord | None:
        """The generation that made one of the user's gallery images (an image's id is its
        generation's), for "use again"; None once the image is deleted."""
        row = (
            await conn.execute(
                sa.select(generations)
                .join(images, images.c.id == generations.c.id)
                .where(images.c.id == image_id, images.c.user_id == user_id)
            )
        ).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    @staticmethod
    async def _one(conn: AsyncConnection, *where: sa.ColumnElement[bool]) -> GenerationRecord | None:
        row = (await conn.execute(sa.select(generations).where(*where))).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    async def page(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: Position | None,
    ) -> list[GenerationRecord]:
        query = sa.select(generations).where(generations.c.user_id == user_id)
        query = newest_first(query, generations, after=after, limit=limit)
        return [GenerationRecord.from_row(row) for row in (await conn.execute(query)).all()]

    # --- state changes: each a conditional UPDATE through `_transition` ----------------------

    async def cancel_queued(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_id: uuid.UUID
    ) -> GenerationRecord | None:
        """QUEUED -> CANCELLED, before any worker started it."""
        return await self._transition(
            conn,
            user_id,
            generation_id,
            from_state=GenerationState.QUEUED,
            state=GenerationState.CANCELLED,
            finished_at=sa.func.now(),
        )

    async def request_cancel(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_id: uuid.UUID
    ) -> GenerationRecord | None:
        """Flag a RUNNING generation for its worker to cancel between steps."""
        return await self._transition(
            conn, user_id, generation_id, from_state=GenerationState.RUNNING, cancel_requested=True
        )

    async def mark_running(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_id: uuid.UUID, worker_id: str
    ) -> GenerationRecord | None:
        """QUEUED -> RUNNING under the next attempt number, the fencing token of this run."""
        return await self._transition(
            conn,
            user_id,
            generation_id,
            from_state=GenerationState.QUEUED,
            state=GenerationState.RUNNING,
            attempt=generations.c.attempt + 1,
            worker_id=worker_id,
            started_at=sa.func.now(),
        )

    async def finish_succeeded(
        self,
        conn: AsyncConnection,
        record: GenerationRecord,
        *,
        image_key: str,
        seed: int,
        gpu_seconds: float,
        credits_charged: int,
    ) -> GenerationRecord | None:
        """RUNNING -> SUCCEEDED for the attempt `record` holds."""
        return await self._end_attempt(
            conn,
            record,
            state=GenerationState.SUCCEEDED,
            image_key=image_key,
            seed=seed,
            gpu_seconds=gpu_seconds,
            credits_charged=credits_charged,
            finished_at=sa.func.now(),
        )

    async def finish_failed(
        self, conn: AsyncConnection, record: GenerationRecord, failure: Failure
    ) -> GenerationRecord | None:
        """RUNNING -> FAILED for the attempt `record` holds, keeping the code and incident id."""
        return await self._end_attempt(
            conn,
            record,
            state=GenerationState.FAILED,
            failure_code=failure.code,
            incident_id=failure.incident_id,
            finished_at=sa.func.now(),
        )

    async def finish_cancelled(
        self, conn: AsyncConnection, record: GenerationRecord
    ) -> GenerationRecord | None:
        """RUNNING -> CANCELLED for the attempt `record` holds."""
        return await self._end_attempt(
            conn, record, state=GenerationState.CANCELLED, finished_at=sa.func.now()
        )

    async def back_to_queue(
        self, conn: AsyncConnection, record: GenerationRecord, *, failures: int
    ) -> GenerationRecord | None:
        """RUNNING -> QUEUED for the attempt `record` holds, counting `failures` so far."""
        return await self._end_attempt(
            conn, record, state=GenerationState.QUEUED, failures=failures, worker_id=None, started_at=None
        )

    async def _end_attempt(
        self, conn: AsyncConnection, record: GenerationRecord, **values: Any
    ) -> GenerationRecord | None:
        """End the running attempt `record` holds: its fencing token is its attempt number, so a
        worker that lost the job to a newer attempt changes nothing (None)."""
        return await self._transition(
            conn,
            record.user_id,
            record.id,
            from_state=GenerationState.RUNNING,
            fence_attempt=record.attempt,
            **values,
        )

    async def _transition(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        generation_id: uuid.UUID,
        *,
        from_state: GenerationState,
        fence_attempt: int | None = None,
        **values: Any,
    ) -> GenerationRecord | None:
        """The fencing rule, in one place: move a generation on only if it is still in
        `from_state` (and on `fence_attempt`, the attempt the caller holds).

        None means another actor got there first: a cancel, a completion, or a newer attempt.
        `values` may set `attempt` itself.
        """
        conditions = [
            generations.c.id == generation_id,
            generations.c.user_id == user_id,
            generations.c.state == from_state,
        ]
        if fence_attempt is not None:
            conditions.append(generations.c.attempt == fence_attempt)
        row = (
            await conn.execute(
                sa.update(generations).where(*conditions).values(**values).returning(generations)
            )
        ).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    async def live_older_than(
        self, conn: AsyncConnection, seconds: float, limit: int
    ) -> list[GenerationRecord]:
        """Queued or running generations for the reconciler (a system transaction)."""
        query = (
            sa.select(generations)
            .where(
                generations.c.state.in_(sorted(LIVE_STATES)),
                generations.c.created_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds),
            )
            .order_by(generations.c.created_at)
            .limit(limit)
        )
        return [GenerationRecord.from_row(row) for row in (await conn.execute(query)).all()]
