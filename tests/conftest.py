"""The real mesh, once per test session: `pingvas up` in a temporary PINGVAS_HOME.

Everything runs for real: embedded PostgreSQL 16 and Redis 6.2, the four services, a GPU worker
on the tiny SD model, and Envoy. Tests reach it the ways users do (REST, gRPC and gRPC-Web
through the gateway) and check the truth in PostgreSQL and Redis directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import psycopg2
import psycopg2.extras
import pytest
import redis
from support.lemonsqueezy import LemonSqueezyServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningMesh:
    home: Path
    gateway_url: str
    gateway_target: str
    database_url: str
    schema: str
    redis_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def log(self, component: str) -> str:
        return (self.home / "logs" / f"{component}.log").read_text(errors="replace")

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with (
            psycopg2.connect(self.database_url) as conn,
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor,
        ):
            cursor.execute(f"SET search_path TO {self.schema}")
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description else []
        conn.close()
        return [dict(row) for row in rows]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def pingvas(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the `pingvas` command the way a user would, against this mesh."""
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args],
            env={**self.env, **(env or {})},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


LEMONSQUEEZY_API_KEY = "test-lemonsqueezy-key"
LEMONSQUEEZY_WEBHOOK_SECRET = "test-lemonsqueezy-signing-secret"


def start_mesh(home: Path, models_dir: Path, *, extra_env: dict[str, str] | None = None) -> RunningMesh:
    port = free_port()
    env = {
        **os.environ,
        "PINGVAS_HOME": str(home),
        "PINGVAS_HTTP_PORT": str(port),
        "PINGVAS_MODELS_DIR": str(models_dir),
        "PINGVAS_PRELOAD_MODELS": '["tiny-sd"]',
        "PINGVAS_LEMONSQUEEZY_API_KEY": LEMONSQUEEZY_API_KEY,
        "PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET": LEMONSQUEEZY_WEBHOOK_SECRET,
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    output = open(home / "up.out", "wb")  # noqa: SIM115 - lives as long as the mesh
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up"],
        env=env,
        cwd=REPO_ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runtime = home / "run" / "mesh.json"
    deadline = time.monotonic() + 300
    while not runtime.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output.close()
            raise RuntimeError(f"pingvas up failed:\n{(home / 'up.out').read_text(errors='replace')[-5000:]}")
        time.sleep(0.2)
    mesh = json.loads(runtime.read_text())
    return RunningMesh(
        home=home,
        gateway_url=mesh["gateway_url"],
        gateway_target=f"127.0.0.1:{port}",
        database_url=mesh["database_url"],
        schema=mesh["db_schema"],
        redis_url=mesh["redis_url"],
        env=env,
        process=process,
        output=output,
    )


def stop_mesh(mesh: RunningMesh) -> int:
    mesh.process.send_signal(signal.SIGTERM)
    try:
        return mesh.process.wait(timeout=120)
    finally:
        mesh.output.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding `tiny-sd` and `tiny-sd-b`, built by the product's own command."""
    from gpu_inference.tiny import create_tiny_models

    directory = tmp_path_factory.mktemp("models")
    create_tiny_models(directory)
    return directory


@pytest.fixture(scope="session")
def lemonsqueezy() -> Iterator[LemonSqueezyServer]:
    """Lemon Squeezy's API on a local port: the billing service's client talks to it as to the
    real one, and it signs webhooks with the secret the mesh verifies."""
    with LemonSqueezyServer(
        api_key=LEMONSQUEEZY_API_KEY, webhook_secret=LEMONSQUEEZY_WEBHOOK_SECRET
    ) as server:
        yield server


@pytest.fixture(scope="session")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, lemonsqueezy: LemonSqueezyServer
) -> Iterator[RunningMesh]:
    running = start_mesh(
        tmp_path_factory.mktemp("pingvas-home"),
        models_dir,
        extra_env={"PINGVAS_LEMONSQUEEZY_API_URL": lemonsqueezy.url},
    )
    yield running
    stop_mesh(running)


@dataclass
class Account:
    email: str
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@pytest.fixture
def rest(mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.gateway_url, timeout=60) as client:
        yield client


@pytest.fixture
def gateway_channel(mesh: RunningMesh) -> Iterator[grpc.Channel]:
    """Native gRPC (h2c) through Envoy, not to a service directly."""
    with grpc.insecure_channel(mesh.gateway_target) as channel:
        yield channel


@pytest.fixture
def new_account(rest: httpx.Client) -> Any:
    """Signs up a fresh user through dev login; each test gets its own tenant."""

    def sign_up(prefix: str = "user") -> Account:
        email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
        reply = rest.post("/api/v1/auth/dev-login", json={"email": email})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        return Account(email=email, token=body["accessToken"], user_id=body["user"]["id"])

    return sign_up


@pytest.fixture
def ledger_sums_to_every_balance(mesh: RunningMesh) -> Iterator[None]:
    """After the test: every balance and every hold total is exactly the sum of the append-only
    ledger entries, and none is negative."""
    yield
    mismatches = mesh.sql(
        """
        SELECT a.user_id FROM credit_accounts a LEFT JOIN credit_entries e ON e.user_id = a.user_id
        GROUP BY a.user_id, a.balance, a.held
        HAVING a.balance <> coalesce(sum(e.amount), 0) OR a.held <> coalesce(sum(e.held_change), 0)
            OR a.balance < 0 OR a.held < 0 OR a.held > a.balance
        """
    )
    assert mismatches == []
