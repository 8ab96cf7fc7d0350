"""Settings, one class per process, read from the environment (prefix PINGVAS_).

Only URLs and credentials differ between the embedded mesh and production; every process reads
the same variables, which `pingvas up` sets for its children and Helm sets for the pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import limits
from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.envoy import (
    DEFAULT_CORS_ALLOWED_ORIGINS,
    DEFAULT_JWKS_CACHE_SECONDS,
    DEFAULT_STREAMING_IDLE_TIMEOUT_SECONDS,
    DEFAULT_UNARY_TIMEOUT_SECONDS,
    MAX_TRANSCODED_REQUEST_BYTES,
)
from services.common.defaults import DEFAULT_DB_SCHEMA, DEFAULT_MODEL
from services.common.failpoints import Failpoint

DEV_LEMONSQUEEZY_API_KEY = "dev-lemonsqueezy-api-key"
DEV_LEMONSQUEEZY_WEBHOOK_SECRET = "dev-lemonsqueezy-webhook-secret"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINGVAS_", extra="ignore")

    env: Literal["dev", "prod"] = Field(
        description="Required, with no default: a process that was not told where it runs must not "
        "guess dev (dev login, dev secrets). prod refuses every unsafe setting at start-up "
        "(services/common/startup.py); `pingvas up` sets dev."
    )
    dev_login: bool | None = Field(
        None, description="Serve dev login (sign-in by email alone); on in dev when unset. prod refuses it."
    )
    home: Path = Field(
        Path(".pingvas"),
        description="Where embedded data (PostgreSQL, Redis, SeaweedFS's objects), models and logs live.",
    )
    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "PINGVAS_DATABASE_URL"),
        description="PostgreSQL URL of the environment's tenant role ({schema}_app); postgresql:// is "
        "accepted and driven by asyncpg.",
    )
    db_schema: str = Field(
        DEFAULT_DB_SCHEMA,
        description="The schema this deployment's tables live in: dev_pingvas or prod_pingvas.",
        pattern=r"^[a-z_][a-z0-9_]*$",
    )
    redis_url: str = Field(
        validation_alias=AliasChoices("REDIS_URL", "PINGVAS_REDIS_URL"), description="Redis URL."
    )
    jwt_secret: str = Field(
        min_length=32,
        description="The user service's session secret: it encrypts the private halves of the "
        "access-token signing keys in PostgreSQL and derives each refresh token's successor.",
    )
    url_signing_secret: str = Field(
        min_length=32, description="HMAC key of the gateway's signed image URLs (GetImageContent)."
    )
    public_url: str = Field(
        "http://127.0.0.1:8080", description="The gateway's public base URL, used in its signed image URLs."
    )
    image_url_ttl_seconds: int = Field(
        3600,
        ge=1,
        description="How long an image URL works: the S3 presigned GET URLs of an image and its "
        "thumbnail, and the gateway's signed URLs.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    credits_per_gpu_second: float = Field(1.0, gt=0, description="Price of one GPU second, in credits.")
    hold_seconds_per_step: float = Field(
        1.0,
        gt=0,
        description="Estimated GPU seconds of one denoising step at 512x512. It sizes a generation's "
        "credit hold, and the hold caps the charge.",
    )

    @model_validator(mode="before")
    @classmethod
    def _env_is_named(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("env") is None:
            raise ValueError("PINGVAS_ENV is not set: set it to dev or prod (`pingvas up` sets dev)")
        return data

    @property
    def dev_login_enabled(self) -> bool:
        return self.env == "dev" if self.dev_login is None else self.dev_login

    @property
    def models_dir_default(self) -> Path:
        return self.home / "models"


class CloudFrontSettings(BaseSettings):
    """Production's option: image URLs signed for a CloudFront distribution in front of the
    images bucket (services/common/cloudfront.py) instead of S3 presigned URLs. All three
    settings, or none."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_CLOUDFRONT_", extra="ignore")

    domain: str | None = Field(None, description="The distribution's domain, e.g. images.pingvas.studio.")
    key_pair_id: str | None = Field(None, description="The id of the public key in its trusted key group.")
    private_key_file: Path | None = Field(None, description="The PEM file of that key's RSA private half.")

    @model_validator(mode="after")
    def _all_or_none(self) -> CloudFrontSettings:
        given = {
            "domain": self.domain,
            "key_pair_id": self.key_pair_id,
            "private_key_file": self.private_key_file,
        }
        missing = [f"PINGVAS_CLOUDFRONT_{name.upper()}" for name, value in given.items() if value is None]
        if 0 < len(missing) < len(given):
            raise ValueError(f"CloudFront image URLs need {', '.join(missing)} as well")
        return self


