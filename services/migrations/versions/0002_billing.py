"""Subscriptions, Lemon Squeezy webhook deliveries, the email outbox, and the application role
that may append to the ledger but never rewrite it.

Revision ID: 0002
Revises: 0001
"""

from alembic import context, op

from services.common.database import APP_ROLE

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


def app_role_statements(schema: str) -> list[str]:
    """The role every service runs as: it appends to the ledger and never rewrites it."""
    return [
        f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    CREATE ROLE {APP_ROLE} NOLOGIN;
                END IF;
            END
            $$
        """,
        f'GRANT USAGE ON SCHEMA "{schema}" TO {APP_ROLE}',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO {APP_ROLE}',
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {APP_ROLE}',
        f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}',
        f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}',
        f"REVOKE UPDATE, DELETE, TRUNCATE ON credit_entries FROM {APP_ROLE}",
        f"REVOKE ALL ON alembic_version FROM {APP_ROLE}",
    ]


def upgrade() -> None:
    for statement in [*STATEMENTS, *app_role_statements(context.config.attributes["schema"])]:
        op.execute(statement)


def downgrade() -> None:
    for table in ("email_outbox", "webhook_deliveries", "subscriptions"):
        op.execute(f"DROP TABLE {table}")
