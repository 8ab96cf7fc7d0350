"""The job queue in Redis: strict tier bands, round-robin between users inside a band, leases.

Keys (one Redis or a Sentinel-managed primary; scripts address keys they compute, so Redis
Cluster would need hash tags):

    queue:{tier}:{user_id}      LIST of generation ids, oldest first (the seed's key)
    queue:{tier}:ring           ZSET of users with queued jobs, scored by when they were last
                                served (Redis TIME in microseconds), so the least recently served
                                user goes next
    queue:{tier}:waiting        ZSET of waiting jobs by enqueue time (aging, depth)
    job:{generation_id}         HASH user, tier, model, batch key, skips, trace (the W3C
                                traceparent of the request that queued it) and since (its
                                enqueue time, ms) of a waiting or leased job
    queue:floors                HASH tier -> a time (ms) no later than the enqueue of any job
                                waiting in that band, absent when the band holds nothing, so
                                that a claim reads only bands that may hold a job, and ages
                                only those that may hold a due one; '*' marks it whole
    running:{user_id}           how many of the user's jobs are leased (concurrency caps); absent
                                when none
    queue:{tier}:last_served    HASH user -> when last served, for users who left the ring (no
                                queued job), so that coming back does not put them first
    queue:signal                LIST used to wake idle workers (at most 64 tokens)
    lease:{generation_id}       HASH worker, user, tier of a claimed job
    leases                      ZSET generation id -> lease expiry (ms)
    cancel:{generation_id}      set while a cancel of a running job is pending

Redis is only the delivery mechanism: PostgreSQL holds every job, and the reconciler re-enqueues
whatever Redis lost.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from services.billing.plans import PLANS_BY_PRIORITY
from services.common.telemetry import current_trace_context

# ARGV: tier, user, job, model, batch key ('' when the job never shares a batch), traceparent
# ('' when no trace is recorded), then optionally the bands by priority: with them, returns the
# job's queue position (which its `queued` event tells its watchers) in the same round trip.
_ENQUEUE_BODY = """
local list = 'queue:' .. ARGV[1] .. ':' .. ARGV[2]
local waiting = 'queue:' .. ARGV[1] .. ':waiting'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A job still waiting (its delivery was lost from its user's list) keeps its place in aging.
local since = now
if redis.call('ZADD', waiting, 'NX', now, ARGV[3]) == 0 then
  since = tonumber(redis.call('ZSCORE', waiting, ARGV[3]))
end
redis.call('HSET', 'job:' .. ARGV[3], 'user', ARGV[2], 'tier', ARGV[1], 'model', ARGV[4], 'batch', ARGV[5], 'skips', 0, 'trace', ARGV[6], 'since', since)
-- A user is in the ring exactly while their list holds a job (every script keeps it so), and a
-- band loses its floor only when its ring is empty: only a user's first job can need either.
if redis.call('RPUSH', list, ARGV[3]) == 1 then
  local ring = 'queue:' .. ARGV[1] .. ':ring'
  if not redis.call('ZSCORE', ring, ARGV[2]) then
    local served = redis.call('HGET', 'queue:' .. ARGV[1] .. ':last_served', ARGV[2]) or 0
    redis.call('ZADD', ring, served, ARGV[2])
  end
  -- The band's floor, when it has none: this job is then the band's only one.
  redis.call('HSETNX', 'queue:floors', ARGV[1], since)
end
-- Under load the list is full and nobody waits on it: a read instead of two writes.
if redis.call('LLEN', 'queue:signal') < 64 then redis.call('LPUSH', 'queue:signal', '1') end
if #ARGV < 7 then return false end
return positions_of(ARGV[1], ARGV[2], {ARGV[3]}, {unpack(ARGV, 7)})[1]
"""

_CLAIM_BODY = """
-- ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] JSON: {"tiers": [...], "aging_ms": {...},
-- "caps": {...}, "warm": [...], "lookahead": n, "max_skips": n}, ARGV[4] the worker's previous
-- jobs, space-separated, released first ('' for none), ARGV[5] the most jobs to claim as one
-- batch, ARGV[6] the worker's horizon: how many ms until it expects to claim again. Returns job,
-- user, tier, reason, traceparent ('-' for none) and ms waited for each claimed job, the first
-- chosen by the policy, as one space-separated string (one bulk reply is cheaper for the client
-- to read than an array of them).
local worker, lease_ms, max_batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local horizon_ms = tonumber(ARGV[6])
local cfg = cjson.decode(ARGV[3])
for job in string.gmatch(ARGV[4], '%S+') do release(job, worker) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- When a user was served: microseconds, unique per claim (scripts run one at a time) and exact
-- in a double.
local served_at = tonumber(t[1]) * 1000000 + tonumber(t[2])
local warm = {}
for _, model in ipairs(cfg.warm) do warm[model] = true end