class ObjectStoreSettings(BaseSettings):
    """S3, where images (and models) live: AWS S3 in production, the embedded SeaweedFS of
    `pingvas up` on a laptop; the same code either way. Without an endpoint and keys the client
    takes boto's default chain (IRSA on EKS, an instance profile, AWS_* variables)."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_S3_", extra="ignore")

    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("S3_ENDPOINT_URL", "PINGVAS_S3_ENDPOINT_URL"),
        description="S3 endpoint; AWS's regional endpoint when unset. `pingvas up` sets its SeaweedFS.",
    )
    region: str = Field("ap-northeast-2", description="S3 region (the seed's Seoul).")
    access_key_id: str | None = Field(
        None, description="Access key; boto's default credential chain (IRSA) applies when unset."
    )
    secret_access_key: str | None = Field(None, description="Secret key, with access_key_id.")
    images_bucket: str = Field("pingvas-studio-images", description="Generated images and thumbnails.")
    models_bucket: str = Field("pingvas-studio-models", description="Model files, the cache's source.")
    logs_bucket: str = Field("pingvas-studio-logs", description="Application and access logs.")
    backups_bucket: str = Field("pingvas-studio-backups", description="Database and Redis backups.")
    cors_origins: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ALLOWED_ORIGINS),
        description="Origins of the console, allowed to GET images from the images bucket (CORS).",
    )
    # A worker's store of an image gives up within attempts x (connect + read), 20 s by
    # default; its job's lease is renewed meanwhile, so a slow store is not run twice.
    connect_timeout_seconds: float = Field(
        3.0, gt=0, description="How long one connection to S3 may take before the attempt fails."
    )
    read_timeout_seconds: float = Field(
        7.0, gt=0, description="How long S3 may take to answer one attempt before it fails."
    )
    max_attempts: int = Field(
        2, ge=1, description="Attempts of one S3 call (botocore's standard retry mode) before it fails."
    )
    orphan_grace_seconds: int = Field(
        3600,
        ge=0,
        description="How old an object of the images bucket with no images row must be before "
        "`pingvas storage gc` removes it: far longer than a worker takes between storing an "
        "image's objects and committing its row.",
    )

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> ObjectStoreSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both PINGVAS_S3_ACCESS_KEY_ID and PINGVAS_S3_SECRET_ACCESS_KEY, or neither")
        return self

    @property
    def buckets(self) -> dict[str, str]:
        """Each bucket by its role."""
        return {
            "images": self.images_bucket,
            "models": self.models_bucket,
            "logs": self.logs_bucket,
            "backups": self.backups_bucket,
        }


class ModelStoreSettings(BaseSettings):
    """The model store: models in the models bucket (ObjectStoreSettings.models_bucket), read by
    the catalog of the generation service and of each worker (services/generation/model_store.py)."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_MODELS_", extra="ignore")

    catalog_refresh_seconds: float = Field(
        1.0,
        ge=0,
        description="Least time between two reads of the bucket's manifests. A request naming a "
        "model the catalog does not know waits for the next read (at most this long), so a model "
        "pushed while the mesh runs is served at once, and a flood of unknown names costs one "
        "read per interval.",
    )
    # A model's files are large and their transfer holds no job's lease (a worker renews the
    # leases of the jobs waiting for it), so they get more patience than one image's store.
    read_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="How long S3 may take to answer one read of a model transfer (a push, a "
        "manifest, a piece of a download) before the attempt fails; PINGVAS_S3_READ_TIMEOUT_SECONDS "
        "is for images.",
    )
    max_attempts: int = Field(
        5, ge=1, description="Attempts of one S3 call of a model transfer before it fails."
    )


