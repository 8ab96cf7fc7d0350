"""The job queue in Redis: strict tier bands, round-robin between users inside a band, leases.

Keys (one Redis or a Sentinel-managed primary; scripts address keys they compute, so Redis
Cluster would need hash tags):

    queue:{tier}:{user_id}      LIST of generation ids, oldest first (the seed's key)
    queue:{tier}:ring           ZSET of users with queued jobs, scored by when they were last
                                served, so the least recently served user goes next
    queue:{tier}:last_served    HASH user -> serve clock
    queue:clock                 the serve clock (INCR)
    queue:signal                LIST used to wake idle workers (capped)
    lease:{generation_id}       HASH worker, user, tier of a claimed job
    leases                      ZSET generation id -> lease expiry (ms)
    cancel:{generation_id}      set while a cancel of a running job is pending

Redis is only the delivery mechanism: PostgreSQL holds every job, and the reconciler re-enqueues
whatever Redis lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from services.billing.plans import PLANS_BY_PRIORITY

_ENQUEUE = """
local list = 'queue:' .. ARGV[1] .. ':' .. ARGV[2]
local ring = 'queue:' .. ARGV[1] .. ':ring'
redis.call('RPUSH', list, ARGV[3])
if not redis.call('ZSCORE', ring, ARGV[2]) then
  local served = redis.call('HGET', 'queue:' .. ARGV[1] .. ':last_served', ARGV[2]) or 0
  redis.call('ZADD', ring, served, ARGV[2])
end
redis.call('LPUSH', 'queue:signal', '1')
redis.call('LTRIM', 'queue:signal', 0, 63)
return 1
"""

# ARGV: worker, lease_ms, then the tiers in priority order.
_CLAIM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 3, #ARGV do
  local tier = ARGV[i]
  local ring = 'queue:' .. tier .. ':ring'
  while true do
    local head = redis.call('ZRANGE', ring, 0, 0)
    if #head == 0 then break end
    local user = head[1]
    local list = 'queue:' .. tier .. ':' .. user
    local job = redis.call('LPOP', list)
    if job then
      local clock = redis.call('INCR', 'queue:clock')
      redis.call('HSET', 'queue:' .. tier .. ':last_served', user, clock)
      if redis.call('LLEN', list) > 0 then
        redis.call('ZADD', ring, clock, user)
      else
        redis.call('ZREM', ring, user)
      end
      redis.call('HSET', 'lease:' .. job, 'worker', ARGV[1], 'user', user, 'tier', tier)
      redis.call('ZADD', 'leases', now_ms + tonumber(ARGV[2]), job)
      return {job, user, tier}
    end
    redis.call('ZREM', ring, user)
  end
end
return false
"""

# ARGV: tier, user, job, then the tiers in priority order. Returns the 1-based position, or -1.
_POSITION = """
local tier, user, job = ARGV[1], ARGV[2], ARGV[3]
local index = redis.call('LPOS', 'queue:' .. tier .. ':' .. user, job)
if not index then return -1 end
local ahead = index
for i = 4, #ARGV do
  local band = ARGV[i]
  local ring = 'queue:' .. band .. ':ring'
  if band == tier then
    local mine = tonumber(redis.call('ZSCORE', ring, user) or 0)
    local others = redis.call('ZRANGE', ring, 0, -1, 'WITHSCORES')
    for j = 1, #others, 2 do
      local other = others[j]
      if other ~= user then
        local turns = index
        if tonumber(others[j + 1]) < mine then turns = turns + 1 end
        ahead = ahead + math.min(redis.call('LLEN', 'queue:' .. band .. ':' .. other), turns)
      end
    end
    return ahead + 1
  end
  for _, other in ipairs(redis.call('ZRANGE', ring, 0, -1)) do
    ahead = ahead + redis.call('LLEN', 'queue:' .. band .. ':' .. other)
  end
end
return ahead + 1
"""

_REMOVE = """
local list = 'queue:' .. ARGV[1] .. ':' .. ARGV[2]
local removed = redis.call('LREM', list, 0, ARGV[3])
if redis.call('LLEN', list) == 0 then redis.call('ZREM', 'queue:' .. ARGV[1] .. ':ring', ARGV[2]) end
return removed
"""

_RENEW = """
if redis.call('HGET', 'lease:' .. ARGV[1], 'worker') ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', 'leases', now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""

_RELEASE = """
if redis.call('HGET', 'lease:' .. ARGV[1], 'worker') ~= ARGV[2] then return 0 end
redis.call('DEL', 'lease:' .. ARGV[1])
redis.call('ZREM', 'leases', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Claim:
    generation_id: uuid.UUID
    user_id: uuid.UUID
    tier: str


class TierQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._position = redis.register_script(_POSITION)
        self._remove = redis.register_script(_REMOVE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def enqueue(self, tier: str, user_id: uuid.UUID, generation_id: uuid.UUID) -> None:
        await self._enqueue(args=[tier, str(user_id), str(generation_id)])

    async def claim(self, worker_id: str, lease_seconds: float) -> Claim | None:
        """Atomically take the next job (highest band, least recently served user) and lease it."""
        claimed = await self._claim(args=[worker_id, int(lease_seconds * 1000), *PLANS_BY_PRIORITY])
        if not claimed:
            return None
        job, user, tier = (part.decode() if isinstance(part, bytes) else part for part in claimed)
        return Claim(uuid.UUID(job), uuid.UUID(user), tier)

    async def wait_for_work(self, timeout_seconds: float) -> None:
        await self.redis.blpop(["queue:signal"], timeout=timeout_seconds)

    async def position(self, tier: str, user_id: uuid.UUID, generation_id: uuid.UUID) -> int | None:
        """1 when the job is next; None when it is not waiting in the queue."""
        result = await self._position(args=[tier, str(user_id), str(generation_id), *PLANS_BY_PRIORITY])
        return None if int(result) < 0 else int(result)

    async def remove(self, tier: str, user_id: uuid.UUID, generation_id: uuid.UUID) -> bool:
        return bool(await self._remove(args=[tier, str(user_id), str(generation_id)]))

    async def is_waiting(self, tier: str, user_id: uuid.UUID, generation_id: uuid.UUID) -> bool:
        return await self.redis.lpos(f"queue:{tier}:{user_id}", str(generation_id)) is not None

    async def is_leased(self, generation_id: uuid.UUID) -> bool:
        """Whether a worker holds the job under a lease that has not expired. A worker that died
        between claiming and starting a job leaves an expired lease, and the job is repaired."""
        expiry = await self.redis.zscore("leases", str(generation_id))
        if expiry is None:
            return False
        seconds, microseconds = await self.redis.time()
        return float(expiry) > seconds * 1000 + microseconds / 1000

    async def renew_lease(self, generation_id: uuid.UUID, worker_id: str, lease_seconds: float) -> bool:
        return bool(await self._renew(args=[str(generation_id), worker_id, int(lease_seconds * 1000)]))

    async def release_lease(self, generation_id: uuid.UUID, worker_id: str) -> None:
        await self._release(args=[str(generation_id), worker_id])

    async def request_cancel(self, generation_id: uuid.UUID, ttl_seconds: int = 24 * 3600) -> None:
        await self.redis.set(f"cancel:{generation_id}", "1", ex=ttl_seconds)

    async def cancel_requested(self, generation_id: uuid.UUID) -> bool:
        return bool(await self.redis.exists(f"cancel:{generation_id}"))