-- Each band's floor (queue:floors): no later than the enqueue of any job waiting in it, and
-- absent only when the band holds no job. A job leaving leaves the floor where it was, so it
-- only ever errs early; it is raised to the band's true head when an aging check reads that.
-- The field '*' says the hash is whole; without it (Redis lost it, or jobs queued before floors
-- were kept) every band's floor is read again.
local floors = {}
local flat = redis.call('HGETALL', 'queue:floors')
for i = 1, #flat, 2 do floors[flat[i]] = flat[i + 1] end
if not floors['*'] then
  floors = {['*'] = '1'}
  for _, tier in ipairs(cfg.tiers) do
    local head = redis.call('ZRANGE', 'queue:' .. tier .. ':waiting', 0, 0, 'WITHSCORES')
    if #head > 0 then
      floors[tier] = head[2]
    elseif redis.call('ZCARD', 'queue:' .. tier .. ':ring') > 0 then
      floors[tier] = now  -- Nothing waits to age, but users are queued: the band is not empty.
    end
  end
  flat = {}
  for name, floor in pairs(floors) do
    table.insert(flat, name)
    table.insert(flat, floor)
  end
  redis.call('DEL', 'queue:floors')
  redis.call('HSET', 'queue:floors', unpack(flat))
end

-- A band found empty (no job waiting, no user queued) loses its floor, so claims skip it until
-- a job is enqueued there.
local function forget_if_empty(tier)
  if redis.call('ZCARD', 'queue:' .. tier .. ':waiting') == 0
    and redis.call('ZCARD', 'queue:' .. tier .. ':ring') == 0 then
    redis.call('HDEL', 'queue:floors', tier)
    floors[tier] = nil
  end
end

local function eligible(tier, user)
  local running = tonumber(redis.call('GET', 'running:' .. user) or 0)
  return running < tonumber(cfg.caps[tier] or 1000000)
end

-- `fields`: what whoever chose the job read of it: its hash's trace and since, and whether its
-- user's list holds more jobs than it (nil when not read).
local function take(tier, user, job, reason, fields)
  local list = 'queue:' .. tier .. ':' .. user
  local ring = 'queue:' .. tier .. ':ring'
  redis.call('LREM', list, 1, job)
  served_at = served_at + 1  -- A batch serves its members' users in turn.
  local more = fields[3]
  if more == nil then more = redis.call('LLEN', list) > 0 end
  if more then
    redis.call('ZADD', ring, served_at, user)
  else
    redis.call('ZREM', ring, user)
    redis.call('HSET', 'queue:' .. tier .. ':last_served', user, served_at)
  end
  local waiting = 'queue:' .. tier .. ':waiting'
  -- A job queued before its hash kept its enqueue time has it only in the band's waiting set.
  local since = fields[2] or redis.call('ZSCORE', waiting, job)
  local waited_ms = now - tonumber(since or now)
  redis.call('ZREM', waiting, job)
  redis.call('INCR', 'running:' .. user)
  redis.call('HSET', 'lease:' .. job, 'worker', worker, 'user', user, 'tier', tier)
  redis.call('ZADD', 'leases', now + lease_ms, job)
  local trace = fields[1]
  if not trace or trace == '' then trace = '-' end
  return {job, user, tier, reason, trace, waited_ms}
