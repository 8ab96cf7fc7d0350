"""Settings, one class per process, read from the environment (prefix PINGVAS_).

Only URLs and credentials differ between the embedded mesh and production; every process reads
the same variables, which `pingvas up` sets for its children and Helm sets for the pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINGVAS_", extra="ignore")

    env: Literal["dev", "prod"] = Field("dev", description="dev enables dev-login; prod never does.")
    home: Path = Field(Path(".pingvas"), description="Where embedded data, images, models and logs live.")
    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "PINGVAS_DATABASE_URL"),
        description="PostgreSQL URL; postgresql:// is accepted and driven by asyncpg.",
    )
    db_schema: str = Field(
        "dev_pingvas",
        description="The schema this deployment's tables live in: dev_pingvas or prod_pingvas.",
        pattern=r"^[a-z_][a-z0-9_]*$",
    )
    redis_url: str = Field(
        validation_alias=AliasChoices("REDIS_URL", "PINGVAS_REDIS_URL"), description="Redis URL."
    )
    jwt_secret: str = Field(min_length=32, description="HMAC key that signs and verifies access tokens.")
    url_signing_secret: str = Field(min_length=32, description="HMAC key for signed image URLs.")
    public_url: str = Field(
        "http://127.0.0.1:8080", description="The gateway's public base URL, used in signed image URLs."
    )
    image_url_ttl_seconds: int = Field(3600, ge=60, description="How long a signed image URL works.")
    log_level: str = Field("INFO", description="Python logging level.")
    credits_per_gpu_second: float = Field(1.0, gt=0, description="Price of one GPU second, in credits.")
    hold_seconds_per_step: float = Field(
        1.0,
        gt=0,
        description="Estimated GPU seconds of one denoising step at 512x512. It sizes a generation's "
        "credit hold, and the hold caps the charge.",
    )

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def models_dir_default(self) -> Path:
        return self.home / "models"


class ServerSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(description="Port the gRPC server binds.")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, description="gRPC message limit both ways: a 2048² PNG fits, abuse does not."
    )
    shutdown_grace_seconds: float = Field(10.0, description="How long in-flight RPCs get on SIGTERM.")


class UserSettings(ServerSettings):
    free_grant_credits: int = Field(100, ge=0, description="Credits a new user receives once.")
    token_ttl_seconds: int = Field(7 * 24 * 3600, ge=60, description="Access token lifetime.")


class GenerationSettings(ServerSettings):
    models_dir: Path | None = Field(None, description="Diffusers model directories; PINGVAS_HOME/models.")
    default_model: str = Field("tiny-sd", description="The model used when a request names none.")
    reconcile_interval_seconds: float = Field(5.0, gt=0, description="How often Redis is repaired from PG.")

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.models_dir_default


class GallerySettings(ServerSettings):
    pass


class BillingSettings(ServerSettings):
    pass


class WorkerSettings(CommonSettings):
    worker_id: str = Field("", description="Stable name of this worker; hostname-pid when empty.")
    health_host: str = Field("127.0.0.1", description="Address of the worker's gRPC health server.")
    health_port: int = Field(description="Port of the worker's gRPC health server.")
    models_dir: Path | None = Field(None, description="Diffusers model directories; PINGVAS_HOME/models.")
    device: str | None = Field(None, description="torch device; cuda when available, else cpu.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; on a CPU worker all cores but one when unset."
    )
    preload_models: list[str] = Field(default_factory=list, description="Models loaded and pinned at start.")
    memory_budget_bytes: int | None = Field(None, description="Model memory budget; unlimited when unset.")
    lease_seconds: float = Field(
        30.0, gt=1, description="How long a claimed job stays leased without renewal."
    )
    shutdown_grace_seconds: float = Field(90.0, description="Budget to finish the current job on SIGTERM.")

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.models_dir_default