class SchedulerSettings(BaseSettings):
    """The tier scheduler, shared by the generation service (admission, repair) and the workers
    (claiming). Maps are JSON in the environment, e.g. PINGVAS_SCHEDULER_AGING_SECONDS='{"free": 5}'."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_SCHEDULER_", extra="ignore")

    aging_seconds: dict[str, float] = Field(
        default_factory=lambda: {
            "enterprise": 30.0,
            "studio": 60.0,
            "pro": 120.0,
            "starter": 300.0,
            "free": 600.0,
        },
        description="A job goes before every band once it would otherwise start later than its band's bound.",
    )
    concurrency_caps: dict[str, int] = Field(
        default_factory=lambda: {"free": 1, "starter": 1, "pro": 2, "studio": 4, "enterprise": 8},
        description="Jobs of one user running at once, by plan.",
    )
    max_queue_depth: dict[str, int] = Field(
        default_factory=lambda: {
            "free": 1000,
            "starter": 1000,
            "pro": 1000,
            "studio": 1000,
            "enterprise": 1000,
        },
        description="Waiting jobs a band accepts before CreateGeneration answers RESOURCE_EXHAUSTED.",
    )
    max_live_per_user: dict[str, int] = Field(
        default_factory=lambda: {"free": 5, "starter": 20, "pro": 40, "studio": 80, "enterprise": 200},
        description="Generations of one user queued or running at once, by plan, so that a few "
        "accounts cannot fill their band for everyone; past it CreateGeneration answers "
        "RESOURCE_EXHAUSTED (TOO_MANY_GENERATIONS) before anything is held. A plan not named has no cap.",
    )
    affinity_lookahead: int = Field(32, ge=1, description="Users scanned for a job whose model is warm.")
    affinity_max_skips: int = Field(4, ge=0, description="Times a cold-model job may be passed over.")
    max_attempts: int = Field(3, ge=1, description="Attempts before a job is dead-lettered as FAILED.")
    lease_seconds: float = Field(
        30.0, gt=0.5, description="How long a claimed job stays leased without renewal."
    )


# A user with a few browser tabs, the CLI and a script must never be refused a watch.
MIN_STREAMS_PER_USER = 20


class WatchSettings(BaseSettings):
    """WatchGeneration streams, served from the generation service's event hub, and the caps on
    open streams, so one account cannot starve the rest. The caps map is JSON in the environment,
    e.g. PINGVAS_WATCH_STREAMS_PER_USER='{"free": 20, "pro": 40}'."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_WATCH_", extra="ignore")

    buffer_events: int = Field(
        256,
        ge=1,
        description="Events held for one watcher that has not read them yet. A watcher whose buffer "
        "is full is not waited for: it is resynchronised from the stored log when it reads again.",
    )
    queued_resend_seconds: float = Field(
        15.0, gt=0, description="A waiting job's stream re-sends `queued` at least this often."
    )
    position_refresh_seconds: float = Field(
        1.0,
        gt=0,
        description="How often a waiting job's queue position is computed, once for all its watchers. "
        "A move is told at once near the front; from position 10 on, at most every position/10 "
        "refreshes (and at least every queued_resend_seconds).",
    )
    truth_check_seconds: float = Field(
        2.0,
        gt=0,
        description="How often each watched generation's row is read, so a terminal state whose "
        "event Redis lost still ends its watches.",
    )

    streams_per_user: dict[str, int] = Field(
        default_factory=lambda: {"free": 20, "starter": 20, "pro": 40, "studio": 80, "enterprise": 200},
        description=(
            f"Open streams of one user across every replica, by plan (at least {MIN_STREAMS_PER_USER}; "
            f"a plan not named gets {MIN_STREAMS_PER_USER})."
        ),
    )
    streams_per_process: int = Field(
        20_000, ge=1, description="Open streams one generation-service process serves at once."
    )
    stream_lease_seconds: float = Field(
        30.0,
        ge=3.0,
        description="How long a stream's slot outlives its replica: renewed every third of it.",
    )

    @field_validator("streams_per_user")
    @classmethod
    def _never_below_the_floor(cls, caps: dict[str, int]) -> dict[str, int]:
        low = {plan: cap for plan, cap in caps.items() if cap < MIN_STREAMS_PER_USER}
        if low:
            raise ValueError(f"every plan's cap must be at least {MIN_STREAMS_PER_USER}; got {low}")
        return caps


