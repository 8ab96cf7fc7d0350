"""Caps on open WatchGeneration streams, so one account cannot starve the rest.

Per user, across every replica of the generation service, a Redis sorted set counts the open
streams:

    streams:{user_id}   ZSET   slot id -> lease expiry (Unix seconds)

A slot is taken by one script that first drops expired members, so the slots of a replica that
died (and so stopped renewing) stop counting within one lease. Each process renews all of its
open slots every third of a lease in one pipeline, and removes a slot when its stream ends (the
slots of streams that end together in one pipeline too). A second cap, counted in memory, bounds
the streams one process serves whatever the users.

Scores are the replicas' own clocks: NTP keeps them far closer than a lease apart.

A user's plan sets their cap (read through the process's UserPlans, services/common/plans.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from opentelemetry import metrics
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import TooManyStreams
from services.common.plans import PlanReader

log = logging.getLogger(__name__)
open_watch_streams = metrics.get_meter(__name__).create_up_down_counter(
    "pingvas.watch.open_streams", unit="{stream}", description="WatchGeneration streams open in this process."
)

# KEYS[1] the user's set; ARGV: now, the new slot's expiry, the cap, the slot id, the key's TTL (ms).
# The key's TTL always reaches past every member's expiry, so an idle user's set disappears.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def streams_key(user_id: uuid.UUID) -> str:
    return f"streams:{user_id}"


@dataclass(frozen=True)
class StreamSlot:
    key: str
    id: str


class StreamSlots:
    """One per generation-service process: takes, renews and gives back its streams' slots."""

    def __init__(
        self,
        redis: Redis,
        *,
        caps_by_plan: Mapping[str, int],
        default_cap: int,
        per_process: int,
        lease_seconds: float,
        plan_of: PlanReader,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.caps_by_plan = dict(caps_by_plan)
        self.default_cap = default_cap
        self.per_process = per_process
        self.lease_seconds = lease_seconds
        self.plan_of = plan_of
        self.clock = clock
        self._open: set[StreamSlot] = set()
        # Slots given back and not yet removed from Redis, and the task removing them.
        self._to_release: list[StreamSlot] = []
        self._releasing: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(_ACQUIRE)

    @property
    def renew_interval_seconds(self) -> float:
        # Two renewals may fail in a row before a live stream's slot lapses.
        return self.lease_seconds / 3

    @contextlib.asynccontextmanager
    async def held(self, user_id: uuid.UUID) -> AsyncIterator[None]:
        """A slot for one stream of `user_id` for as long as the block runs, however it ends (the
        client cancelling included); TooManyStreams when a cap is reached."""
        slot = await self.acquire(user_id)
        open_watch_streams.add(1)
        try:
            yield
        finally:
            open_watch_streams.add(-1)
            await self.release(slot)

    async def acquire(self, user_id: uuid.UUID) -> StreamSlot:
        if len(self._open) >= self.per_process:
            raise TooManyStreams(
                f"this server holds its maximum of {self.per_process} open streams; retry shortly",
                metadata={"scope": "process", "max_streams": str(self.per_process)},
            )
        plan = await self.plan_of(user_id)
        cap = self.caps_by_plan.get(plan or "", self.default_cap)
        slot = StreamSlot(streams_key(user_id), uuid.uuid4().hex)
        now = self.clock()
        taken = await self._acquire(
            keys=[slot.key],
            args=[now, now + self.lease_seconds, cap, slot.id, int(self.lease_seconds * 1000)],
        )
        if not taken:
            raise TooManyStreams(
                f"you have {cap} open streams, the most your plan allows; close one and retry",
                metadata={"scope": "user", "max_streams": str(cap)},
            )
        self._open.add(slot)
        return slot

    async def release(self, slot: StreamSlot) -> None:
        """Give a slot back: at once in this process, and in Redis together with every slot given
        back meanwhile, in one pipeline. A job's thousand watchers end together, and their
        clients hang up on the terminal event, which cancels each stream's handler: their slots
        leave in a few round trips, and a handler's cancellation never cuts a command off midway
        (which would cost its pooled connection), since the release goes on without it."""
        self._open.discard(slot)  # first, so that no renewal brings it back
        self._to_release.append(slot)
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.create_task(self._release_pending())
        await asyncio.shield(self._releasing)

    async def _release_pending(self) -> None:
        while self._to_release:
            slots, self._to_release = self._to_release, []
            pipe = self.redis.pipeline(transaction=False)
            for slot in slots:
                pipe.zrem(slot.key, slot.id)
            try:
                await pipe.execute()
            except RedisError:
                # Not renewed any more, the slots lapse within a lease on their own.
                log.warning("could not give back %d stream slots; they lapse with their leases", len(slots))

    async def renew(self) -> None:
        """Extend every open slot's lease, in one round trip. A slot that lapsed meanwhile (Redis
        was away longer than a lease) is added again: its stream is still open, so it counts."""
        slots = list(self._open)
        if not slots:
            return
        expiry = self.clock() + self.lease_seconds
        ttl_ms = int(self.lease_seconds * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for slot in slots:
            pipe.zadd(slot.key, {slot.id: expiry})
        for key in {slot.key for slot in slots}:
            pipe.pexpire(key, ttl_ms)
        await pipe.execute()
