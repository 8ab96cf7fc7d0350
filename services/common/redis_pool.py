"""How every Pingvas process connects to Redis.

A service shares one blocking pool for all its short commands (its queue, event logs, stream
slots, rate limits), so that under a burst a command waits for a connection instead of failing
with "Too many connections". Every client, pooled or not, is built with the same socket options.

No timeout on each command's socket reads and writes. redis-py 8 sets one (5 s) by default, and on
Python 3.11 it runs every command's write as a task of its own (`asyncio.wait_for`) and its read
under a timer: a third of a worker's CPU per claimed job (`bench/dispatch_throughput.py`). The
kernel bounds a dead peer instead, at no cost per command: keepalive probes find a connection that
went silent, and TCP_USER_TIMEOUT drops one whose sent data stays unacknowledged. Blocking reads
(BLPOP, XREAD BLOCK) pass their own bounds; connecting keeps redis-py's timeout.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.driver_info import DriverInfo

from services.common.settings import ServerSettings

# A connection to a peer that stopped answering is dropped within about this long.
DEAD_PEER_SECONDS = 25
_KEEPALIVE_IDLE_SECONDS = 10
_KEEPALIVE_INTERVAL_SECONDS = 5
_KEEPALIVE_PROBES = 3  # idle 10 s, then 3 probes 5 s apart: 25 s


def _tcp_options() -> dict[int, int]:
    """Keepalive and unacknowledged-data bounds, those this platform names (Linux has all)."""
    wanted = {
        "TCP_KEEPIDLE": _KEEPALIVE_IDLE_SECONDS,
        "TCP_KEEPINTVL": _KEEPALIVE_INTERVAL_SECONDS,
        "TCP_KEEPCNT": _KEEPALIVE_PROBES,
        "TCP_USER_TIMEOUT": DEAD_PEER_SECONDS * 1000,  # milliseconds
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


# What each connection tells Redis about its client (CLIENT SETINFO), built once: left to
# redis-py, every new connection reads the package's metadata from disk for its version, about
# 0.6 ms of CPU, paid by each of a burst of commands that grows the pool.
_DRIVER_INFO = DriverInfo()


def connection_options(url: str) -> dict[str, Any]:
    """The options of every Redis connection, for `Redis.from_url` or a pool's `from_url`. TCP
    options only for TCP URLs: a unix socket's connection takes none."""
    options: dict[str, Any] = {"socket_timeout": None, "driver_info": _DRIVER_INFO}
    if urlsplit(url).scheme in ("redis", "rediss"):
        options |= {"socket_keepalive": True, "socket_keepalive_options": _tcp_options()}
    return options


def redis_client(url: str, **kwargs: Any) -> Redis:
    """A client with its own pool (a worker's, the event hub's blocking reader, a one-off probe);
    `kwargs` are `Redis.from_url`'s (max_connections, client_name)."""
    return Redis.from_url(url, **connection_options(url), **kwargs)


def shared_redis(settings: ServerSettings) -> Redis:
    """A service's one pool for its short commands."""
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_seconds,
            **connection_options(settings.redis_url),
        )
    )
