"""Request rates per principal (OWASP API4), by plan, counted with the `limits` library in Redis.

One fixed-window counter per principal is shared by every service and replica, so a user's
requests count the same wherever Envoy sends them:

    ratelimit:LIMITER/principal/{principal id}/{amount}/{multiple}/{granularity}   (its count)

The identifier is the principal's id, not the credential: a user signed in twice, or (later) one
of their API keys, draws on the same allowance. A fixed window, because its end is exact: the
RetryInfo a refused caller gets is when its next request is admitted.

Routes that run before sign-in are limited per client IP at the gateway instead (gateway/envoy.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import limits
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from services.common.auth import Principal
from services.common.errors import RateLimited
from services.common.plans import PlanReader, UserPlans
from services.common.settings import RateLimitSettings

log = logging.getLogger(__name__)

KEY_PREFIX = "ratelimit"
# The plan whose rate applies to a plan the settings do not name, or a user that is gone.
FALLBACK_PLAN = "free"


def rate_limit_storage(redis: Redis) -> RedisStorage:
    """The `limits` storage on the service's shared Redis pool (redis-py, already a dependency):
    a pool of its own would refuse calls with "Too many connections" under a burst."""
    return RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=KEY_PREFIX,
        wrap_exceptions=True,
        # A documented option of RedisStorage; its signature types **options more narrowly.
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
    )


def principal_rate_limiter(redis: Redis, plans: UserPlans) -> PrincipalRateLimiter:
    """The limiter every service's composition root builds, from RateLimitSettings."""
    return PrincipalRateLimiter(
        rate_limit_storage(redis), rates_by_plan=RateLimitSettings().per_user, plan_of=plans.plan
    )


class PrincipalRateLimiter:
    """Admits a principal's request or raises RateLimited with the time its window ends."""

    def __init__(
        self,
        storage: RedisStorage,
        *,
        rates_by_plan: Mapping[str, str],
        plan_of: PlanReader,
    ) -> None:
        self.storage = storage
        self.strategy = FixedWindowRateLimiter(storage)
        self.rates = {plan: limits.parse(rate) for plan, rate in rates_by_plan.items()}
        self.plan_of = plan_of

    async def admit(self, principal: Principal) -> None:
        plan = await self.plan_of(principal.user_id)
        rate = self.rates.get(plan or FALLBACK_PLAN) or self.rates[FALLBACK_PLAN]
        identity = ("principal", str(principal.user_id))
        try:
            if await self.strategy.hit(rate, *identity):
                return
            window = await self.strategy.get_window_stats(rate, *identity)
        except StorageError as error:
            # Redis only delivers: while it is away the API stays up, unlimited, rather than down.
            log.warning("rate limit not checked (Redis unavailable): %s", error)
            return
        retry_after = max(0.0, window.reset_time - time.time())
        raise RateLimited(
            f"more than {rate.amount} requests in {_window(rate)}; retry in {retry_after:.1f}s",
            retry_after_seconds=retry_after,
            metadata={"limit": str(rate.amount), "window_seconds": str(rate.get_expiry())},
        )


def _window(rate: limits.RateLimitItem) -> str:
    seconds = rate.get_expiry()
    return f"{seconds} second{'s' if seconds != 1 else ''}"