def _rate_limits(values: dict[str, str]) -> dict[str, str]:
    """Each value in the `limits` library's notation ("600/minute", "3 per 2 seconds")."""
    for name, value in values.items():
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a rate such as '600/minute'") from None
    return values


class RateLimitSettings(BaseSettings):
    """Request rates (OWASP API4), in the `limits` library's notation. Per user by plan, counted
    in Redis across every service and replica; per client IP at the gateway for the routes that
    run before sign-in. The plan map is JSON in the environment, e.g.
    PINGVAS_RATE_LIMITS_PER_USER='{"free": "300/minute"}'."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_RATE_LIMITS_", extra="ignore")

    per_user: dict[str, str] = Field(
        default_factory=lambda: {
            "free": "300/minute",
            "starter": "600/minute",
            "pro": "1200/minute",
            "studio": "2400/minute",
            "enterprise": "6000/minute",
        },
        description="Authenticated requests of one user (its principal id) by plan; a plan not "
        "named gets the free plan's rate. Past it: RESOURCE_EXHAUSTED / HTTP 429 with RetryInfo.",
    )
    plan_cache_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a process trusts a user's plan for the limits it applies (request "
        "rates, open streams): a plan change applies everywhere within it.",
    )
    sign_in_per_ip: str = Field(
        "20/minute",
        description="Requests from one client IP, at the gateway, to dev login and to the OAuth "
        "begin and complete calls (every route that runs before sign-in but the webhook).",
    )
    webhook_per_ip: str = Field(
        "600/minute",
        description="Requests from one client IP, at the gateway, to the Lemon Squeezy webhook: "
        "generous, because Lemon Squeezy retries a refused delivery only 3 times.",
    )

    @field_validator("per_user")
    @classmethod
    def _valid_rates(cls, values: dict[str, str]) -> dict[str, str]:
        return _rate_limits(values)

    @field_validator("sign_in_per_ip", "webhook_per_ip")
    @classmethod
    def _valid_rate(cls, value: str, info: ValidationInfo) -> str:
        return _rate_limits({str(info.field_name): value})[str(info.field_name)]

    @field_validator("per_user")
    @classmethod
    def _free_is_named(cls, values: dict[str, str]) -> dict[str, str]:
        # The free plan's rate is also every unnamed plan's.
        if "free" not in values:
            raise ValueError("per_user must name the free plan's rate")
        return values


class GatewaySettings(BaseSettings):
    """The Envoy gateway `pingvas up` configures (gateway/envoy.py); its per-IP rates are in
    RateLimitSettings."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_GATEWAY_", extra="ignore")

    xff_trusted_hops: int = Field(
        0,
        ge=0,
        description="Proxies in front of the gateway (a load balancer: 1) whose X-Forwarded-For "
        "entries are trusted to name the client IP; 0 takes the connection's peer.",
    )
    unary_timeout_seconds: float = Field(
        DEFAULT_UNARY_TIMEOUT_SECONDS,
        gt=0,
        description="The longest a unary call runs through the gateway; a client's longer "
        "deadline (grpc-timeout) is capped to it.",
    )
    streaming_idle_timeout_seconds: float = Field(
        DEFAULT_STREAMING_IDLE_TIMEOUT_SECONDS,
        gt=0,
        description="How long a stream (a watch) may send nothing before the gateway resets it; "
        "a waiting watch re-sends `queued` well within it (PINGVAS_WATCH_QUEUED_RESEND_SECONDS).",
    )


