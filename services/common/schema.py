"""The PostgreSQL tables, as SQLAlchemy Core. Alembic migrations (services/migrations) create them.

Every tenant-owned table carries `user_id` (users: `id`), and repositories reach them only
through `Database.tenant(user_id)` or `Database.system(purpose)`; migration 0006 has PostgreSQL
enforce that with forced row-level security.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID

metadata = sa.MetaData()

PLANS = ("free", "starter", "pro", "studio", "enterprise")
CREDIT_ENTRY_KINDS = ("grant", "reset", "hold", "capture", "release", "revoke", "refund", "adjustment")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("email", sa.Text, nullable=False, unique=True),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# The spendable balance, a projection of credit_entries kept in the same transaction as each
# entry. CHECK constraints make a negative balance or over-hold impossible under any concurrency.
credit_accounts = sa.Table(
    "credit_accounts",
    metadata,
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("held", sa.BigInteger, nullable=False),
)

# Append-only. (user_id, kind, reference) is the natural key that makes every entry idempotent,
# and a partial unique index lets each hold resolve (capture or release) at most once.
credit_entries = sa.Table(
    "credit_entries",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("held_change", sa.BigInteger, nullable=False),
    sa.Column("reference", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("negative_prompt", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("guidance", sa.Float, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker_id", sa.Text),
    sa.Column("credits_held", sa.BigInteger, nullable=False),
    sa.Column("credits_charged", sa.BigInteger, nullable=False),
    sa.Column("gpu_seconds", sa.Float, nullable=False),
    sa.Column("image_key", sa.Text),
    # Why it failed: a FailureCode and the incident id under which the detail was logged.
    sa.Column("failure_code", sa.Text),
    sa.Column("incident_id", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # Where its events go (migration 0013): fixed at acceptance, from the request or its API key.
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_events", ARRAY(sa.Text)),
    sa.Column("api_key_id", UUID(as_uuid=True), sa.ForeignKey("api_keys.id")),
    # What it runs with beyond text-to-image (migration 0014): the sampler, the input images
    # (the ids as named, the objects the worker reads), the LoRA set and the mode.
    sa.Column("sampler", sa.Text, nullable=False, server_default="euler"),
    sa.Column("strength", sa.Float),
    sa.Column("init_image_id", sa.Text),
    sa.Column("init_image_key", sa.Text),
    sa.Column("mask_image_id", sa.Text),
    sa.Column("mask_image_key", sa.Text),
    sa.Column("loras", JSONB, nullable=False, server_default="[]"),
    sa.Column("mode", sa.Text, nullable=False, server_default="text_to_image"),
)

# A user's subscriptions, one row per Lemon Squeezy subscription: a returning subscriber has
# several, and services/billing/subscriptions.py says which one decides the plan.
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("provider_subscription_id", sa.Text, primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("provider_customer_id", sa.Text),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("variant_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("renews_at", sa.DateTime(timezone=True)),
    sa.Column("ends_at", sa.DateTime(timezone=True)),
    sa.Column("grace_period_end", sa.DateTime(timezone=True)),
    sa.Column("pending_plan", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pending_upgrade", sa.Text),
    sa.Column("upgrade_state", sa.Text),
    sa.Column("previous_variant_id", sa.Text),
    sa.Column("upgrade_requested_at", sa.DateTime(timezone=True)),
    sa.Column("provider_updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# One row per distinct webhook delivery (event, resource, resource version): the dedupe key makes
# repeated and concurrent deliveries of one change act once; parked rows wait for their
# subscription to be known; quarantined rows (with their reason) wait for an operator.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
    sa.Column("event_name", sa.Text, nullable=False),
    sa.Column("resource_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
)

# Emails waiting to be sent. Callers enqueue in their own transaction, so an email exists exactly
# when the change it reports committed; a background sender delivers it later, with retries. The
# dedupe key (what the email is about) makes a redelivered event enqueue nothing new.
email_outbox = sa.Table(
    "email_outbox",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("dedupe_key", sa.Text, nullable=False, unique=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("to_address", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# The keys that sign access tokens (migration 0007): published from creation, signing from
# not_before_signing, unpublished once retired. private_key_pem is encrypted at rest.
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.Text, primary_key=True),
    sa.Column("public_jwk", JSONB, nullable=False),
    sa.Column("private_key_pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("not_before_signing", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
)

# Refresh tokens by their SHA-256 only; each descends from one sign-in (family_id).
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("family_id", UUID(as_uuid=True), nullable=False),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rotated_at", sa.DateTime(timezone=True)),
    sa.Column("replaced_by", UUID(as_uuid=True), sa.ForeignKey("refresh_tokens.id")),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

# Which user each Google or Discord account signs in as (migration 0009).
oauth_identities = sa.Table(
    "oauth_identities",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("subject", sa.Text, primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Partner API keys by their SHA-256 only (migration 0010); `prefix` is the secret's first
# characters, not secret, for display. Revoked keys keep their row.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    # Webhooks (migration 0013): the default endpoint, and the Standard Webhooks key that signs,
    # sealed (services.webhooks.sealing).
    sa.Column("default_webhook_url", sa.Text),
    sa.Column("webhook_signing_secret", sa.Text),
)

# Partner webhook deliveries (migration 0013), one per (generation, event), inserted in the
# transaction of the change it reports; its id is the stable `webhook-id` of every attempt.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("generation_id", UUID(as_uuid=True), sa.ForeignKey("generations.id"), nullable=False),
    sa.Column("api_key_id", UUID(as_uuid=True), sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("generation_id", "event"),
)

# A stored image (migration 0011): its objects' keys in the images bucket, their sizes, and what
# made it. Its id is its generation's. Written in the transaction that records the success.
# The owner stars it and puts it on a board (0012); the database derives the prompt's search
# vector.
images = sa.Table(
    "images",
    metadata,
    sa.Column("id", UUID(as_uuid=True), sa.ForeignKey("generations.id"), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("object_key", sa.Text, nullable=False, unique=True),
    sa.Column("thumbnail_key", sa.Text, nullable=False, unique=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("thumbnail_size_bytes", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("negative_prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("guidance", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("starred", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("board", sa.Text, nullable=False, server_default=""),
    sa.Column("prompt_search", TSVECTOR, sa.Computed("to_tsvector('english', prompt)", persisted=True)),
)
