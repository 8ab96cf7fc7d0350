"""An embedded Redis or PostgreSQL of a test's own, for tests of one component without a mesh:
started on a free port under `home`, stopped when the block ends."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from services.embedded.postgres import EmbeddedPostgres
from services.embedded.process import free_port
from services.embedded.redis import EmbeddedRedis

Server = TypeVar("Server", EmbeddedRedis, EmbeddedPostgres)


@contextmanager
def _running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.process is not None
        server.process.stop()


def running_redis(home: Path) -> contextlib.AbstractContextManager[EmbeddedRedis]:
    return _running(EmbeddedRedis(home / "data", free_port(), home / "logs"))


def running_postgres(home: Path) -> contextlib.AbstractContextManager[EmbeddedPostgres]:
    """With fsync off, which only tests may use (production refuses it)."""
    superuser_password = secrets.token_urlsafe(16)
    return _running(
        EmbeddedPostgres(
            home / "data", free_port(), home / "logs", superuser_password=superuser_password, fsync=False
        )
    )