class ServerSettings(CommonSettings):
    system_database_url: str = Field(
        validation_alias=AliasChoices("SYSTEM_DATABASE_URL", "PINGVAS_SYSTEM_DATABASE_URL"),
        description="PostgreSQL URL of the environment's system role ({schema}_system), for the work "
        "that spans tenants (services/migrations/versions/0006 lists it). GPU workers have none.",
    )
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(description="Port the gRPC server binds.")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, description="Largest gRPC message sent: a 2048² PNG fits."
    )
    max_receive_message_bytes: int = Field(
        MAX_TRANSCODED_REQUEST_BYTES,
        description="Largest gRPC message received (RESOURCE_EXHAUSTED past it), the gateway's "
        "REST body limit: requests are prompts, ids and webhook payloads.",
    )
    shutdown_grace_seconds: float = Field(10.0, description="How long in-flight RPCs get on SIGTERM.")
    redis_max_connections: int = Field(
        64,
        ge=2,
        description="Redis connections the service's shared pool opens at most (the generation "
        "service's watches hold none while they wait: its event hub reads for all of them on one "
        "more connection of its own); a command waits for a free connection when all are busy.",
    )
    redis_pool_timeout_seconds: float = Field(
        20.0, gt=0, description="How long a command waits for a free pooled Redis connection."
    )


