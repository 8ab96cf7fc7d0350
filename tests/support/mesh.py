"""Starting and stopping the real mesh (`pingvas up`) for tests, and reading its truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import psycopg2
import psycopg2.extras
import redis

from services.common.settings import ObjectStoreSettings
from services.embedded.process import free_port
from services.embedded.seaweedfs import S3Credentials

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningMesh:
    home: Path
    gateway_url: str
    gateway_target: str
    # The superuser's: tests read (and arrange) the truth across every tenant with it.
    admin_database_url: str
    # The environment's roles, as services and migrations connect.
    app_database_url: str
    system_database_url: str
    owner_database_url: str
    schema: str
    redis_url: str
    # S3_ENDPOINT_URL and the keys of the mesh's SeaweedFS, as its processes get them.
    s3_env: dict[str, str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def log(self, component: str) -> str:
        return (self.home / "logs" / f"{component}.log").read_text(errors="replace")

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with (
            psycopg2.connect(self.admin_database_url) as conn,
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor,
        ):
            cursor.execute(f"SET search_path TO {self.schema}")
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description else []
        conn.close()
        return [dict(row) for row in rows]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def object_store(self) -> ObjectStoreSettings:
        """The S3 settings the mesh's processes read, for a test's own `open_image_store`."""
        return ObjectStoreSettings(
            S3_ENDPOINT_URL=self.s3_env["S3_ENDPOINT_URL"],
            access_key_id=self.s3_env["PINGVAS_S3_ACCESS_KEY_ID"],
            secret_access_key=self.s3_env["PINGVAS_S3_SECRET_ACCESS_KEY"],
        )

    def s3(self) -> Any:
        """A boto3 S3 client on the mesh's SeaweedFS, with the mesh's keys."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_env["S3_ENDPOINT_URL"],
            aws_access_key_id=self.s3_env["PINGVAS_S3_ACCESS_KEY_ID"],
            aws_secret_access_key=self.s3_env["PINGVAS_S3_SECRET_ACCESS_KEY"],
            region_name="ap-northeast-2",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

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

    def pingvas_in_background(
        self, *args: str, stdout: Path, stderr: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start the `pingvas` command without waiting, its output going to files a test can
        read while it runs."""
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", *args],
                env={**self.env, **(env or {})},
                cwd=REPO_ROOT,
                stdout=out,
                stderr=err,
            )


# Tests make many requests from one account and sign up many accounts from 127.0.0.1, so every
# test mesh raises the rates far past what they do; the limits have tests of their own, on a mesh
# with low ones (tests/limits/). Queue caps per user are raised for the same reason.
RAISED_LIMITS_ENV = {
    "PINGVAS_RATE_LIMITS_PER_USER": json.dumps({"free": "100000/minute"}),
    "PINGVAS_RATE_LIMITS_SIGN_IN_PER_IP": "100000/minute",
    "PINGVAS_RATE_LIMITS_WEBHOOK_PER_IP": "100000/minute",
    # No plan named: no per-user cap on queued and running generations.
    "PINGVAS_SCHEDULER_MAX_LIVE_PER_USER": "{}",
}

# The `own_mesh` fixture (tests/conftest.py): a name and settings in, a running mesh out.
MeshStarter: TypeAlias = Callable[..., AbstractContextManager["RunningMesh"]]

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
        **RAISED_LIMITS_ENV,
        **(extra_env or {}),
    }
    for variable in ("DATABASE_URL", "SYSTEM_DATABASE_URL", "PINGVAS_ADMIN_DATABASE_URL"):
        env.pop(variable, None)
    env.pop("REDIS_URL", None)
    for variable in ("S3_ENDPOINT_URL", "PINGVAS_S3_ENDPOINT_URL"):
        env.pop(variable, None)
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
    keys = json.loads((home / "s3-credentials.json").read_text())
    return RunningMesh(
        home=home,
        gateway_url=mesh["gateway_url"],
        gateway_target=f"127.0.0.1:{port}",
        admin_database_url=mesh["admin_database_url"],
        app_database_url=mesh["database_url"],
        system_database_url=mesh["system_database_url"],
        owner_database_url=mesh["owner_database_url"],
        schema=mesh["db_schema"],
        redis_url=mesh["redis_url"],
        s3_env=S3Credentials(**keys).env(mesh["s3_endpoint_url"]),
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
