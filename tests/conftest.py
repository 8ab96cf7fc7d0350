"""The real mesh, once per test process: `pingvas up` in a temporary PINGVAS_HOME.

Everything runs for real: embedded PostgreSQL 16, Redis 6.2 and SeaweedFS (S3), the four
services, a GPU worker on the tiny SD model, and Envoy. Tests reach it the ways users do (REST,
gRPC and gRPC-Web through the gateway) and check the truth in PostgreSQL, Redis and the
buckets directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from support.accounts import Account, dev_login
from support.failpoints import FAILPOINTS_ENV
from support.lemonsqueezy import LemonSqueezyServer
from support.mesh import (
    LEMONSQUEEZY_API_KEY,
    LEMONSQUEEZY_WEBHOOK_SECRET,
    MeshStarter,
    RunningMesh,
    start_mesh,
    stop_mesh,
)
from xdist.scheduler import LoadScopeScheduling

from services.embedded.process import LISTEN_PORTS_ENV, listen_ports

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The suite runs in two processes (pytest-xdist: `-n 2` in pyproject.toml), as a test waiting on
# the mesh leaves a core idle. A test module's tests run in one process, and so do whole packages
# whose fixtures outlive a module (their meshes, built pipelines, rendered charts): split up, each
# process would build them again.
WHOLE_PACKAGES = frozenset({"deploy", "inference", "limits", "oauth", "scheduler", "web"})


class ModuleOrPackageScheduling(LoadScopeScheduling):
    """xdist's per-module scheduling, with WHOLE_PACKAGES kept whole."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]  # tests/<package>/test_<name>.py
        package = module.split("/")[1]
        return package if package in WHOLE_PACKAGES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleOrPackageScheduling:
    return ModuleOrPackageScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    # Each process's meshes pick their ports from a share of the range of its own.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        ports, count = listen_ports(), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        share, index = len(ports) // count, int(worker.removeprefix("gw"))
        os.environ[LISTEN_PORTS_ENV] = f"{ports.start + index * share}-{ports.start + (index + 1) * share}"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding every tiny model (`tiny-sd`, `tiny-sd-b`, `tiny-sdxl`, `tiny-flux`,
    `tiny-sd-single` and the LoRAs), built by the product's own code."""
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
def own_mesh(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, lemonsqueezy: LemonSqueezyServer
) -> MeshStarter:
    """Starts a mesh for the tests that need settings of their own: `with own_mesh("name",
    {"PINGVAS_...": ...}) as mesh:`. Every mesh talks to this session's Lemon Squeezy stand-in
    and is stopped when the block ends."""

    @contextmanager
    def start(name: str, settings: dict[str, str] | None = None) -> Iterator[RunningMesh]:
        running = start_mesh(
            tmp_path_factory.mktemp(name),
            models_dir,
            extra_env={"PINGVAS_LEMONSQUEEZY_API_URL": lemonsqueezy.url, **(settings or {})},
        )
        try:
            yield running
        finally:
            stop_mesh(running)

    return start


@pytest.fixture(scope="session")
def mesh(own_mesh: MeshStarter) -> Iterator[RunningMesh]:
    settings = {
        # Longer than any test holds an answer (tests/billing/test_plan_changes.py), so that a
        # held call ends when the test releases it, never by a timer.
        "PINGVAS_LEMONSQUEEZY_TIMEOUT_SECONDS": "300",
        # The gateway's deadline on the held call, for the same reason.
        "PINGVAS_GATEWAY_UNARY_TIMEOUT_SECONDS": "300",
        # Partner webhooks (tests/webhooks/test_delivery.py): a failed attempt is retried at once
        # and due deliveries are sought twice a second, so a test sees several attempts in
        # seconds; a claim outlasts an attempt; the deliverer that a test kills is restarted at
        # once. Not sought more often: this mesh lives as long as the session, and each look is
        # a transaction (at 10 a second an idle mesh took 120 ms of CPU a second, against 42).
        "PINGVAS_WEBHOOK_RETRY_DELAYS_SECONDS": "[0.2]",
        "PINGVAS_WEBHOOK_POLL_INTERVAL_SECONDS": "0.5",
        "PINGVAS_WEBHOOK_TIMEOUT_SECONDS": "10",
        "PINGVAS_WEBHOOK_CLAIM_SECONDS": "12",
        "PINGVAS_RESTART_BACKOFF_INITIAL_SECONDS": "0.2",
        **FAILPOINTS_ENV,
    }
    with own_mesh("pingvas-home", settings) as running:
        yield running


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
def new_account(mesh: RunningMesh) -> Any:
    """Signs up a fresh user through dev login; each test gets its own tenant."""

    def sign_up(prefix: str = "user") -> Account:
        return dev_login(mesh.gateway_url, prefix)

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
