"""Watching one generation: replay its event log, follow it live, and end on its terminal event,
which PostgreSQL supplies when Redis lost it. See WatchGeneration in the contract for the order
and resume semantics this keeps.

A watch reads through the process's `EventHub` (event_hub.py): one blocking read follows every
watched log, and the queue position and the PostgreSQL row are looked at once per generation,
not once per watch. A watch holds no Redis connection while it waits.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

from pingvas.generation.v1 import generation_resources_pb2 as resources
from pingvas.generation.v1 import generation_service_pb2 as pb

from services.common.cancellation import cancellation_requested
from services.generation.event_hub import EventHub, Subscription
from services.generation.events import StoredEvent, event_kind, is_terminal, new_event
from services.generation.generations import Generations
from services.generation.lifecycle import EventKind, GenerationState
from services.generation.repository import GenerationRecord


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
        hub: EventHub,
        queued_resend_seconds: float = 15.0,
    ) -> None:
        self.generations = generations
        self.hub = hub
        self.queued_resend_seconds = queued_resend_seconds

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
        # The last event this watcher was given (or had before it resumed); older ones are skipped.
        self.last_sequence = after_sequence
        # The generation's row as last read: its creation time names its image's key.
        self.record: GenerationRecord | None = None
        # The latest `queued` event: position updates are sent under its sequence number, so a
        # resuming watcher never skips one, and while it is the latest event the job still waits.
        self.queued_sequence = 0
        self.still_queued = True
        self.last_position: int | None = None
        self.queued_sent_at = 0.0  # loop time `queued` was last sent, for the quiet-stream re-send
        # Each watch's own quiet period, between half and all of `queued_resend_seconds`:
        # thousands of watches opened together must not all re-send at the same moment.
        self.quiet_seconds = watching.queued_resend_seconds * random.uniform(0.5, 1.0)

    async def events(self) -> AsyncIterator[pb.WatchGenerationResponse]:
        record = await self.watching.generations.get(self.user_id, self.generation_id)
        self.record = record
        if record.is_terminal:
            # A watch that opens on a finished job gets its terminal event alone. One that
            # resumes (its stream was cut) first gets the events it missed that the log still
            # holds: the same events whether the job ended before it came back or after.
            if self.last_sequence:
                for event in await self._rest_of_log(after_stream_id="0-0"):
                    yield event
            yield await self._terminal_event(record, self.last_sequence)
            return
        async with self.watching.hub.subscribe(
            record.id, user_id=record.user_id, tier=record.tier, queued=record.state == GenerationState.QUEUED
        ) as subscription:
            # Not `while True`: a client that went away cancels its watch, and should a Redis
            # command swallow that cancellation (services/common/cancellation.py), the watch must
            # still end here rather than stay subscribed until its job's next event.
            while not cancellation_requested():
                for event in await self._follow_log(subscription):
                    yield event
                    if is_terminal(event):
                        return
                again = await self._queued_again(subscription)
                if again is not None:
                    yield again
                ended = subscription.followed.ended
                if ended is not None:
                    for event in await self._rest_of_log(subscription.stream_id):
                        yield event
                    yield await self._terminal_event(ended, self.last_sequence)
                    return
            raise asyncio.CancelledError

    async def _follow_log(self, subscription: Subscription) -> list[pb.WatchGenerationResponse]:
        """The log's events from the hub (first the stored ones, then live ones, waiting for
        them) that this watcher has not had, up to and including a terminal one. `queued` events
        carry the job's current position, not the one it had when stored."""
        unseen = []
        for stored in await subscription.next_events(self._quiet_for()):
            event = stored.event
            self.still_queued = event_kind(event) == EventKind.QUEUED
            if self.still_queued or is_terminal(event):
                # Shared with every watcher of the generation: copied before it is changed (the
                # position, the image URL). The rest is sent as it is, serialised per stream.
                event = pb.WatchGenerationResponse()
                event.CopyFrom(stored.event)
            if self.still_queued:
                self.queued_sequence = event.sequence
                position = await self.watching.hub.position(subscription.followed)
                if position is not None:
                    event.queued.position = position
                self.last_position = event.queued.position
            if event.sequence <= self.last_sequence:
                continue
            self.last_sequence = event.sequence
            if self.still_queued:
                self.queued_sent_at = asyncio.get_running_loop().time()
            if is_terminal(event):
                unseen.append(await self._with_image_urls(event))
                break
            unseen.append(event)
        return unseen

    def _quiet_for(self) -> float | None:
        """How long to wait for the hub before a waiting job's `queued` is due again."""
        if not (self.still_queued and self.queued_sequence):
            return None
        due = self.queued_sent_at + self.quiet_seconds
        return max(0.0, due - asyncio.get_running_loop().time())

    async def _queued_again(self, subscription: Subscription) -> pb.WatchGenerationResponse | None:
        """A `queued` event again, when a waiting job moved in its queue since it was last told,
        or when the stream has been quiet for `queued_resend_seconds` (so proxies and clients
        see it is alive)."""
        if not (self.still_queued and self.queued_sequence):
            return None
        position = await self.watching.hub.position(subscription.followed)
        quiet = self._quiet_for() == 0.0
        if position is not None and position != self.last_position:
            self.last_position = position
        elif not quiet:
            return None
        self.queued_sent_at = asyncio.get_running_loop().time()
        return new_event(
            self.generation_id,
            sequence=self.queued_sequence,
            queued=resources.GenerationQueued(position=self.last_position or 0),
        )

    async def _rest_of_log(self, after_stream_id: str) -> list[pb.WatchGenerationResponse]:
        """The non-terminal events still in the log after `after_stream_id` that this watcher
        has not had, without waiting: the job is over, nothing more will come."""
        rest = []
        stored_events: list[StoredEvent] = await self.watching.hub.events.read_all(
            self.generation_id, after_stream_id
        )
        for stored in stored_events:
            if stored.event.sequence > self.last_sequence and not is_terminal(stored.event):
                self.last_sequence = stored.event.sequence
                rest.append(stored.event)
        return rest

    async def _terminal_event(
        self, record: GenerationRecord, last_sequence: int
    ) -> pb.WatchGenerationResponse:
        """The log's terminal event, or one rebuilt from the row, numbered after everything the
        watcher had and everything the log holds, when the log expired or lost its tail."""
        stored = await self.watching.hub.events.last(record.id)
        if stored is not None and is_terminal(stored):
            return await self._with_image_urls(stored)
        event = terminal_event_from_row(record)
        event.sequence = max(last_sequence + 1, stored.sequence + 1 if stored else 1)
        return await self._with_image_urls(event)

    async def _with_image_urls(self, event: pb.WatchGenerationResponse) -> pb.WatchGenerationResponse:
        """URLs added when sent, so a replayed event never carries a stale one (the store hands
        the same URL to every watcher while it is young). The record read when the watch opened
        names the image's keys: they follow from the job, not its state."""
        if event_kind(event) == EventKind.SUCCEEDED:
            assert self.record is not None
            urls = await self.watching.generations.images.image_urls(self.record.image_keys)
            event.succeeded.image_url = urls.image
            event.succeeded.thumbnail_url = urls.thumbnail
        return event
