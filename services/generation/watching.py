"""Watching one generation: replay its event log, follow it live, and end on its terminal event,
which PostgreSQL supplies when Redis lost it. See WatchGeneration in the contract for the order
and resume semantics this keeps.

A watch reads through `EventSource`; today that is each generation's `EventLog` stream, read by
every watch on its own. A per-process hub that fans one read out to many watches can take its
place without changing `GenerationWatch`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb

from services.common.signing import ImageUrlSigner
from services.generation.events import StoredEvent, event_kind, is_terminal, new_event
from services.generation.generations import Generations
from services.generation.lifecycle import EventKind, GenerationState
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord


class EventSource(Protocol):
    """Where a watch reads a generation's events (EventLog satisfies it)."""

    async def read(
        self, generation_id: uuid.UUID, after_stream_id: str, *, block_ms: int | None
    ) -> list[StoredEvent]: ...

    async def last(self, generation_id: uuid.UUID) -> pb.WatchGenerationResponse | None: ...


def terminal_event_from_row(record: GenerationRecord) -> pb.WatchGenerationResponse:
    """The terminal event rebuilt from a terminal row, for when the log no longer has it."""
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


class Watching:
    """Opens watches; one per service process, built with what every watch reads from."""

    def __init__(
        self,
        *,
        generations: Generations,
        events: EventSource,
        queue: TierQueue,
        image_urls: ImageUrlSigner,
        poll_ms: int = 500,
        truth_check_seconds: float = 2.0,
    ) -> None:
        self.generations = generations
        self.events = events
        self.queue = queue
        self.image_urls = image_urls
        self.poll_ms = poll_ms
        self.truth_check_seconds = truth_check_seconds

    def watch(
        self, user_id: uuid.UUID, generation_id: uuid.UUID, *, after_sequence: int = 0
    ) -> AsyncIterator[pb.WatchGenerationResponse]:
        """The events after `after_sequence`, ending with the terminal one."""
        return GenerationWatch(self, user_id, generation_id, after_sequence).events()


class GenerationWatch:
    """One watcher's cursor over one generation's events."""

    def __init__(
        self, watching: Watching, user_id: uuid.UUID, generation_id: uuid.UUID, after_sequence: int
    ) -> None:
        self.watching = watching
        self.user_id = user_id
        self.generation_id = generation_id
        # Where the next log read starts: "0" replays the log from its first event.
        self.stream_id = "0"
        # The last event this watcher was given (or had before it resumed); older ones are skipped.
        self.last_sequence = after_sequence
        # The latest `queued` event: position updates are sent under its sequence number, so a
        # resuming watcher never skips one, and while it is the latest event the job still waits.
        self.queued_sequence = 0
        self.still_queued = True
        self.last_position: int | None = None
        self.tier = ""  # the queue band the job waits in, once read
        self.next_truth_check = 0.0  # loop time of the next look at the row in PostgreSQL

    async def events(self) -> AsyncIterator[pb.WatchGenerationResponse]:
        record = await self.watching.generations.get(self.user_id, self.generation_id)
        self.tier = record.tier
        if record.is_terminal:
            # A watch that opens on a finished job gets its terminal event alone.
            yield await self._terminal_event(record, last_sequence=0)
            return
        self.next_truth_check = asyncio.get_running_loop().time() + self.watching.truth_check_seconds
        while True:
            for event in await self._follow_log():
                yield event
                if is_terminal(event):
                    return
            moved = await self._queue_position_update()
            if moved is not None:
                yield moved
            ended = await self._ended_in_postgres()
            if ended is not None:
                for event in await self._rest_of_log():
                    yield event
                yield await self._terminal_event(ended, self.last_sequence)
                return

    async def _follow_log(self) -> list[pb.WatchGenerationResponse]:
        """The log's events after the cursor (first the stored ones, then live ones, waiting up
        to `poll_ms` for them) that this watcher has not had, up to and including a terminal one.
        `queued` events carry the job's current position, not the one it had when stored."""
        unseen = []
        for stored in await self._read(block_ms=self.watching.poll_ms):
            event = stored.event
            self.still_queued = event_kind(event) == EventKind.QUEUED
            if self.still_queued:
                self.queued_sequence = event.sequence
                position = await self._position()
                if position is not None:
                    event.queued.position = position
                self.last_position = event.queued.position
            if event.sequence <= self.last_sequence:
                continue
            self.last_sequence = event.sequence
            if is_terminal(event):
                unseen.append(self._with_image_url(event))
                break
            unseen.append(event)
        return unseen

    async def _queue_position_update(self) -> pb.WatchGenerationResponse | None:
        """A `queued` event again, when a waiting job moved in its queue since it was last told."""
        if not (self.still_queued and self.queued_sequence):
            return None
        position = await self._position()
        if position is None or position == self.last_position:
            return None
        self.last_position = position
        return new_event(
            self.generation_id,
            sequence=self.queued_sequence,
            queued=resources.GenerationQueued(position=position),
        )

    async def _ended_in_postgres(self) -> GenerationRecord | None:
        """The row, every `truth_check_seconds`, once it is terminal. PostgreSQL is the truth: a
        terminal state whose event Redis lost still ends the stream."""
        loop = asyncio.get_running_loop()
        if loop.time() < self.next_truth_check:
            return None
        self.next_truth_check = loop.time() + self.watching.truth_check_seconds
        record = await self.watching.generations.get(self.user_id, self.generation_id)
        return record if record.is_terminal else None

    async def _rest_of_log(self) -> list[pb.WatchGenerationResponse]:
        """The non-terminal events still in the log that this watcher has not had, without
        waiting: the job is over, nothing more will come."""
        rest = []
        for stored in await self._read(block_ms=None):
            if stored.event.sequence > self.last_sequence and not is_terminal(stored.event):
                self.last_sequence = stored.event.sequence
                rest.append(stored.event)
        return rest

    async def _terminal_event(
        self, record: GenerationRecord, last_sequence: int
    ) -> pb.WatchGenerationResponse:
        """The log's terminal event, or one rebuilt from the row, numbered after everything the
        watcher had and everything the log holds, when the log expired or lost its tail."""
        stored = await self.watching.events.last(record.id)
        if stored is not None and is_terminal(stored):
            return self._with_image_url(stored)
        event = terminal_event_from_row(record)
        event.sequence = max(last_sequence + 1, stored.sequence + 1 if stored else 1)
        return self._with_image_url(event)

    async def _read(self, *, block_ms: int | None) -> list[StoredEvent]:
        stored = await self.watching.events.read(self.generation_id, self.stream_id, block_ms=block_ms)
        if stored:
            self.stream_id = stored[-1].stream_id
        return stored

    async def _position(self) -> int | None:
        return await self.watching.queue.position(self.tier, self.user_id, self.generation_id)

    def _with_image_url(self, event: pb.WatchGenerationResponse) -> pb.WatchGenerationResponse:
        """Signed when sent, so a replayed event never carries a stale URL."""
        if event_kind(event) == EventKind.SUCCEEDED:
            event.succeeded.image_url = self.watching.image_urls.url(self.generation_id, self.user_id)
        return event
