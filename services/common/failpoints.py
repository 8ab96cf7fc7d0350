"""Failpoints: dev-only hooks that hold a job at a chosen point until a test lets it go, as
TiKV's fail-rs or FoundationDB's buggify do. A test that needs a job mid-run parks it there
instead of racing a fast job on the tiny model.

A process arms failpoints with PINGVAS_FAILPOINTS (refused when PINGVAS_ENV=prod). Armed, the
worker asks Redis once per job whether the test wants that job parked; the denoising loop then
pays one comparison per step. Disarmed, it pays only that comparison.

Keys (the test and the worker are different processes; Redis is what they share):

    failpoint:{name}                    HASH subject -> step: jobs with this prompt park at
                                        `name` (after that step, for PARK_AFTER_STEP; the
                                        store's failpoints ignore it), downloads of this model
                                        after that many files. The test arms it before it
                                        starts them, so none can get past it first
    failpoint:{name}:{job}:parked       set while the job is parked, to the step it parked at
    failpoint:{name}:{job}:release      LIST: a push lets the parked job go on
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import RedisError

# One BLPOP's wait for the release; short, so that a dropped connection is soon noticed.
_RELEASE_WAIT_SECONDS = 1.0
# Keys of a failpoint a test forgot to release or disarm expire with the test run.
_KEY_TTL_SECONDS = 3600


class Failpoint(StrEnum):
    """Every failpoint a process can arm."""

    # The worker parks a job after a denoising step, its progress up to that step published.
    PARK_AFTER_STEP = "park_after_step"
    # The worker parks a job whose image is made, before it uploads the PNG and thumbnail.
    PARK_BEFORE_STORE = "park_before_store"
    # The worker parks a job whose image objects are stored, before its success is recorded.
    PARK_BEFORE_RECORD = "park_before_record"
    # A model download into the cache parks after that many files, holding the model's lock.
    PARK_MID_DOWNLOAD = "park_mid_download"


def armed_key(failpoint: Failpoint) -> str:
    return f"failpoint:{failpoint}"


def parked_key(failpoint: Failpoint, job: str) -> str:
    return f"failpoint:{failpoint}:{job}:parked"


def release_key(failpoint: Failpoint, job: str) -> str:
    return f"failpoint:{failpoint}:{job}:release"


class Failpoints:
    """The failpoints a process armed, and the park/release protocol over Redis."""

    def __init__(self, redis: Redis, armed: frozenset[Failpoint]) -> None:
        self.redis = redis
        self.armed = armed

    async def park_steps(self, failpoint: Failpoint, subject: str) -> frozenset[int]:
        """After which steps a job with this prompt (or a download of this model, after how many
        files) parks; none when it does not. The armed value is one number or several,
        comma-separated: a job parks, and waits for its release, after each."""
        if failpoint not in self.armed:
            return frozenset()
        armed = await self.redis.hget(armed_key(failpoint), subject)
        if armed is None:
            return frozenset()
        text = armed.decode() if isinstance(armed, bytes) else str(armed)
        return frozenset(int(step) for step in text.split(","))

    async def park_step(self, failpoint: Failpoint, subject: str) -> int | None:
        """The first step (or file count) at which it parks; None when it does not."""
        steps = await self.park_steps(failpoint, subject)
        return min(steps) if steps else None

    async def parks(self, failpoint: Failpoint, subject: str) -> bool:
        """Whether a job with this prompt (or a download of this model) parks at `failpoint`."""
        return await self.park_step(failpoint, subject) is not None

    async def park(self, failpoint: Failpoint, job: str, step: int, interrupted: asyncio.Event) -> None:
        """Hold here until the test releases the job or its run is interrupted (cancel, lost
        lease, shutdown), whichever comes first: a parked job must not outlive its own run."""
        await self.redis.set(parked_key(failpoint, job), step, ex=_KEY_TTL_SECONDS)
        released = asyncio.create_task(self._released(failpoint, job))
        ended = asyncio.create_task(interrupted.wait())
        try:
            await asyncio.wait([released, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            ended.cancel()
            with contextlib.suppress(RedisError):  # it expires anyway
                await self.redis.delete(parked_key(failpoint, job))

    async def _released(self, failpoint: Failpoint, job: str) -> None:
        while not await self._pop_release(failpoint, job):
            pass

    async def _pop_release(self, failpoint: Failpoint, job: str) -> bool:
        try:
            return bool(await self.redis.blpop([release_key(failpoint, job)], timeout=_RELEASE_WAIT_SECONDS))
        except RedisError:
            # Redis restarting, or the connection dropped as dead (services/common/redis_pool.py):
            # the job stays parked, and its run's own checks decide what happens to it.
            await asyncio.sleep(_RELEASE_WAIT_SECONDS)
            return False