class JwksSettings(BaseSettings):
    """The public keys that verify access tokens, as the gateway and every service cache them."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_JWKS_", extra="ignore")

    cache_seconds: float = Field(
        DEFAULT_JWKS_CACHE_SECONDS,
        ge=1,
        description="How long the gateway (jwt_authn) and every service trust the key set they "
        "read; a new signing key is published this long before it signs anything.",
    )


class UserSettings(ServerSettings):
    token_ttl_seconds: int = Field(15 * 60, ge=60, description="Access token lifetime.")
    refresh_token_ttl_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="How long an unused refresh token works."
    )
    refresh_reuse_interval_seconds: float = Field(
        10.0,
        ge=0,
        description="How long after a refresh the spent refresh token still returns the same new "
        "one (two tabs refreshing at once), rather than revoking its family as a reuse.",
    )
    signing_key_rotation_seconds: int = Field(
        30 * 24 * 3600,
        ge=3600,
        description="How long a key signs access tokens before the user service adds its successor.",
    )


class GenerationSettings(ServerSettings):
    models_dir: Path | None = Field(
        None,
        description="The local model cache (the EFS mount in production); PINGVAS_HOME/models. "
        "The generation service only names paths in it; the models themselves are the models "
        "bucket's.",
    )
    default_model: str = Field(DEFAULT_MODEL, description="The model used when a request names none.")
    reconcile_interval_seconds: float = Field(5.0, gt=0, description="How often Redis is repaired from PG.")
    metrics_port: int | None = Field(
        None,
        description="Port of the queue-depth endpoint KEDA scales the GPU workers on "
        "(GET /queue-depth, services/generation/queue_metrics.py); off when unset.",
    )
    upload_url_ttl_seconds: int = Field(
        900,
        gt=0,
        le=24 * 3600,
        description="How long a CreateUpload's presigned PUT URL works; the object itself expires "
        "a day after the upload unless a generation uses it (the images bucket's lifecycle).",
    )

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.models_dir_default


class GallerySettings(ServerSettings):
    pass


class WebhookSettings(ServerSettings):
    """The webhook deliverer (`python -m services.webhooks`); `port` serves its gRPC health only."""

    webhook_retry_delays_seconds: list[float] = Field(
        [5, 300, 1800, 7200, 18000, 36000],
        min_length=1,
        description="The delay after each failed attempt, the last repeating (Svix's schedule: 5 s, "
        "5 min, 30 min, 2 h, 5 h, 10 h); the retry window's end gets one last attempt.",
    )
    webhook_retry_window_seconds: float = Field(
        24 * 3600, gt=0, description="How long after its event a delivery is retried before it is given up."
    )
    webhook_timeout_seconds: float = Field(
        15.0, gt=0, description="How long one attempt may take, connecting and answering together."
    )
    webhook_claim_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a claimed delivery is not due again: its sender records the outcome "
        "within it, or died, and the delivery is sent again (same webhook-id). Longer than the timeout.",
    )
    webhook_poll_interval_seconds: float = Field(
        1.0, gt=0, description="How often due deliveries are sought."
    )
    webhook_batch_size: int = Field(
        20, ge=1, description="Deliveries claimed, and sent concurrently, at once."
    )

    @model_validator(mode="after")
    def _claim_outlasts_an_attempt(self) -> WebhookSettings:
        if self.webhook_claim_seconds <= self.webhook_timeout_seconds:
            raise ValueError("PINGVAS_WEBHOOK_CLAIM_SECONDS must exceed PINGVAS_WEBHOOK_TIMEOUT_SECONDS")
        return self


class LemonSqueezySettings(BaseSettings):
    """Lemon Squeezy, the merchant of record. The dev defaults let a dev mesh start; production
    sets every value from a Secret (the billing service refuses the dev key in prod)."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_LEMONSQUEEZY_", extra="ignore")

    api_url: str = Field("https://api.lemonsqueezy.com", description="API base URL.")
    api_key: str = Field(DEV_LEMONSQUEEZY_API_KEY, description="API key (Bearer).")
    store_id: str = Field("1", description="The store that sells the plans.")
    webhook_secret: str = Field(DEV_LEMONSQUEEZY_WEBHOOK_SECRET, description="Webhook signing secret.")
    test_mode: bool = Field(False, description="Act on webhooks whose meta.test_mode is true.")
    timeout_seconds: float = Field(
        10.0, gt=0, description="How long one API call may take; no transaction waits for it."
    )
    variant_starter: str = Field("101", description="Variant id of the Starter plan.")
    variant_pro: str = Field("102", description="Variant id of the Pro plan.")
    variant_studio: str = Field("103", description="Variant id of the Studio plan.")
    variant_enterprise: str = Field("104", description="Variant id of the Enterprise plan.")


GOOGLE_DISCOVERY_URL = "https://accounts.google.com/.well-known/openid-configuration"
DISCORD_BASE_URL = "https://discord.com"


class OAuthSettings(BaseSettings):
    """Sign-in with Google (OpenID Connect) and Discord (OAuth 2.0), by the user service. A
    provider whose client id is empty is not offered (BeginOAuthLogin answers FAILED_PRECONDITION),
    which is how `pingvas up` starts; production sets the ids and secrets from a Secret, and
    refuses a configured provider whose secret is left at its empty default. The redirect URIs
    are JSON in the environment, e.g. PINGVAS_OAUTH_REDIRECT_URIS='["https://pingvas.studio/auth/callback"]'."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_OAUTH_", extra="ignore")

    google_client_id: str = Field("", description="Google's OAuth client id; empty: Google is not offered.")
    google_client_secret: str = Field("", description="Google's OAuth client secret.")
    google_discovery_url: str = Field(
        GOOGLE_DISCOVERY_URL,
        description="Google's OpenID Connect discovery document: its endpoints, issuer and JWKS.",
    )
    discord_client_id: str = Field(
        "", description="Discord's OAuth client id; empty: Discord is not offered."
    )
    discord_client_secret: str = Field("", description="Discord's OAuth client secret.")
    discord_base_url: str = Field(
        DISCORD_BASE_URL,
        description="Discord's base URL: /oauth2/authorize, /api/oauth2/token and /api/users/@me "
        "lie under it.",
    )
    redirect_uris: list[str] = Field(
        default_factory=list,
        description="The redirect URIs BeginOAuthLogin accepts, exactly as the providers have them "
        "registered; any other is INVALID_ARGUMENT.",
    )
    attempt_ttl_seconds: int = Field(
        600,
        ge=10,
        description="How long a begun sign-in (its state, nonce and PKCE verifier, kept in Redis) "
        "waits for CompleteOAuthLogin; it can be completed once.",
    )
    timeout_seconds: float = Field(
        10.0, gt=0, description="How long one call to a provider (discovery, token, JWKS, profile) may take."
    )


class PlanSettings(BaseSettings):
    """Monthly credit grants, in one place; prices are Lemon Squeezy's and shown for reference."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_", extra="ignore")

    free_grant_credits: int = Field(100, ge=0, description="Credits a new (free) user receives once.")
    starter_monthly_credits: int = Field(5_000, ge=0, description="Starter's monthly grant.")
    pro_monthly_credits: int = Field(15_000, ge=0, description="Pro's monthly grant.")
    studio_monthly_credits: int = Field(30_000, ge=0, description="Studio's monthly grant.")
    enterprise_monthly_credits: int = Field(
        0, ge=0, description="Enterprise's monthly grant; usually 0 and set per customer by an admin."
    )


class EmailSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PINGVAS_EMAIL_", extra="ignore")

    backend: Literal["outbox", "ses"] = Field(
        "outbox", description="outbox writes .eml files under PINGVAS_HOME/outbox; ses sends with SESv2."
    )
    sender: str = Field("Pingvas <no-reply@pingvas.studio>", description="The From address.")
    ses_region: str = Field("ap-northeast-2", description="SES region (the seed's Seoul).")
    ses_endpoint_url: str | None = Field(None, description="SES endpoint override (tests, VPC endpoints).")


class BillingSettings(ServerSettings):
    grace_period_days: int = Field(3, ge=0, description="How long a failed payment keeps the plan.")
    expire_interval_seconds: float = Field(
        3600.0, gt=0, description="How often the service runs the expiry job itself (the CronJob runs daily)."
    )
    email_interval_seconds: float = Field(2.0, gt=0, description="How often the email outbox is sent.")


class MigrationSettings(BaseSettings):
    """`pingvas db upgrade` against a database by URL (the Helm chart's migration Job). The CLI
    reads these variables itself (services/cli/main.py `_database_location`, with DATABASE_URL
    and PINGVAS_ENV), before any settings class is built; they are declared here so that every
    variable a deployment sets has its one documented place."""

    model_config = SettingsConfigDict(extra="ignore")

    owner_database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OWNER_DATABASE_URL"),
        description="PostgreSQL URL of the environment's owner role ({schema}_owner): migrations "
        "only, never a service.",
    )


class SupervisorSettings(BaseSettings):
    """How `pingvas up` restarts a component that exits, as systemd's Restart=on-failure with
    StartLimitBurst, or a Kubernetes pod's CrashLoopBackOff, would."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_", extra="ignore")

    restart_backoff_initial_seconds: float = Field(
        0.5, gt=0, description="Wait before the first restart of a component that exited."
    )
    restart_backoff_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait before a restart; each exit in the window doubles it."
    )
    crash_loop_restarts: int = Field(
        5,
        ge=0,
        description="Restarts a component gets within the window; one more exit stops the mesh, "
        "naming the component and its last log lines.",
    )
    crash_loop_window_seconds: float = Field(
        60.0, gt=0, description="The window over which a component's exits are counted."
    )
    postgres_fsync: bool = Field(
        True,
        description="fsync of embedded PostgreSQL. Tests may turn it off for speed; "
        "PINGVAS_ENV=prod refuses that (and every service refuses a server with fsync=off).",
    )

    def backoff_seconds(self, recent_exits: int) -> float:
        """The wait before restarting a component that exited `recent_exits` times in the window."""
        return float(
            min(
                self.restart_backoff_max_seconds,
                self.restart_backoff_initial_seconds * 2 ** (recent_exits - 1),
            )
        )


class ConsoleSettings(BaseSettings):
    """The web console's static-file process (`python -m services.console`), which serves the
    built single-page app (web/dist) behind the gateway's catch-all route."""

    model_config = SettingsConfigDict(env_prefix="PINGVAS_CONSOLE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the static-file server listens on.")
    port: int = Field(8090, ge=1, le=65535, description="Port the static-file server listens on.")
    assets_dir: Path = Field(
        Path(__file__).resolve().parents[2] / "web" / "dist",
        description="The console's built assets (`npm run build` in web/), index.html at the top.",
    )
    image_origins: list[str] = Field(
        default_factory=list,
        description="Origins image URLs point at, allowed by the Content-Security-Policy's img-src; "
        "when empty, the origin of the S3 endpoint (PINGVAS_S3_ENDPOINT_URL) or CloudFront domain.",
    )


