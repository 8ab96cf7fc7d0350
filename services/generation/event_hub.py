"""One event hub per generation-service process: a single reader follows the event logs of every
generation watched in this process and hands each event to in-process subscribers.

    events:{generation_id}   each watched generation's log (see events.py), read by one XREAD
    hub:{hub_id}:wake        this process's wake stream: an entry wakes the blocked XREAD so that
                             it re-arms with a newly watched key at once, not after a timeout

A watch costs memory, not a connection: the blocking read runs on the hub's own connection, and
the few short commands a watch makes (its replay, a resync) borrow the shared pool briefly.

Slow consumers never hold others back. Each subscriber has a bounded buffer, and a `progress`
event that arrives while the previous one still waits in it replaces that one: a watcher slower
than the steps gets the newest preview, not a backlog of old ones (this is what keeps a crowd's
latency down: one send per watcher per round, however many steps came meanwhile). `queued`,
`started` and terminal events are never replaced. When the buffer is full of those anyway, the
subscriber stops receiving live events and is marked behind, and it resynchronises itself from
the stored log (after the last entry it was given) once it reads again. The hub never waits.

Once per `position_refresh_seconds` for all the waiting generations it follows, not once per
watch, the hub computes the queue positions (one script per user and band, single-flight), and
every `truth_check_seconds` it reads the watched rows from PostgreSQL (one query per user), so
that a terminal state whose event Redis lost still ends every watch. If the hub's connection
breaks it reconnects and reads on from each generation's last entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.generation.events import EventLog, StoredEvent, event_kind
from services.generation.generations import Generations
from services.generation.lifecycle import EventKind
from services.generation.queue import TierQueue
from services.generation.repository import GenerationRecord

log = logging.getLogger("services.generation.event_hub")

# The CLIENT SETNAME of the hub's connection, so that it can be told apart in CLIENT LIST.
EVENT_HUB_CLIENT_NAME = "pingvas-event-hub"

# Entries one XREAD returns per key; a generation with more waiting is read on in the next round.
_READ_COUNT = 500


def _is_progress(stored: StoredEvent) -> bool:
    return stored.event.WhichOneof("event") == EventKind.PROGRESS


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
        self._buffer: deque[StoredEvent] = deque()
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
            self.behind = True
            self._buffer.clear()
        else:
            self._buffer.append(stored)
        self._signal.set()

    def wake(self) -> None:
        """Something besides an event changed (the position, the row): let the watch look."""
        self._signal.set()

    async def next_events(self, wait_seconds: float | None) -> list[StoredEvent]:
        """Events after the last one handed out, waiting up to `wait_seconds` (None: until the hub
        wakes it) when there are none; [] when woken for something else or timed out."""
        if not self._buffer and not self.behind:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), wait_seconds)
        self._signal.clear()
        if self.behind:
            # Live events from here on go to the buffer; the log read covers the ones before.
            self.behind = False
            self._buffer.clear()
            stored = await self.hub.events.read_all(self.followed.generation_id, self.stream_id)
        else:
            stored = list(self._buffer)
            self._buffer.clear()
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
    stream_id: str  # the last entry the hub read from its log
    queued: bool  # whether the latest event the hub saw was `queued`
    subscribers: set[Subscription] = field(default_factory=set)
    position: int | None = None
    position_at: float = float("-inf")  # loop time the position was computed
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
        block_ms: int = 1000,
        reconnect_seconds: float = 0.5,
    ) -> None:
        self.reader = reader  # the hub's own connection, for the blocking read only
        self.redis = redis  # the shared pool, for short commands
        self.events = events
        self.queue = queue
        self.generations = generations
        self.buffer_size = buffer_size
        self.position_refresh_seconds = position_refresh_seconds
        self.truth_check_seconds = truth_check_seconds
        # Well under the client's socket timeout (5 s by default), which would otherwise end a
        # quiet read as a broken connection; the wake stream re-arms it sooner when needed.
        self.block_ms = block_ms
        self.reconnect_seconds = reconnect_seconds
        self.wake_key = f"hub:{uuid.uuid4()}:wake"
        self._wake_id = "0-0"
        self._followed: dict[uuid.UUID, FollowedGeneration] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._positions_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
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
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await self.redis.delete(self.wake_key)
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
            # The hub reads on from the log's current end; the subscriber's replay covers the rest.
            followed = FollowedGeneration(
                generation_id=generation_id,
                user_id=user_id,
                tier=tier,
                stream_id=await self.events.last_stream_id(generation_id),
                queued=queued,
            )
            followed = self._followed.setdefault(generation_id, followed)
            await self._wake_reader()
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
        if asyncio.get_running_loop().time() - followed.position_at >= self.position_refresh_seconds:
            await self._positions_computed()
        return followed.position

    async def _positions_computed(self) -> None:
        """Single-flight: a computation already under way is joined, not repeated."""
        if self._positions_task is None or self._positions_task.done():
            self._positions_task = asyncio.ensure_future(self._compute_positions())
        await asyncio.shield(self._positions_task)

    async def _compute_positions(self) -> None:
        """Positions for every followed generation that is waiting, one script per user and band,
        and a wake for the watchers of each one that moved."""
        waiting: dict[tuple[str, uuid.UUID], list[FollowedGeneration]] = defaultdict(list)
        for followed in self._followed.values():
            if followed.queued:
                waiting[followed.tier, followed.user_id].append(followed)
        now = asyncio.get_running_loop().time()
        for (tier, user_id), group in waiting.items():
            positions = await self.queue.positions(tier, user_id, [f.generation_id for f in group])
            for followed in group:
                moved = positions[followed.generation_id] != followed.position
                followed.position, followed.position_at = positions[followed.generation_id], now
                if moved:
                    followed.wake_subscribers()

    async def _wake_reader(self) -> None:
        await self.redis.xadd(self.wake_key, {"w": 1}, maxlen=16, approximate=True)
        # Left behind by a process that died, the key goes by itself.
        await self.redis.expire(self.wake_key, 3600)

    async def _read_forever(self) -> None:
        while True:
            streams: dict[Any, Any] = {self.wake_key: self._wake_id}
            streams.update({EventLog.key(g): f.stream_id for g, f in self._followed.items()})
            try:
                response: Any = await self.reader.xread(streams, block=self.block_ms, count=_READ_COUNT)
            except (RedisError, OSError):
                # Redis restarted or the connection was killed: read on from each log's last
                # entry once it is back; every event in the logs since then is delivered. Until
                # then the PostgreSQL truth check still ends watches whose job is over.
                log.warning("event hub lost its Redis connection; reconnecting", exc_info=True)
                await asyncio.sleep(self.reconnect_seconds)
                continue
            for key, entries in response or ():
                self._deliver(key.decode(), entries)

    def _deliver(self, key: str, entries: list[Any]) -> None:
        if key == self.wake_key:
            self._wake_id = entries[-1][0].decode()
            return
        followed = self._followed.get(EventLog.generation_of(key))
        if followed is None:  # its last watcher left while the read was out
            return
        for stored in EventLog.decode_entries(entries):
            followed.stream_id = stored.stream_id
            followed.queued = event_kind(stored.event) == EventKind.QUEUED
            for subscription in list(followed.subscribers):
                subscription.offer(stored)

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
                followed = self._followed.get(record.id)
                if followed is not None:
                    followed.ended = record
                    followed.wake_subscribers()
