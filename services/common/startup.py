"""What every process checks before it serves, and the one line it logs about it.

PINGVAS_ENV must be named (`load_settings`). In prod a process refuses to start on any setting
that is only safe on a laptop: dev login, a dev or default secret (the published Lemon Squeezy
dev values, the signing keys `pingvas up` generated under PINGVAS_HOME, or an OAuth provider
offered with no client secret), the embedded PostgreSQL, Redis or SeaweedFS of `pingvas up`, or
a PostgreSQL running with fsync=off. The servers are asked (SHOW fsync, SHOW cluster_name, Redis
INFO, the S3 endpoint's Server header), not our own configuration. In every
environment a process refuses a database role that could escape row-level security.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.common.database import Database
from services.common.defaults import (
    EMBEDDED_POSTGRES_CLUSTER_NAME,
    EMBEDDED_REDIS_EXECUTABLE_MARK,
    SEAWEEDFS_SERVER_MARK,
)
from services.common.redis_pool import redis_client
from services.common.server import wait_until_ready
from services.common.settings import (
    DEV_LEMONSQUEEZY_API_KEY,
    DEV_LEMONSQUEEZY_WEBHOOK_SECRET,
    CommonSettings,
    LemonSqueezySettings,
    OAuthSettings,
    ObjectStoreSettings,
    ServerSettings,
)

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_class: type[S]) -> S:
    """The process's settings, or an exit that names what is wrong (e.g. PINGVAS_ENV unset)."""
    try:
        return settings_class()
    except ValidationError as error:
        raise SystemExit(f"{settings_class.__name__}: {error}") from None


def _generated_dev_secrets(home: Path) -> set[str]:
    """The signing keys `pingvas up` made for a laptop's mesh (services/supervisor.py)."""
    path = home / "secrets.json"
    try:
        return set(json.loads(path.read_text()).values())
    except (OSError, ValueError):
        return set()


def settings_refusals(
    settings: CommonSettings, lemonsqueezy: LemonSqueezySettings, oauth: OAuthSettings
) -> list[str]:
    """What prod refuses in this process's own settings (empty in dev)."""
    if settings.env != "prod":
        return []
    refusals = []
    if settings.dev_login_enabled:
        refusals.append("dev login is enabled (PINGVAS_DEV_LOGIN)")
    dev_values = {DEV_LEMONSQUEEZY_API_KEY, DEV_LEMONSQUEEZY_WEBHOOK_SECRET} | _generated_dev_secrets(
        settings.home
    )
    for variable, value in (
        ("PINGVAS_JWT_SECRET", settings.jwt_secret),
        ("PINGVAS_URL_SIGNING_SECRET", settings.url_signing_secret),
        ("PINGVAS_LEMONSQUEEZY_API_KEY", lemonsqueezy.api_key),
        ("PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET", lemonsqueezy.webhook_secret),
    ):
        if value in dev_values:
            refusals.append(f"{variable} is a dev or default secret")
    for provider, client_id, secret in (
        ("GOOGLE", oauth.google_client_id, oauth.google_client_secret),
        ("DISCORD", oauth.discord_client_id, oauth.discord_client_secret),
    ):
        # An offered provider's secret has no usable default: the empty one, or a dev value.
        if client_id and (not secret or secret in dev_values):
            refusals.append(f"PINGVAS_OAUTH_{provider}_CLIENT_SECRET is a dev or default secret")
    return refusals


async def _s3_server_name(endpoint_url: str) -> str:
    """What the S3 endpoint calls itself (its Server header), asked without credentials; empty
    when it does not answer (the first image store then fails, with its own reason)."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return str((await client.get(endpoint_url)).headers.get("server", ""))
    except httpx.HTTPError:
        return ""


async def server_refusals(
    database: Database, redis_url: str, s3_endpoint_url: str | None = None
) -> list[str]:
    """What prod refuses in the servers this process was pointed at, as they report themselves."""
    refusals = []
    if await database.server_setting("fsync") == "off":
        refusals.append("PostgreSQL runs with fsync=off")
    if await database.server_setting("cluster_name") == EMBEDDED_POSTGRES_CLUSTER_NAME:
        refusals.append("DATABASE_URL is the embedded PostgreSQL of `pingvas up`")
    redis = redis_client(redis_url)
    try:
        executable = str((await redis.info("server")).get("executable", ""))
    finally:
        await redis.aclose()
    if EMBEDDED_REDIS_EXECUTABLE_MARK in executable:
        refusals.append("REDIS_URL is the embedded Redis of `pingvas up`")
    # Production stores images on S3 (the seed's AWS buckets); SeaweedFS is the laptop's stand-in.
    if s3_endpoint_url and (await _s3_server_name(s3_endpoint_url)).startswith(SEAWEEDFS_SERVER_MARK):
        refusals.append("S3_ENDPOINT_URL is the embedded SeaweedFS of `pingvas up`")
    return refusals


async def open_service_database(settings: ServerSettings, component: str) -> Database:
    """A service's database, as its tenant and system roles, once the start-up checks pass."""
    database = Database(
        settings.database_url,
        schema=settings.db_schema,
        system_url=settings.system_database_url,
        application_name=f"pingvas-{component}",
    )
    await enforce_environment(settings, database, component=component)
    return database


async def enforce_environment(settings: CommonSettings, database: Database, *, component: str) -> None:
    """Refuse to start (SystemExit naming every reason) or log one line saying what is enforced."""
    await wait_until_ready(database.ping, "PostgreSQL")
    refusals = settings_refusals(settings, LemonSqueezySettings(), OAuthSettings())
    if settings.env == "prod":
        refusals += await server_refusals(database, settings.redis_url, ObjectStoreSettings().endpoint_url)
    roles = await database.roles_in_use()
    refusals += [f"database role {role.name} {problem}" for role in roles for problem in role.problems]
    if refusals:
        raise SystemExit(f"{component}: PINGVAS_ENV={settings.env} refuses to start: " + "; ".join(refusals))
    enforced = (
        "no dev login, no dev or default secrets, no embedded PostgreSQL, Redis or SeaweedFS, fsync on"
        if settings.env == "prod"
        else f"dev login {'on' if settings.dev_login_enabled else 'off'}, dev secrets allowed"
    )
    log.info(
        "%s enforces PINGVAS_ENV=%s: %s; connected to schema %s as %s, under forced row-level security",
        component,
        settings.env,
        enforced,
        settings.db_schema,
        " and ".join(role.name for role in roles),
    )
