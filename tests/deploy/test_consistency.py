"""The chart and the code agree: every variable the chart sets is a setting some process reads,
each process's settings load from exactly what the chart gives it (secrets stood in for), prod
refuses none of it, and the worker's grace period outlasts its SIGTERM budget inside a spot
notice."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from support.kubernetes import REPO_ROOT, WORKLOAD_KINDS, Manifest, containers, pod_spec

from gateway.cluster import CONSOLE_HTTP_PORT, SERVICE_GRPC_PORT, service_host
from services.common import settings as settings_module
from services.common.settings import (
    BillingSettings,
    ConsoleSettings,
    EmailSettings,
    GallerySettings,
    GenerationSettings,
    JwksSettings,
    LemonSqueezySettings,
    OAuthSettings,
    ObjectStoreSettings,
    PlanSettings,
    RateLimitSettings,
    SchedulerSettings,
    UserSettings,
    WatchSettings,
    WebhookSettings,
    WorkerSettings,
)
from services.common.startup import settings_refusals
from services.console.__main__ import image_origins

# Read by every process beside its own class (services/common/startup.py and the composition roots).
SHARED_SETTINGS = (
    ObjectStoreSettings,
    SchedulerSettings,
    WatchSettings,
    RateLimitSettings,
    JwksSettings,
    LemonSqueezySettings,
    OAuthSettings,
    PlanSettings,
    EmailSettings,
)
PROCESS_SETTINGS: dict[str, type[BaseSettings]] = {
    "services.user": UserSettings,
    "services.billing": BillingSettings,
    "services.generation": GenerationSettings,
    "services.gallery": GallerySettings,
    "services.webhooks": WebhookSettings,
    "services.console": ConsoleSettings,
    "gpu_inference": WorkerSettings,
}
# The images host the prod console's Content-Security-Policy allows (values-prod.yaml): the
# images bucket as S3 presigns its URLs.
PROD_IMAGES_BUCKET_ORIGINS = [
    "https://pingvas-studio-images.s3.amazonaws.com",
    "https://pingvas-studio-images.s3.ap-northeast-2.amazonaws.com",
]
# What the CLI demands of a job run against a database by URL (services/cli/main.py).
JOB_VARIABLES = {
    ("db", "upgrade"): {"DATABASE_URL", "OWNER_DATABASE_URL", "PINGVAS_ENV"},
    ("billing", "expire"): {"DATABASE_URL", "SYSTEM_DATABASE_URL", "PINGVAS_ENV"},
    ("billing", "reconcile"): {"DATABASE_URL", "SYSTEM_DATABASE_URL", "PINGVAS_ENV"},
}
# Stand-ins for the secrets the operator creates, each valid for its setting.
SECRET_STAND_INS = {
    "DATABASE_URL": "postgresql://prod_pingvas_app:x@aurora.example:5432/pingvas",
    "SYSTEM_DATABASE_URL": "postgresql://prod_pingvas_system:x@aurora.example:5432/pingvas",
    "OWNER_DATABASE_URL": "postgresql://prod_pingvas_owner:x@aurora.example:5432/pingvas",
    "REDIS_URL": "rediss://:auth@master.pingvas.example:6379/0",
}
# The worker's health server stops with this grace after its jobs' budget (gpu_inference/__main__.py).
WORKER_HEALTH_STOP_SECONDS = 1.0
SPOT_NOTICE_SECONDS = 120


def settings_classes() -> list[type[BaseSettings]]:
    return [
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, BaseSettings)
        and cls is not BaseSettings
        and cls.__module__ == settings_module.__name__
    ]


def variables_of(cls: type[BaseSettings]) -> set[str]:
    """The environment variables that set a field of `cls`."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice) for choice in alias.choices}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def workload_containers(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for manifest in manifests:
        if manifest["kind"] in WORKLOAD_KINDS:
            for container in containers(manifest):
                yield manifest, container


def process_of(manifest: Manifest, container: dict[str, Any]) -> str:
    """The module a container runs: its args with the image's `python -m` entrypoint, or the
    worker image's own entrypoint; Envoy runs no Python."""
    if container.get("command", [""])[0].endswith("/envoy"):
        return "envoy"
    if "args" in container:
        return str(container["args"][0])
    if container["image"].split(":")[0].endswith("pingvas-worker"):
        return "gpu_inference"
    raise AssertionError(f"{manifest['metadata']['name']}: cannot tell its process")


