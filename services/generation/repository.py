"""SQL for the generations table. Every statement runs on a tenant transaction handed in, and
every state change is a conditional UPDATE fenced by state (and attempt, for workers)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.schema import LIVE_STATES, generations, users
from services.generation.failures import Failure, FailureCode

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class GenerationRecord:
    id: uuid.UUID
    user_id: uuid.UUID
    state: str
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

    @property
    def run_label(self) -> str:
        """This attempt at the job, as logs name it."""
        return f"generation {self.id} attempt {self.attempt}"

    @property
    def failure(self) -> Failure | None:
        """Why it failed, once FAILED."""
        if self.state != "FAILED":
            return None
        return Failure(FailureCode(self.failure_code or FailureCode.UNKNOWN), self.incident_id or "")

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def batch_key(self) -> str:
        """The run settings one pipeline call shares across a batch; prompts and seeds may differ."""
        return f"{self.model}|{self.width}x{self.height}|{self.steps}|{self.guidance:g}"

    @classmethod
    def from_row(cls, row: Any) -> GenerationRecord:
        return cls(**{column: getattr(row, column) for column in cls.__dataclass_fields__})


class GenerationRepository:
    async def user_plan(self, conn: AsyncConnection, user_id: uuid.UUID) -> str | None:
        return (await conn.execute(sa.select(users.c.plan).where(users.c.id == user_id))).scalar_one_or_none()

    async def insert(self, conn: AsyncConnection, **values: Any) -> GenerationRecord:
        row = (await conn.execute(sa.insert(generations).values(**values).returning(generations))).one()
        return GenerationRecord.from_row(row)

    async def get(
        self, conn: AsyncConnection, user_id: uuid.UUID, generation_id: uuid.UUID
    ) -> GenerationRecord | None:
        row = (
            await conn.execute(
                sa.select(generations).where(
                    generations.c.id == generation_id, generations.c.user_id == user_id
                )
            )
        ).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    async def get_by_request_id(
        self, conn: AsyncConnection, user_id: uuid.UUID, request_id: str
    ) -> GenerationRecord | None:
        row = (
            await conn.execute(
                sa.select(generations).where(
                    generations.c.user_id == user_id, generations.c.request_id == request_id
                )
            )
        ).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    async def page(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> list[GenerationRecord]:
        query = sa.select(generations).where(generations.c.user_id == user_id)
        if after is not None:
            query = query.where(sa.tuple_(generations.c.created_at, generations.c.id) < sa.tuple_(*after))
        query = query.order_by(generations.c.created_at.desc(), generations.c.id.desc()).limit(limit)
        return [GenerationRecord.from_row(row) for row in (await conn.execute(query)).all()]

    async def transition(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        generation_id: uuid.UUID,
        *,
        from_states: tuple[str, ...],
        fence_attempt: int | None = None,
        **values: Any,
    ) -> GenerationRecord | None:
        """Move a generation on only if it is still in `from_states` (and on `attempt`).

        None means another actor got there first: a cancel, a completion, or a newer attempt.
        `values` may set `attempt` itself; `fence_attempt` is the attempt the caller holds.
        """
        conditions = [
            generations.c.id == generation_id,
            generations.c.user_id == user_id,
            generations.c.state.in_(from_states),
        ]
        if fence_attempt is not None:
            conditions.append(generations.c.attempt == fence_attempt)
        row = (
            await conn.execute(
                sa.update(generations).where(*conditions).values(**values).returning(generations)
            )
        ).one_or_none()
        return None if row is None else GenerationRecord.from_row(row)

    async def transition_running(
        self, conn: AsyncConnection, record: GenerationRecord, **values: Any
    ) -> GenerationRecord | None:
        """End the running attempt `record` holds: its fencing token is its attempt number, so a
        worker that lost the job to a newer attempt changes nothing (None)."""
        return await self.transition(
            conn, record.user_id, record.id, from_states=("RUNNING",), fence_attempt=record.attempt, **values
        )

    async def live_older_than(
        self, conn: AsyncConnection, seconds: float, limit: int
    ) -> list[GenerationRecord]:
        """Queued or running generations for the reconciler (a system transaction)."""
        query = (
            sa.select(generations)
            .where(
                generations.c.state.in_(LIVE_STATES),
                generations.c.created_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds),
            )
            .order_by(generations.c.created_at)
            .limit(limit)
        )
        return [GenerationRecord.from_row(row) for row in (await conn.execute(query)).all()]
