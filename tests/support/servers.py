"""An embedded Redis or PostgreSQL of a test's own, for tests of one component without a mesh:
started on a free port under `home`, stopped when the block ends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.embedded.postgres import EmbeddedPostgres
from services.embedded.process import free_port
from services.embedded.redis import EmbeddedRedis


@contextmanager
def running_redis(home: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(home / "data", free_port(), home / "logs")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.process is not None
        server.process.stop()


@contextmanager
def running_postgres(home: Path) -> Iterator[EmbeddedPostgres]:
    """With fsync off, which only tests may use (production refuses it)."""
    server = EmbeddedPostgres(
        home / "data", free_port(), home / "logs", superuser_password=secrets.token_urlsafe(16), fsync=False
    )
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.process is not None
        server.process.stop()