def container_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod would see it, with stand-ins for its secrets. An
    optional secret key is taken as absent (a provider nobody configured)."""
    environment = {}
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            environment[name] = str(variable["value"])
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            if not variable["valueFrom"]["secretKeyRef"].get("optional"):
                environment[name] = SECRET_STAND_INS.get(name, f"{name.lower()}-from-the-secret-" + "x" * 32)
        elif "fieldRef" in variable.get("valueFrom", {}):
            environment[name] = "pingvas-worker-7f9c-abcde"
    return environment


@contextmanager
def only_environment(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("PINGVAS_", "S3_")) or name.endswith("DATABASE_URL") or name == "REDIS_URL":
                patch.delenv(name)
        for name, value in environment.items():
            patch.setenv(name, value)
        yield


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_every_variable_the_chart_sets_is_a_setting(env: str, rendered: dict[str, list[Manifest]]) -> None:
    known = set().union(*(variables_of(cls) for cls in settings_classes()))
    set_by_chart = {
        variable["name"]
        for _, container in workload_containers(rendered[env])
        for variable in container.get("env", [])
    }
    assert set_by_chart, "no variables found"
    assert sorted(name for name in set_by_chart - known if not name.startswith("OTEL_")) == []


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_each_process_loads_its_settings_from_what_the_chart_gives_it(
    env: str, rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every field without a default is set (a settings class refuses to build otherwise),
    every value parses, and prod refuses nothing in them (services/common/startup.py)."""
    seen = set()
    for manifest, container in workload_containers(rendered[env]):
        process = process_of(manifest, container)
        environment = container_environment(container)
        if process == "envoy":
            assert environment == {}  # its configuration is the rendered files/envoy.json
            continue
        if process == "services.cli.main":
            command = tuple(container["args"][1:3])
            assert JOB_VARIABLES[command] <= set(environment), manifest["metadata"]["name"]
            assert environment["PINGVAS_ENV"] == env
            seen.add(" ".join(command))
            continue
        if process == "services.console":
            # A static-file server: no PINGVAS_ENV, no secrets; it needs its images host.
            with only_environment(monkeypatch, environment):
                origins = image_origins(ConsoleSettings())
                bucket = ObjectStoreSettings().images_bucket
            assert not any(name.endswith(("_URL", "SECRET")) for name in environment)
            assert origins == (
                PROD_IMAGES_BUCKET_ORIGINS
                if env == "prod"
                else [
                    f"https://{bucket}.s3.amazonaws.com",
                    f"https://{bucket}.s3.ap-northeast-2.amazonaws.com",
                ]
            )
            seen.add(process)
            continue
        with only_environment(monkeypatch, environment):
            settings = PROCESS_SETTINGS[process]()
            shared = {cls: cls() for cls in SHARED_SETTINGS}
            assert settings.env == env  # type: ignore[attr-defined]
            assert settings_refusals(settings, shared[LemonSqueezySettings], shared[OAuthSettings]) == []  # type: ignore[arg-type]
        seen.add(process)
    assert seen == {*PROCESS_SETTINGS, "db upgrade", "billing expire", "billing reconcile"}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_services_listen_where_envoy_looks(
    env: str, rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = {m["metadata"]["name"]: m for m in rendered[env] if m["kind"] == "Service"}
    for name in ("user", "billing", "generation", "gallery"):
        service = services[service_host(name)]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["port"] == SERVICE_GRPC_PORT
    for manifest, container in workload_containers(rendered[env]):
        if process_of(manifest, container) in (
            "services.user",
            "services.billing",
            "services.generation",
            "services.gallery",
        ):
            with only_environment(monkeypatch, container_environment(container)):
                settings = PROCESS_SETTINGS[container["args"][0]]()
            assert (settings.host, settings.port) == ("0.0.0.0", SERVICE_GRPC_PORT)  # type: ignore[attr-defined]
        if process_of(manifest, container) == "services.console":
            with only_environment(monkeypatch, container_environment(container)):
                console = ConsoleSettings()
            assert (console.host, console.port) == ("0.0.0.0", CONSOLE_HTTP_PORT)
            assert services[service_host("console")]["spec"]["ports"][0]["port"] == CONSOLE_HTTP_PORT


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_worker_outlasts_its_sigterm_budget_inside_a_spot_notice(
    env: str,
    rendered: dict[str, list[Manifest]],
    cluster_rendered: list[Manifest],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (worker,) = [
        m for m in rendered[env] if m["kind"] == "Deployment" and m["metadata"]["name"] == "pingvas-worker"
    ]
    (container,) = containers(worker)
    with only_environment(monkeypatch, container_environment(container)):
        budget = WorkerSettings().shutdown_grace_seconds  # type: ignore[call-arg]
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert budget + WORKER_HEALTH_STOP_SECONDS < grace <= SPOT_NOTICE_SECONDS
    # Karpenter forces no drain of a GPU node before the worker's grace period has passed.
    for pool in (m for m in cluster_rendered if m["kind"] == "NodePool" and "gpu" in m["metadata"]["name"]):
        forced = pool["spec"]["template"]["spec"]["terminationGracePeriod"]
        assert forced.endswith("m") and int(forced[:-1]) * 60 >= grace


# Where the console sends the provider back to (web/src/session.ts, oauthRedirectUri).
CONSOLE_OAUTH_CALLBACK_PATH = "/oauth/callback"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_sign_in_and_images_name_the_host_that_serves_the_console(
    env: str, rendered: dict[str, list[Manifest]], environment_values: dict[str, dict[str, Any]]
) -> None:
    """The gateway's host serves the console (its catch-all route), so the OAuth redirect the
    user service accepts, and the origin S3 lets read images, are that host's."""
    session = (REPO_ROOT / "web" / "src" / "session.ts").read_text()
    assert f"`${{location.origin}}{CONSOLE_OAUTH_CALLBACK_PATH}`" in session
    public_url = str(environment_values[env]["publicUrl"])
    (user,) = [
        m for m in rendered[env] if m["kind"] == "Deployment" and m["metadata"]["name"] == "pingvas-user"
    ]
    (container,) = containers(user)
    environment = container_environment(container)
    assert json.loads(environment["PINGVAS_OAUTH_REDIRECT_URIS"]) == [
        public_url + CONSOLE_OAUTH_CALLBACK_PATH
    ]
    for manifest, workload in workload_containers(rendered[env]):
        origins = container_environment(workload).get("PINGVAS_S3_CORS_ORIGINS")
        if origins is not None:
            assert json.loads(origins) == [public_url], manifest["metadata"]["name"]
