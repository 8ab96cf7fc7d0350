"""A mesh with no GPU worker of its own: each scheduler test starts the real worker processes it
needs (`python -m gpu_inference`), so that it can pause, kill or stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from support.accounts import Account, dev_login
from support.admin import set_plan_and_grant
from support.failpoints import FAILPOINTS_ENV
from support.mesh import MeshStarter, free_port

from services.embedded.process import wait_grpc_serving

REPO_ROOT = Path(__file__).resolve().parents[2]

SCHEDULER_ENV = {
    "PINGVAS_WORKERS": "0",
    "PINGVAS_SCHEDULER_LEASE_SECONDS": "3",
    "PINGVAS_RECONCILE_INTERVAL_SECONDS": "0.5",
    "PINGVAS_SCHEDULER_AGING_SECONDS": '{"enterprise": 600, "studio": 600, "pro": 600, "starter": 600, "free": 4}',
    "PINGVAS_SCHEDULER_MAX_QUEUE_DEPTH": '{"enterprise": 50, "studio": 50, "pro": 50, "starter": 50, "free": 8}',
    "PINGVAS_SCHEDULER_MAX_ATTEMPTS": "2",
    "PINGVAS_SCHEDULER_AFFINITY_MAX_SKIPS": "8",
    **FAILPOINTS_ENV,
}


# Package-scoped: the package runs in one test process (WHOLE_PACKAGES in tests/conftest.py),
# and its mesh stops once the package is done instead of idling through the rest of the session.
@pytest.fixture(scope="package")
def scheduler_mesh(own_mesh: MeshStarter) -> Iterator[Any]:
    with own_mesh("scheduler-home", {**SCHEDULER_ENV}) as running:
        yield running


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    health_port: int
    log_path: Path
    output: IO[bytes]

    def wait_serving(self) -> None:
        wait_grpc_serving(self.name, self.health_port, self.process, 120, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


@pytest.fixture
def workers(scheduler_mesh: Any) -> Iterator[Any]:
    """Starts GPU workers against the scheduler mesh; all are stopped after the test. A worker
    takes a while to import torch: `wait=False` lets a test start several, or sign its users up,
    meanwhile, and call `wait_serving()` before it needs them."""
    started: list[WorkerProcess] = []

    def start(name: str, *, preload: str = "tiny-sd", wait: bool = True, **env: str) -> WorkerProcess:
        port = free_port()
        log_path = scheduler_mesh.home / "logs" / f"{name}-{uuid.uuid4().hex[:6]}.log"
        output = open(log_path, "wb")  # noqa: SIM115 - closed by WorkerProcess.stop
        child_env = {
            **scheduler_mesh.env,
            **json_secrets(scheduler_mesh.home),
            "PINGVAS_ENV": "dev",  # as `pingvas up` tells its own workers
            "DATABASE_URL": scheduler_mesh.app_database_url,
            "REDIS_URL": scheduler_mesh.redis_url,
            **scheduler_mesh.s3_env,  # the mesh's SeaweedFS and its keys, where images go
            "PINGVAS_DB_SCHEMA": scheduler_mesh.schema,
            "PINGVAS_PUBLIC_URL": scheduler_mesh.gateway_url,
            "PINGVAS_HEALTH_PORT": str(port),
            "PINGVAS_WORKER_ID": name,
            "PINGVAS_PRELOAD_MODELS": f'["{preload}"]',
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "gpu_inference"],
            env=child_env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(name, process, port, log_path, output)
        started.append(worker)
        if wait:
            worker.wait_serving()
        return worker

    yield start
    for worker in started:
        worker.stop()


def json_secrets(home: Path) -> dict[str, str]:
    import json

    return dict(json.loads((home / "secrets.json").read_text()))


@pytest.fixture
def customers(scheduler_mesh: Any) -> Any:
    """Signs up users on the scheduler mesh, one per plan given, each with plenty of credits. They
    sign up side by side, through the gateway's dev login."""

    def sign_up_one(plan: str) -> Account:
        account = dev_login(scheduler_mesh.gateway_url, plan)
        set_plan_and_grant(scheduler_mesh, account.email, plan, 10_000)
        return account

    def sign_up(*plans: str) -> list[Account]:
        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            return list(pool.map(sign_up_one, plans))

    return sign_up


@pytest.fixture
def customer(customers: Any) -> Any:
    """Signs up one user on the scheduler mesh with a plan and plenty of credits."""

    def sign_up(plan: str = "free") -> Account:
        (account,) = customers(plan)
        return account

    return sign_up


@pytest.fixture
def submit(scheduler_mesh: Any) -> Any:
    def create(
        who: Account,
        *,
        steps: int = 2,
        model: str = "tiny-sd",
        expect: int = 200,
        prompt: str = "fox",
        seed: int | None = None,
    ) -> dict[str, Any]:
        seeded = {} if seed is None else {"seed": seed}
        reply = httpx.post(
            f"{scheduler_mesh.gateway_url}/api/v1/generation/create",
            json={"prompt": prompt, "width": 64, "height": 64, "steps": steps, "model": model, **seeded},
            headers=who.headers,
            timeout=30,
        )
        assert reply.status_code == expect, reply.text
        return dict(reply.json())

    return create


@pytest.fixture
def wait_done(scheduler_mesh: Any) -> Any:
    """Waits until every given generation is terminal; returns their rows."""

    def wait(ids: list[str], within: float = 180) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            rows = scheduler_mesh.sql(
                "SELECT * FROM generations WHERE id = ANY(%s::uuid[])", [str(i) for i in ids]
            )
            if len(rows) == len(ids) and all(
                r["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for r in rows
            ):
                return rows
            assert time.monotonic() < deadline, [(r["id"], r["state"]) for r in rows]
            time.sleep(0.1)

    return wait
