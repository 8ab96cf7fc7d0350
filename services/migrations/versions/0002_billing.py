"""Subscriptions, Lemon Squeezy webhook deliveries and the email outbox.

This revision also created the role `pingvas_app` once, granted on every schema; 0006 replaced
it with each environment's own roles and grants, and removes what it held.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


STATEMENTS = [
    """
        CREATE TABLE subscriptions (
            user_id uuid PRIMARY KEY REFERENCES users (id),
            provider_subscription_id text NOT NULL UNIQUE,
            provider_customer_id text,
            plan text NOT NULL CHECK (plan IN ('starter', 'pro', 'studio', 'enterprise')),
            variant_id text NOT NULL,
            status text NOT NULL CHECK (status IN ('active', 'payment_failed', 'cancelled', 'expired')),
            renews_at timestamptz,
            ends_at timestamptz,
            grace_period_end timestamptz,
            -- A downgrade waits for the end of the period.
            pending_plan text CHECK (pending_plan IN ('starter', 'pro', 'studio', 'enterprise')),
            -- Lemon Squeezy's updated_at of the newest state applied: an older one is stale.
            provider_updated_at timestamptz NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
        CREATE TABLE webhook_deliveries (
            id bigserial PRIMARY KEY,
            -- event name, resource id and the resource's updated_at: one delivery of one change.
            dedupe_key text NOT NULL UNIQUE,
            event_name text NOT NULL,
            resource_id text NOT NULL,
            subscription_id text,
            status text NOT NULL CHECK (status IN ('processed', 'parked', 'ignored')),
            payload jsonb NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            processed_at timestamptz
        )
    """,
    "CREATE INDEX webhook_deliveries_parked ON webhook_deliveries (subscription_id) WHERE status = 'parked'",
    """
        CREATE TABLE email_outbox (
            id bigserial PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id),
            -- what the email is about, e.g. renewed:{invoice}: one email per event, however often
            -- the event is delivered.
            dedupe_key text NOT NULL UNIQUE,
            kind text NOT NULL,
            to_address text NOT NULL,
            subject text NOT NULL,
            body text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            sent_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    "CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE sent_at IS NULL",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("email_outbox", "webhook_deliveries", "subscriptions"):
        op.execute(f"DROP TABLE {table}")
