"""One event hub per generation-service process: a single reader follows the event feed (see
events.py), where every generation's events appear, and hands the events of the generations
watched in this process to in-process subscribers.

A watch costs memory, not a connection: the blocking read of one key runs on the hub's own
connection, and the few short commands a watch makes (its replay, a resync) borrow the shared
pool briefly.

Slow consumers never hold others back. Each subscriber has a bounded buffer, and a `progress`
event that arrives while the previous one still waits in it replaces that one: a watcher slower
than the steps gets the newest preview, not a backlog of old ones (this is what keeps a crowd's
latency down: one send per watcher per round, however many steps came meanwhile). `queued`,
`started` and terminal events are never replaced. When the buffer is full of those anyway, the
subscriber stops receiving live events and is marked behind, and it resynchronises itself from
the stored log (after the last entry it was given) once it reads again. The hub never waits.
Subscribers are also marked behind when the hub sees a gap in a generation's sequence numbers
(the feed was trimmed past entries the hub had not read) and when its connection broke.

Once per `position_refresh_seconds` for all the waiting generations it follows, not once per
watch, the hub computes the queue positions (one script per user and band, single-flight) and
tells a generation's watchers when it moved (further back in the queue, less often), and
every `truth_check_seconds` it reads the watched rows from PostgreSQL (one query per user), so
that a terminal state whose event Redis lost still ends every watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.cancellation import cancellation_requested
from services.generation.events import EventLog, FeedEntry, StoredEvent, event_kind
from services.generation.generations import Generations
from services.generation.lifecycle import EventKind
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord

log = logging.getLogger("services.generation.event_hub")

# The CLIENT SETNAME of the hub's connection, so that it can be told apart in CLIENT LIST.
EVENT_HUB_CLIENT_NAME = "pingvas-event-hub"

# Positions up to this are told of every move (once a refresh); see EventHub._news_interval.
POSITIONS_TOLD_EVERY_REFRESH = 10

# Feed entries one XREAD returns; more waiting are read in the next round.
_READ_COUNT = 500


def _is_progress(stored: StoredEvent) -> bool:
    return event_kind(stored.event) == EventKind.PROGRESS


def stream_position(stream_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as something that orders like the stream."""
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)


class Subscription:
    """One watch's view of a followed generation: a bounded buffer the hub fills without waiting,
    and the log read again from its last entry when it fell behind."""

    def __init__(self, hub: EventHub, followed: FollowedGeneration, buffer_size: int) -> None:
        self.hub = hub
        self.followed = followed
        self.buffer_size = buffer_size
        # A list, not a deque: it holds a few events at most, and an empty deque takes a
        # 64-slot block (about 0.7 KB) in each of thousands of subscriptions.
        self._buffer: list[StoredEvent] = []
        # The last entry handed to the watch; later deliveries at or before it are duplicates.
        self.stream_id = "0-0"
        # A new subscriber starts behind: its first read replays the stored log.
        self.behind = True
        self._signal = asyncio.Event()

    def offer(self, stored: StoredEvent) -> None:
        """From the hub: never waits. A newer `progress` replaces one not yet taken; a full
        buffer marks the subscriber behind."""
        if self.behind:
            return
        if self._buffer and _is_progress(stored) and _is_progress(self._buffer[-1]):
            self._buffer[-1] = stored
        elif len(self._buffer) >= self.buffer_size:
            self.fall_behind()
            return
        else:
            self._buffer.append(stored)
        self._signal.set()

    def fall_behind(self) -> None:
        """Live events may have been missed: the next read resynchronises from the log."""
        self.behind = True
        self._buffer.clear()
        self._signal.set()

    def wake(self) -> None:
        """Something besides an event changed (the position, the row): let the watch look."""
        self._signal.set()

    async def next_events(self, wait_seconds: float | None) -> list[StoredEvent]:
        """Events after the last one handed out, waiting up to `wait_seconds` (None: until the hub
        wakes it) when there are none; [] when woken for something else or timed out."""
        if not self._buffer and not self.behind:
            # A timeout scope, not wait_for: that would start a task per wait, per watcher.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_seconds):
                    await self._signal.wait()
        self._signal.clear()
        if self.behind:
            # Live events from here on go to the buffer; the log read covers the ones before.
            self.behind = False
            self._buffer.clear()
            stored = await self.hub.events.read_all(self.followed.generation_id, self.stream_id)
        else:
            stored, self._buffer = self._buffer, []
        fresh = [s for s in stored if stream_position(s.stream_id) > stream_position(self.stream_id)]
        if fresh:
            self.stream_id = fresh[-1].stream_id
        return fresh


