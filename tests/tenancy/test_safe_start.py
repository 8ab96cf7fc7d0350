"""A process refuses to start where its settings are only safe on a laptop, and `pingvas up`
runs PostgreSQL as production does (fsync on).

Each prod refusal is shown on its own: a prod start whose only unsafe part is the embedded mesh
it points at is refused for that alone, and each further unsafe setting adds its own reason."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mesh import REPO_ROOT
from support.servers import running_postgres

from services.common.settings import DEV_LEMONSQUEEZY_API_KEY, DEV_LEMONSQUEEZY_WEBHOOK_SECRET
from services.embedded.postgres import EmbeddedPostgres
from services.embedded.process import free_port
from services.migrations import EnvironmentUrls, RolePasswords, provision, upgrade

pytestmark = pytest.mark.integration

COMPONENTS = {
    "user": "services.user",
    "billing": "services.billing",
    "generation": "services.generation",
    "gallery": "services.gallery",
    "worker": "gpu_inference",
}
EMBEDDED = [
    "DATABASE_URL is the embedded PostgreSQL",
    "REDIS_URL is the embedded Redis",
    "S3_ENDPOINT_URL is the embedded SeaweedFS",
]


def service_env(mesh: Any, **overrides: str) -> dict[str, str]:
    """What a service needs to start against the mesh, in prod, with fresh secrets: nothing
    unsafe but the mesh's embedded PostgreSQL, Redis and SeaweedFS."""
    env = {
        **mesh.env,
        "PINGVAS_ENV": "prod",
        "PINGVAS_PORT": str(free_port()),
        "PINGVAS_HEALTH_PORT": str(free_port()),
        "DATABASE_URL": mesh.app_database_url,
        "SYSTEM_DATABASE_URL": mesh.system_database_url,
        "REDIS_URL": mesh.redis_url,
        **mesh.s3_env,
        "PINGVAS_DB_SCHEMA": mesh.schema,
        "PINGVAS_JWT_SECRET": secrets.token_urlsafe(48),
        "PINGVAS_URL_SIGNING_SECRET": secrets.token_urlsafe(48),
        "PINGVAS_LEMONSQUEEZY_API_KEY": secrets.token_urlsafe(16),
        "PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET": secrets.token_urlsafe(16),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PINGVAS_FAILPOINTS", None)  # refused in prod by the worker's settings, tested there
    env.update(overrides)
    return {name: value for name, value in env.items() if value != ""}


def start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a component until it exits; a refused start exits at once, before serving."""
    return subprocess.run(
        [sys.executable, "-m", module], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def refusal(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The reasons a refused start named, in order."""
    assert result.returncode != 0, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "refuses to start: " in line]
    return line.split("refuses to start: ", 1)[1].split("; ")


def without_detail(reasons: list[str]) -> list[str]:
    return [reason.split(" of `pingvas up`")[0] for reason in reasons]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_component_without_pingvas_env_refuses_to_start_naming_it(mesh: Any, component: str) -> None:
    result = start(COMPONENTS[component], service_env(mesh, PINGVAS_ENV=""))
    assert result.returncode != 0
    assert "PINGVAS_ENV is not set" in result.stderr
    assert "Traceback" not in result.stderr, "one line naming the variable, not a stack"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_prod_refuses_the_embedded_mesh_in_every_component(mesh: Any, component: str) -> None:
    assert without_detail(refusal(start(COMPONENTS[component], service_env(mesh)))) == EMBEDDED


def test_prod_refuses_dev_login(mesh: Any) -> None:
    reasons = refusal(start("services.user", service_env(mesh, PINGVAS_DEV_LOGIN="true")))
    assert reasons[0] == "dev login is enabled (PINGVAS_DEV_LOGIN)"
    assert without_detail(reasons[1:]) == EMBEDDED


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET", DEV_LEMONSQUEEZY_WEBHOOK_SECRET),
        ("PINGVAS_LEMONSQUEEZY_API_KEY", DEV_LEMONSQUEEZY_API_KEY),
    ],
)
def test_prod_refuses_the_published_dev_secrets(mesh: Any, variable: str, value: str) -> None:
    reasons = refusal(start("services.gallery", service_env(mesh, **{variable: value})))
    assert reasons[0] == f"{variable} is a dev or default secret"
    assert without_detail(reasons[1:]) == EMBEDDED


@pytest.mark.parametrize("variable", ["PINGVAS_JWT_SECRET", "PINGVAS_URL_SIGNING_SECRET"])
def test_prod_refuses_the_signing_secrets_pingvas_up_generated(mesh: Any, variable: str) -> None:
    generated = json.loads((mesh.home / "secrets.json").read_text())[variable]
    reasons = refusal(start("services.generation", service_env(mesh, **{variable: generated})))
    assert reasons[0] == f"{variable} is a dev or default secret"
    assert without_detail(reasons[1:]) == EMBEDDED


