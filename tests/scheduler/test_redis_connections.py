"""Every Redis client the product builds, on a real Redis: no timer around each command, and the
kernel's bounds on a dead peer set on the connection's own socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from support.servers import running_redis

from services.common.redis_pool import DEAD_PEER_SECONDS, redis_client, shared_redis
from services.common.settings import ServerSettings


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("connections-redis")
    with running_redis(home) as server:
        yield server.url


async def assert_socket_bounds(client: Redis) -> None:
    connection = await client.connection_pool.get_connection()
    try:
        await connection.send_command("PING")
        assert await connection.read_response() == b"PONG"
        # redis-py 8's default would be 5 s: every write a task of its own, every read a timer.
        assert connection.socket_timeout is None
        sock = connection._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == DEAD_PEER_SECONDS * 1000
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + interval * probes == DEAD_PEER_SECONDS
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()
        await client.connection_pool.disconnect()  # a pool passed in is not the client's to close


async def test_a_services_shared_pool_bounds_a_dead_peer_by_socket_options(redis_url: str) -> None:
    settings = ServerSettings.model_construct(
        redis_url=redis_url, redis_max_connections=4, redis_pool_timeout_seconds=5.0
    )
    await assert_socket_bounds(shared_redis(settings))


async def test_a_clients_own_pool_bounds_a_dead_peer_by_socket_options(redis_url: str) -> None:
    # The worker's client, the event hub's reader and the production checks' probe.
    await assert_socket_bounds(redis_client(redis_url, client_name="probe"))


def test_a_unix_socket_url_gets_no_tcp_options(tmp_path: Path) -> None:
    client = redis_client(f"unix://{tmp_path / 'redis.sock'}")
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None
    assert "socket_keepalive_options" not in client.connection_pool.connection_kwargs
