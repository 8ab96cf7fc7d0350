"""Failpoints: dev-only hooks that hold a job at a chosen point until a test lets it go, as
TiKV's fail-rs or FoundationDB's buggify do. A test that needs a job mid-run parks it there
instead of racing a fast job on the tiny model.

A process arms failpoints with PINGVAS_FAILPOINTS (refused when PINGVAS_ENV=prod). Armed, the
worker asks Redis once per job whether the test wants that job parked; the denoising loop then
pays one comparison per step. Disarmed, it pays only that comparison.

Keys (the test and the worker are different processes; Redis is what they share):

    failpoint:{name}                    HASH prompt -> step: jobs with this prompt park at
                                        `name` after that step (the test arms it before it
                                        submits, so no job can get past it first)
    failpoint:{name}:{job}:parked       set while the job is parked, to the step it parked at
    failpoint:{name}:{job}:release      LIST: a push lets the parked job go on
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from redis.asyncio import Redis

# How long one wait for the release lasts before the parked job looks again whether its run was
# interrupted (cancel, lost lease, shutdown): a parked job must not outlive its own run.
_RELEASE_POLL_SECONDS = 0.5
# Keys of a failpoint a test forgot to release or disarm expire with the test run.
_KEY_TTL_SECONDS = 3600


class Failpoint(StrEnum):
    """Every failpoint a process can arm."""

    # The worker parks a job after a denoising step, its progress up to that step published.
    PARK_AFTER_STEP = "park_after_step"


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

    async def park_step(self, failpoint: Failpoint, prompt: str) -> int | None:
        """After which step a job with this prompt parks; None when it does not."""
        if failpoint not in self.armed:
            return None
        step = await self.redis.hget(armed_key(failpoint), prompt)
        return int(step) if step is not None else None

    async def park(self, failpoint: Failpoint, job: str, step: int, interrupted: Callable[[], bool]) -> None:
        """Hold here until the test releases the job or its run is interrupted."""
        await self.redis.set(parked_key(failpoint, job), step, ex=_KEY_TTL_SECONDS)
        try:
            while not interrupted():
                if await self.redis.blpop([release_key(failpoint, job)], timeout=_RELEASE_POLL_SECONDS):
                    return
        finally:
            await self.redis.delete(parked_key(failpoint, job))