@dataclass
class FollowedGeneration:
    """What the hub knows of one watched generation, shared by all its subscribers."""

    generation_id: uuid.UUID
    user_id: uuid.UUID
    tier: str
    queued: bool  # whether the latest event the hub saw was `queued`
    # Far back in the queue news is told at least this often: between half and all of the hub's
    # `position_news_seconds`, so that a thousand generations followed together are not all due
    # at the same moment.
    news_seconds: float
    stream_id: str = "0-0"  # the log entry of the latest event the hub handed out
    sequence: int | None = None  # that event's sequence number
    subscribers: set[Subscription] = field(default_factory=set)
    position: int | None = None  # as last told to the watchers
    position_at: float = float("-inf")  # when (the hub's clock) the position was last computed
    told_at: float = float("-inf")  # when `position` was last told
    ended: GenerationRecord | None = None  # the row, once PostgreSQL says the job is over

    def wake_subscribers(self) -> None:
        for subscription in list(self.subscribers):
            subscription.wake()


class EventHub:
    def __init__(
        self,
        *,
        reader: Redis,
        redis: Redis,
        events: EventLog,
        queue: TierQueue,
        generations: Generations,
        buffer_size: int,
        position_refresh_seconds: float,
        truth_check_seconds: float,
        position_news_seconds: float,
        block_ms: int = 1000,
        reconnect_seconds: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.reader = reader  # the hub's own connection, for the blocking read only
        self.redis = redis  # the shared pool, for short commands
        self.events = events
        self.queue = queue
        self.generations = generations
        self.buffer_size = buffer_size
        self.position_refresh_seconds = position_refresh_seconds
        self.truth_check_seconds = truth_check_seconds
        self.position_news_seconds = position_news_seconds
        # The times positions are computed and told at (the event loop's clock by default).
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        # Each read is bounded, so that the loop looks at its own cancellation at least this
        # often even if a cancel was swallowed mid-command (the client has no socket timeout:
        # services/common/redis_pool.py).
        self.block_ms = block_ms
        self.reconnect_seconds = reconnect_seconds
        self._feed_id = "$"  # the feed entry read last; until start(), "only what comes next"
        self._followed: dict[uuid.UUID, FollowedGeneration] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._positions_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._feed_id = await self.events.feed_end()
        # Untraced, like every loop that serves all watchers at once: no request is behind a read
        # of the feed (one per event of every followed generation), and even dropped spans cost
        # each read the instrumentation's work. A task keeps the context it was created in.
        with suppress_instrumentation():
            self._tasks = [
                asyncio.create_task(self._read_forever(), name="event-hub-read"),
                asyncio.create_task(
                    self._every(self.position_refresh_seconds, self._refresh_positions),
                    name="event-hub-positions",
                ),
                asyncio.create_task(
                    self._every(self.truth_check_seconds, self._check_truth), name="event-hub-truth"
                ),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reader.aclose()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, generation_id: uuid.UUID, *, user_id: uuid.UUID, tier: str, queued: bool
    ) -> AsyncIterator[Subscription]:
        """Follow a generation (of `user_id`, waiting in `tier`, `queued` if it has not started)
        for as long as the context lasts: a watch's lifetime, whether it ends, fails or the
        client goes away. The subscription first replays the stored log, then gets live events."""
        followed = self._followed.get(generation_id)
        if followed is None:
            # Live from the hub's next read of the feed on; the subscriber's replay covers the rest.
            followed = FollowedGeneration(
                generation_id=generation_id,
                user_id=user_id,
                tier=tier,
                queued=queued,
                news_seconds=self.position_news_seconds * random.uniform(0.5, 1.0),
            )
            self._followed[generation_id] = followed
        subscription = Subscription(self, followed, self.buffer_size)
        followed.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            followed.subscribers.discard(subscription)
            if not followed.subscribers and self._followed.get(generation_id) is followed:
                del self._followed[generation_id]

    async def position(self, followed: FollowedGeneration) -> int | None:
        """The queue position, at most `position_refresh_seconds` old: computed for every waiting
        generation together, however many watchers ask."""
        if self.clock() - followed.position_at >= self.position_refresh_seconds:
            await self._positions_computed()
        return followed.position

    async def _positions_computed(self) -> None:
        """Single-flight: a computation already under way is joined, not repeated."""
        if self._positions_task is None or self._positions_task.done():
            with suppress_instrumentation():  # shared by every watcher: no one request's work
                self._positions_task = asyncio.ensure_future(self._compute_positions())
        await asyncio.shield(self._positions_task)

    async def _compute_positions(self) -> None:
        """Positions for every followed generation that is waiting, one script per user and band,
        and news for the watchers of each one that moved and is due to be told."""
        waiting: dict[tuple[str, uuid.UUID], list[FollowedGeneration]] = defaultdict(list)
        for followed in self._followed.values():
            if followed.queued:
                waiting[followed.tier, followed.user_id].append(followed)
        now = self.clock()
        for (tier, user_id), group in waiting.items():
            positions = await self.queue.positions(tier, user_id, [f.generation_id for f in group])
            for followed in group:
                position, followed.position_at = positions[followed.generation_id], now
                if position == followed.position:
                    continue
                if (
                    position is not None
                    and followed.position is not None
                    and now - followed.told_at < self._news_interval(followed, position)
                ):
                    continue  # it moved while still waiting, but at this depth the news is not due
                followed.position, followed.told_at = position, now
                followed.wake_subscribers()

    def _news_interval(self, followed: FollowedGeneration, position: int) -> float:
        """How often a move is told at this position. Every refresh near the front; further
        back, every position/10 refreshes, up to the generation's `news_seconds`: when every job
        starts, every job behind it moves, and a thousand jobs' watchers told of each move would
        be a storm of news nobody needs at position 500."""
        return min(
            followed.news_seconds,
            self.position_refresh_seconds * max(1, position // POSITIONS_TOLD_EVERY_REFRESH),
        )

    async def _read_forever(self) -> None:
        # Not `while True`: a cancel that a Redis command swallowed must still end the loop.
        while not cancellation_requested():
            try:
                response: Any = await self.reader.xread(
                    {self.events.feed_key: self._feed_id}, block=self.block_ms, count=_READ_COUNT
                )
            except (RedisError, OSError):
                # Redis restarted or the connection was killed. Once it is back the hub reads on
                # from its place in the feed, and every watcher resynchronises from its own log,
                # which holds whatever the feed may no longer have. Until then the PostgreSQL
                # truth check still ends watches whose job is over.
                log.warning("event hub lost its Redis connection; reconnecting", exc_info=True)
                await asyncio.sleep(self.reconnect_seconds)
                for followed in list(self._followed.values()):
                    followed.sequence = None
                    for subscription in list(followed.subscribers):
                        subscription.fall_behind()
                continue
            for _key, entries in response or ():
                self._feed_id = entries[-1][0].decode()
                self._deliver(EventLog.decode_feed(entries, self._followed))

    def _deliver(self, entries: list[FeedEntry]) -> None:
        for entry in entries:
            followed = self._followed.get(entry.generation_id)
            if followed is None:  # its last watcher left while the read was out
                continue
            sequence = entry.stored.event.sequence
            if followed.sequence is not None and sequence > followed.sequence + 1:
                # The feed lost entries this hub had not read: the logs still have them.
                for subscription in list(followed.subscribers):
                    subscription.fall_behind()
            followed.sequence, followed.stream_id = sequence, entry.stored.stream_id
            followed.queued = event_kind(entry.stored.event) == EventKind.QUEUED
            for subscription in list(followed.subscribers):
                subscription.offer(entry.stored)

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                log.exception("event hub: %s failed; retrying", getattr(job, "__name__", job))

    async def _refresh_positions(self) -> None:
        await self._positions_computed()

    async def _check_truth(self) -> None:
        """PostgreSQL is the truth: a terminal row ends the watches even when its event is lost."""
        unended: dict[uuid.UUID, list[FollowedGeneration]] = defaultdict(list)
        for followed in self._followed.values():
            if followed.ended is None:
                unended[followed.user_id].append(followed)
        for user_id, group in unended.items():
            try:
                finished = await self.generations.finished(user_id, [f.generation_id for f in group])
            except Exception:
                # One user's unreadable rows must not keep the others' watches from ending.
                log.exception("event hub: cannot read the generations of user %s", user_id)
                continue
            for record in finished:
                if (ended := self._followed.get(record.id)) is not None:
                    ended.ended = record
                    ended.wake_subscribers()