end

-- The next job under the policy: tier, user, job, reason and its hash's trace and since; nil
-- when none is eligible.
local function choose()
  -- 1. Aging: the most overdue job of any band. A job is due once its wait would pass its band's
  -- bound before this worker claims again: taken any later, it would start late. A band whose
  -- floor is not due holds no due job: only the others are read.
  local best, best_overdue = nil, -1
  for _, tier in ipairs(cfg.tiers) do
    local bound = tonumber(cfg.aging_ms[tier] or -1)
    local floor = floors[tier]
    if bound >= 0 and floor and now + horizon_ms - tonumber(floor) - bound >= 0 then
      local waiting = 'queue:' .. tier .. ':waiting'
      -- Usually the head is not overdue: look at it alone, and deeper only when it is.
      local oldest = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')
      if #oldest == 0 then
        forget_if_empty(tier)
      elseif oldest[2] ~= floor then
        redis.call('HSET', 'queue:floors', tier, oldest[2])
        floors[tier] = oldest[2]
      end
      if #oldest > 0 and now + horizon_ms - tonumber(oldest[2]) - bound >= 0 then
        oldest = redis.call('ZRANGE', waiting, 0, 15, 'WITHSCORES')
      end
      for i = 1, #oldest, 2 do
        local job, since = oldest[i], tonumber(oldest[i + 1])
        local overdue = now + horizon_ms - since - bound
        if overdue < 0 then break end
        local fields = redis.call('HMGET', 'job:' .. job, 'user', 'trace', 'since')
        local user = fields[1]
        if user and eligible(tier, user) then
          if overdue > best_overdue then
            best, best_overdue = {tier, user, job, {fields[2], fields[3]}}, overdue
          end
          break
        end
      end
    end
  end
  if best then return best[1], best[2], best[3], 'aged', best[4] end

  -- 2. Strict bands; round robin over users; a warm model preferred within a bounded lookahead.
  for _, tier in ipairs(cfg.tiers) do
    if floors[tier] then
      local ring = 'queue:' .. tier .. ':ring'
      local users = redis.call('ZRANGE', ring, 0, tonumber(cfg.lookahead) - 1)
      if #users == 0 then forget_if_empty(tier) end
      local first, passed = nil, {}
      for _, user in ipairs(users) do
        -- The head, and whether a job follows it (so the ring knows this user's next turn).
        local heads = redis.call('LRANGE', 'queue:' .. tier .. ':' .. user, 0, 1)
        local head = heads[1]
        if not head then
          redis.call('ZREM', ring, user)
        elseif eligible(tier, user) then
          local fields = redis.call('HMGET', 'job:' .. head, 'skips', 'model', 'trace', 'since')
          local skips, model = tonumber(fields[1] or 0), fields[2]
          local kept = {fields[3], fields[4], #heads > 1}
          if not first then first = {user, head, kept} end
          -- A job passed over often enough is taken now: a cold model waits a bounded number of swaps.
          if skips >= tonumber(cfg.max_skips) then return tier, user, head, 'starved', kept end
          if next(cfg.warm) == nil or (model and warm[model]) then
            for _, job in ipairs(passed) do redis.call('HINCRBY', 'job:' .. job, 'skips', 1) end
            return tier, user, head, (next(cfg.warm) == nil) and 'next' or 'warm', kept
          end
          table.insert(passed, head)
        end
      end
      if first then return tier, first[1], first[2], 'cold', first[3] end
    end
  end
  return nil
end

-- 3. Batch companions: waiting jobs of the leader's band with its batch key (model, size, steps,
-- guidance), in the band's round-robin order, one per user per round, within the users' caps.
-- Lower bands never ride along: a bigger batch slows each member, and a cheaper plan's job must
-- not slow a dearer one's. Each user's list is searched only BATCH_SCAN_DEPTH deep.
local BATCH_SCAN_DEPTH = 8
local function add_companions(tier, leader, claimed)
  local key = redis.call('HGET', 'job:' .. leader, 'batch')
  if not key or key == '' then return end
  local users = redis.call('ZRANGE', 'queue:' .. tier .. ':ring', 0, tonumber(cfg.lookahead) - 1)
  local size, grew = 1, true
  while grew and size < max_batch do
    grew = false
    for _, user in ipairs(users) do
      if size < max_batch and eligible(tier, user) then
        local list = 'queue:' .. tier .. ':' .. user
        for _, job in ipairs(redis.call('LRANGE', list, 0, BATCH_SCAN_DEPTH - 1)) do
          local fields = redis.call('HMGET', 'job:' .. job, 'batch', 'trace', 'since')
          if fields[1] == key then
            local parts = take(tier, user, job, 'batched', {fields[2], fields[3]})
            for _, part in ipairs(parts) do table.insert(claimed, part) end
            size, grew = size + 1, true
            break
          end
        end
      end
    end
  end
end

local tier, user, job, reason, fields = choose()
if not tier then
  -- Nothing is eligible for any worker (caps and bounds are the same for all; warm models only
  -- order): the wake tokens left from busier times would only wake idle workers to claim nothing.
  redis.call('DEL', 'queue:signal')
  return false
end
local claimed = take(tier, user, job, reason, fields)
if max_batch > 1 then add_companions(tier, job, claimed) end
return table.concat(claimed, ' ')
"""

# Queue positions (1-based) of several waiting jobs of one user in one band, reading the queues
# once: the user's own list, every job waiting in the bands served before this one, and how far
# each other user of this band gets ahead under round-robin. `jobs` and `bands` (by priority) are
# Lua arrays. -1 for a job that is not waiting.
_POSITIONS_FUNCTION = """
local function positions_of(tier, user, jobs, bands)
  local index_of = {}
  for i, job in ipairs(redis.call('LRANGE', 'queue:' .. tier .. ':' .. user, 0, -1)) do
    index_of[job] = i - 1
  end
  local ahead_in_bands = 0
  local others = {}
  for _, band in ipairs(bands) do
    local ring = 'queue:' .. band .. ':ring'
    if band == tier then
      local mine = tonumber(redis.call('ZSCORE', ring, user) or 0)
      local entries = redis.call('ZRANGE', ring, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        if entries[j] ~= user then
          local waiting = redis.call('LLEN', 'queue:' .. band .. ':' .. entries[j])
          -- A user ahead in the ring's order (score, then name, as ZRANGE orders) is served
          -- before this one in every round, so gets one turn more.
          local score = tonumber(entries[j + 1])
          local extra_turn = 0
          if score < mine or (score == mine and entries[j] < user) then extra_turn = 1 end
          others[#others + 1] = {waiting, extra_turn}
        end
      end
      break
    end
    for _, other in ipairs(redis.call('ZRANGE', ring, 0, -1)) do
      ahead_in_bands = ahead_in_bands + redis.call('LLEN', 'queue:' .. band .. ':' .. other)
    end
  end
  local positions = {}
  for k, job in ipairs(jobs) do
    local index = index_of[job]
    if index == nil then
      positions[k] = -1
    else
      local ahead = ahead_in_bands + index
      for _, other in ipairs(others) do
        ahead = ahead + math.min(other[1], index + other[2])
      end
      positions[k] = ahead + 1
    end
  end
  return positions
end
"""

# ARGV: tier, user, n, n job ids, then the bands by priority.
_POSITIONS = (
    _POSITIONS_FUNCTION
    + """
local count = tonumber(ARGV[3])
local jobs, bands = {}, {}
for i = 4, 3 + count do jobs[#jobs + 1] = ARGV[i] end
for i = 4 + count, #ARGV do bands[#bands + 1] = ARGV[i] end
return positions_of(ARGV[1], ARGV[2], jobs, bands)
"""
)

_REMOVE = """
local list = 'queue:' .. ARGV[1] .. ':' .. ARGV[2]
local ring = 'queue:' .. ARGV[1] .. ':ring'
local removed = redis.call('LREM', list, 0, ARGV[3])
redis.call('ZREM', 'queue:' .. ARGV[1] .. ':waiting', ARGV[3])
redis.call('DEL', 'job:' .. ARGV[3])
if redis.call('LLEN', list) == 0 then
  local served = redis.call('ZSCORE', ring, ARGV[2])
  if served then redis.call('HSET', 'queue:' .. ARGV[1] .. ':last_served', ARGV[2], served) end
  redis.call('ZREM', ring, ARGV[2])
end
return removed
"""

_RENEW = """
if redis.call('HGET', 'lease:' .. ARGV[1], 'worker') ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', 'leases', now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# A user's running count, less the job that stopped running; the key goes when it reaches 0.
_STOP_RUNNING_FUNCTION = """
local function stop_running(user)
  if user and redis.call('DECR', 'running:' .. user) <= 0 then redis.call('DEL', 'running:' .. user) end
end
"""

# One definition of "end a lease", shared by the release script and the claim script (which
# releases a worker's previous job in the same round trip as its next claim).
_RELEASE_FUNCTION = (
    _STOP_RUNNING_FUNCTION
    + """
local function release(job, worker)
  if job == '' then return 0 end
  local lease = redis.call('HMGET', 'lease:' .. job, 'worker', 'user')
  if lease[1] ~= worker then return 0 end
  stop_running(lease[2])
  redis.call('DEL', 'lease:' .. job, 'job:' .. job)
  redis.call('ZREM', 'leases', job)
  return 1
end
"""
)

_RELEASE = _RELEASE_FUNCTION + "return release(ARGV[1], ARGV[2])\n"
_CLAIM = _RELEASE_FUNCTION + _CLAIM_BODY
_ENQUEUE = _POSITIONS_FUNCTION + _ENQUEUE_BODY

# A lease that lapsed (its worker died or stalled): forget it so the job can be delivered again.
# ARGV: job. Returns 1 if an expired lease was dropped.
_DROP_EXPIRED = (
    _STOP_RUNNING_FUNCTION
    + """
local expiry = redis.call('ZSCORE', 'leases', ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if expiry and tonumber(expiry) > now then return 0 end
stop_running(redis.call('HGET', 'lease:' .. ARGV[1], 'user'))
redis.call('DEL', 'lease:' .. ARGV[1])
redis.call('ZREM', 'leases', ARGV[1])
return 1
"""
)


@dataclass(frozen=True)
class Claim:
    generation_id: uuid.UUID
    user_id: uuid.UUID
    tier: str
    # Why this job: aged (waited past its band's bound), warm (its model is loaded here), cold
    # (no warm job within the lookahead), starved (passed over max_skips times), next (no
    # preference given), batched (rides in the batch of the job claimed with it).
    reason: str = "next"
    # The W3C traceparent of the request that queued the job ('' when none was recorded), so
    # that the worker's spans join its trace.
    trace_context: str = field(default="", compare=False)
    # How long the job waited in its band, from its enqueue to this claim.
    waited_seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class SchedulingPolicy:
    """How the claim script chooses. Bands are strict, except that a job that would otherwise
    start later than its band's aging bound goes first; users in a band take turns; a user at
    their plan's concurrency cap waits without blocking others."""

    aging_seconds: Mapping[str, float]
    concurrency_caps: Mapping[str, int]
    affinity_lookahead: int = 32
    affinity_max_skips: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "_configs", {})

    def script_config(self, warm_models: Sequence[str]) -> str:
        """The claim script's configuration, encoded once per warm-model set: a worker claims
        thousands of times with the same answer."""
        configs: dict[tuple[str, ...], str] = self._configs  # type: ignore[attr-defined]
        key = tuple(warm_models)
        if key not in configs:
            configs[key] = json.dumps(
                {
                    "tiers": list(PLANS_BY_PRIORITY),
                    "aging_ms": {tier: int(seconds * 1000) for tier, seconds in self.aging_seconds.items()},
                    "caps": dict(self.concurrency_caps),
                    "warm": list(key),
                    "lookahead": self.affinity_lookahead,
                    "max_skips": self.affinity_max_skips,
                }
            )
        return configs[key]


class ClaimCycle:
    """A worker's time from one claim to its next while it has work: about how long until it
    claims again, so the horizon to pass to its next claim. Time spent idle does not count."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._claiming_at = 0.0
        self._busy_since: float | None = None

    def horizon(self) -> float:
        """Call right before claiming: the horizon for this claim."""
        now = time.monotonic()
        if self._busy_since is not None:
            self.seconds, self._busy_since = now - self._busy_since, None
        self._claiming_at = now
        return self.seconds

    def got_work(self) -> None:
        """The claim returned jobs: the cycle runs from its start to the next claim's."""
        self._busy_since = self._claiming_at


@dataclass(frozen=True)
class Backlog:
    """The work in the queue at one instant: what waits, by band, and what workers hold."""

    waiting: dict[str, int]
    leased: int

    @property
    def depth(self) -> int:
        """Jobs that need a worker now: waiting or running. The GPU workers scale on it (KEDA),
        so that a busy fleet with an empty queue is not scaled down under its running jobs."""
        return sum(self.waiting.values()) + self.leased


class TierQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._positions = redis.register_script(_POSITIONS)
        self._remove = redis.register_script(_REMOVE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._drop_expired = redis.register_script(_DROP_EXPIRED)

    async def enqueue(
        self,
        tier: str,
        user_id: uuid.UUID,
        generation_id: uuid.UUID,
        model: str,
        batch_key: str = "",
        *,
        with_position: bool = False,
    ) -> int | None:
        """Queue the job. `batch_key` names the run settings a batch shares; jobs with equal keys
        may be claimed together ('' keeps the job out of batches). `with_position` also answers
        the job's position (1 when it is next), as `position` would right after, in the same
        round trip; reading it costs Redis a look at every user's queue in the bands ahead."""
        position = await self._enqueue(
            args=[
                tier,
                str(user_id),
                str(generation_id),
                model,
                batch_key,
                current_trace_context(),
                *(PLANS_BY_PRIORITY if with_position else ()),
            ]
        )
        return None if position is None else int(position)

    async def claim(
        self,
        worker_id: str,
        lease_seconds: float,
        policy: SchedulingPolicy,
        warm_models: Sequence[str] = (),
        *,
        release: uuid.UUID | None = None,
        horizon_seconds: float = 0.0,
    ) -> Claim | None:
        """Atomically choose the next job under `policy` and lease it to `worker_id`. One script,
        so no job is ever handed to two workers. `release` ends the worker's previous lease in
        the same round trip. `horizon_seconds` is how long until the worker expects to claim
        again (`ClaimCycle`): a job whose aging bound passes within it is due now, so that no
        job starts later than its bound."""
        claims = await self.claim_batch(
            worker_id,
            lease_seconds,
            policy,
            warm_models,
            max_batch=1,
            release=(release,) if release else (),
            horizon_seconds=horizon_seconds,
        )
        return claims[0] if claims else None

    async def claim_batch(
        self,
        worker_id: str,
        lease_seconds: float,
        policy: SchedulingPolicy,
        warm_models: Sequence[str] = (),
        *,
        max_batch: int,
        release: Sequence[uuid.UUID] = (),
        horizon_seconds: float = 0.0,
    ) -> list[Claim]:
        """Like `claim`, then up to `max_batch - 1` companions in the same script: waiting jobs
        of the first job's band with its batch key, each under its own lease. Empty when no job
        is eligible. `release` ends the worker's previous leases first."""
        claimed = await self._claim(
            args=[
                worker_id,
                int(lease_seconds * 1000),
                policy.script_config(warm_models),
                " ".join(str(job) for job in release),
                max_batch,
                int(horizon_seconds * 1000),
            ]
        )
        if not claimed:
            return []
        parts = (claimed.decode() if isinstance(claimed, bytes) else claimed).split()
        return [
            Claim(
                uuid.UUID(job),
                uuid.UUID(user),
                tier,
                reason,
                trace_context="" if trace == "-" else trace,
                waited_seconds=int(waited_ms) / 1000,
            )
            for job, user, tier, reason, trace, waited_ms in zip(
                *(parts[index::6] for index in range(6)), strict=True
            )
        ]

    async def depth(self, tier: str) -> int:
        """Jobs waiting in a band (not yet claimed)."""
        return int(await self.redis.zcard(f"queue:{tier}:waiting"))

    async def backlog(self) -> Backlog:
        """Every band's waiting jobs and the leased ones, read in one MULTI so that a job moving
        from waiting to leased between two reads is never counted twice or not at all."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for tier in PLANS_BY_PRIORITY:
                pipe.zcard(f"queue:{tier}:waiting")
            pipe.zcard("leases")
            *waiting, leased = await pipe.execute()
        return Backlog(
            waiting=dict(zip(PLANS_BY_PRIORITY, map(int, waiting), strict=True)), leased=int(leased)
        )

    async def drop_expired_lease(self, generation_id: uuid.UUID) -> bool:
        """Forget a lease that lapsed; True if there was no live lease left."""
        return bool(await self._drop_expired(args=[str(generation_id)]))

    async def advertise_worker(
        self,
        worker_id: str,
        *,
        loaded: Sequence[str],
        loading: Sequence[str],
        metrics: Mapping[str, float],
        ttl_seconds: float,
    ) -> None:
        """`worker:{id}`: the models a worker has warm and is loading, and its registry counters,
        expiring with the worker."""
        key = f"worker:{worker_id}"
        await self.redis.hset(
            key,
            mapping={
                "loaded": json.dumps(list(loaded)),
                "loading": json.dumps(list(loading)),
                "metrics": json.dumps(dict(metrics)),
            },
        )
        await self.redis.expire(key, int(ttl_seconds))

    async def wait_for_work(self, timeout_seconds: float) -> None:
        await self.redis.blpop(["queue:signal"], timeout=timeout_seconds)

    async def position(self, tier: str, user_id: uuid.UUID, generation_id: uuid.UUID) -> int | None:
        """1 when the job is next; None when it is not waiting in the queue."""
        return (await self.positions(tier, user_id, [generation_id]))[generation_id]

    async def positions(
        self, tier: str, user_id: uuid.UUID, generation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, int | None]:
        """The positions of several of one user's jobs in `tier`, in one round trip that reads
        the queues once, however many jobs are asked about."""
        if not generation_ids:
            return {}
        ids = [str(generation_id) for generation_id in generation_ids]
        result = await self._positions(args=[tier, str(user_id), len(ids), *ids, *PLANS_BY_PRIORITY])
        return {
            generation_id: None if int(position) < 0 else int(position)
            for generation_id, position in zip(generation_ids, result, strict=True)
        }

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

    async def cancels_requested(self, generation_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of the running jobs have a pending cancel, in one round trip."""
        if not generation_ids:
            return set()
        flags = await self.redis.mget([f"cancel:{generation_id}" for generation_id in generation_ids])
        return {generation_id for generation_id, flag in zip(generation_ids, flags, strict=True) if flag}