class WorkerSettings(CommonSettings):
    worker_id: str = Field("", description="Stable name of this worker; hostname-pid when empty.")
    health_host: str = Field("127.0.0.1", description="Address of the worker's gRPC health server.")
    health_port: int = Field(description="Port of the worker's gRPC health server.")
    models_dir: Path | None = Field(
        None,
        description="The local model cache the worker loads from, shared by every worker on it "
        "(the EFS mount in production); PINGVAS_HOME/models. A model not in it is downloaded "
        "from the models bucket, once across all of them.",
    )
    device: str | None = Field(None, description="torch device; cuda when available, else cpu.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; on a CPU worker all cores but one when unset."
    )
    preload_models: list[str] = Field(default_factory=list, description="Models loaded and pinned at start.")
    memory_budget_bytes: int | None = Field(None, description="Model memory budget; unlimited when unset.")
    shutdown_grace_seconds: float = Field(
        90.0,
        description="On SIGTERM (a spot interruption), the current job is finished if its expected "
        "remaining time fits this budget, and handed back at once otherwise.",
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        description="Most jobs sharing model, size, steps and guidance run as one pipeline call; "
        "when unset 4 on CUDA and 1 (no batching) on CPU, where a batch is no faster than its members.",
    )

    compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = Field(
        None,
        description="torch.compile mode for each loaded UNet (e.g. reduce-overhead: CUDA graphs); "
        "eager when unset. Each new batch size or resolution compiles on first use.",
    )

    failpoints: frozenset[Failpoint] = Field(
        frozenset(),
        description="Dev and tests only: failpoints armed in this worker, as JSON, e.g. "
        "'[\"park_after_step\"]' (see services/common/failpoints.py). Refused when PINGVAS_ENV=prod.",
    )

    @model_validator(mode="after")
    def _no_failpoints_in_prod(self) -> WorkerSettings:
        # A parked job in production would hold a GPU and a user's credits until its lease ends.
        if self.failpoints and self.env == "prod":
            raise ValueError("PINGVAS_FAILPOINTS is a dev-only setting; PINGVAS_ENV=prod refuses it")
        return self

    def resolved_max_batch(self, device_type: str) -> int:
        return self.max_batch or (4 if device_type == "cuda" else 1)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.models_dir_default


class TelemetrySettings(BaseSettings):
    """The standard OpenTelemetry variables that decide whether a process exports telemetry
    (services/common/telemetry.py); the SDK's exporters read the rest of OTEL_* themselves."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore")

    exporter_otlp_endpoint: str | None = Field(
        None,
        description="The OTLP/gRPC collector (http://host:4317). Unset: no telemetry at all, the "
        "default on a laptop.",
    )
    sdk_disabled: bool = Field(False, description="The standard switch that turns the SDK off anyway.")
    traces_sampler: str | None = Field(
        None,
        description="A standard sampler name; unset, spans follow their parent, and a client call "
        "with no parent (a poll in a background loop) is not recorded.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.exporter_otlp_endpoint) and not self.sdk_disabled
