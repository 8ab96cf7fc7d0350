"""A service's shared Redis client: one blocking pool for all its short commands (its queue,
event logs, stream slots, rate limits), so that under a burst a command waits for a connection
instead of failing with "Too many connections"."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from services.common.settings import ServerSettings


def shared_redis(settings: ServerSettings) -> Redis:
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_seconds,
        )
    )