@pytest.mark.parametrize("provider", ["GOOGLE", "DISCORD"])
def test_prod_refuses_an_oauth_provider_offered_without_its_secret(mesh: Any, provider: str) -> None:
    # The client id offers the provider; its secret has no default usable in production.
    offered = {f"PINGVAS_OAUTH_{provider}_CLIENT_ID": "1234.apps.example.com"}
    reasons = refusal(start("services.user", service_env(mesh, **offered)))
    assert reasons[0] == f"PINGVAS_OAUTH_{provider}_CLIENT_SECRET is a dev or default secret"
    assert without_detail(reasons[1:]) == EMBEDDED

    configured = {**offered, f"PINGVAS_OAUTH_{provider}_CLIENT_SECRET": secrets.token_urlsafe(24)}
    assert without_detail(refusal(start("services.user", service_env(mesh, **configured)))) == EMBEDDED


@pytest.fixture(scope="module")
def postgres_without_fsync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    root = tmp_path_factory.mktemp("no-fsync")
    with running_postgres(root) as postgres:
        yield postgres


def test_prod_refuses_postgresql_with_fsync_off(mesh: Any, postgres_without_fsync: EmbeddedPostgres) -> None:
    async def environment() -> EnvironmentUrls:
        urls = await provision(
            postgres_without_fsync.url,
            mesh.schema,
            RolePasswords(*(secrets.token_urlsafe(16) for _ in range(3))),
        )
        await upgrade(urls.owner, mesh.schema)
        return urls

    urls = asyncio.run(environment())
    env = service_env(mesh, DATABASE_URL=urls.app, SYSTEM_DATABASE_URL=urls.system)
    reasons = refusal(start("services.user", env))
    assert reasons[0] == "PostgreSQL runs with fsync=off"
    assert without_detail(reasons[1:]) == EMBEDDED


def test_pingvas_up_runs_postgresql_with_fsync_on(mesh: Any) -> None:
    assert mesh.sql("SHOW fsync") == [{"fsync": "on"}]


def test_prod_pingvas_up_refuses_to_turn_fsync_off(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "up"],
        env={
            **os.environ,
            "PINGVAS_HOME": str(tmp_path),
            "PINGVAS_HTTP_PORT": str(free_port()),
            "PINGVAS_ENV": "prod",
            "PINGVAS_POSTGRES_FSYNC": "off",
        },
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "PINGVAS_POSTGRES_FSYNC=off is for tests; PINGVAS_ENV=prod refuses it" in result.stderr
    assert not (tmp_path / "postgres").exists(), "refused before starting anything"


@pytest.mark.parametrize("component", [*sorted(set(COMPONENTS) - {"worker"}), "worker-1"])
def test_pingvas_up_names_dev_and_each_component_logs_what_it_enforces(mesh: Any, component: str) -> None:
    # One line per start (a component another test restarted has logged it once per start).
    lines = [line for line in mesh.log(component).splitlines() if " enforces PINGVAS_ENV=" in line]
    expected = (
        "enforces PINGVAS_ENV=dev: dev login on, dev secrets allowed; connected to schema dev_pingvas as"
    )
    assert lines and all(expected in line for line in lines)


def external_database(mesh: Any, **overrides: str) -> dict[str, str]:
    """`pingvas` pointed at a database by URL, as an operator runs a job against a deployment."""
    return {
        "DATABASE_URL": mesh.app_database_url,
        "SYSTEM_DATABASE_URL": mesh.system_database_url,
        "PINGVAS_DB_SCHEMA": mesh.schema,
        "PINGVAS_ENV": "",
        **overrides,
    }


def test_an_admin_command_on_a_database_by_url_must_name_its_environment(mesh: Any) -> None:
    """Forgetting PINGVAS_ENV must not run a job against production with dev's checks."""
    for command in (("billing", "expire"), ("admin", "grant-credits", "nobody@example.com", "1")):
        result = mesh.pingvas(*command, env=external_database(mesh))
        assert result.returncode != 0, result.stdout
        assert "set PINGVAS_ENV as well as DATABASE_URL" in result.stderr, result.stderr


def test_a_billing_job_in_prod_refuses_the_published_dev_secrets(mesh: Any) -> None:
    result = mesh.pingvas(
        "billing",
        "expire",
        env=external_database(
            mesh, PINGVAS_ENV="prod", PINGVAS_LEMONSQUEEZY_API_KEY=DEV_LEMONSQUEEZY_API_KEY
        ),
    )
    assert result.returncode != 0, result.stdout
    assert "must be set in prod" in result.stderr, result.stderr


def test_an_admin_command_against_the_mesh_runs_in_the_mesh_environment(mesh: Any) -> None:
    """Without DATABASE_URL the command finds the running mesh, and takes its environment from
    it rather than from a default."""
    assert json.loads((mesh.home / "run" / "mesh.json").read_text())["env"] == "dev"
    result = mesh.pingvas("billing", "expire", env={"PINGVAS_ENV": ""})
    assert result.returncode == 0, result.stderr
