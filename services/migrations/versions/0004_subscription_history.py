"""A user's subscriptions as a history keyed by Lemon Squeezy's subscription id; upgrades as an
intent that waits for its payment; quarantined webhook deliveries.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    # A returning subscriber has an old row and a new one: the key is Lemon Squeezy's id.
    "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_pkey",
    "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_provider_subscription_id_key",
    "ALTER TABLE subscriptions ADD PRIMARY KEY (provider_subscription_id)",
    "CREATE INDEX subscriptions_user ON subscriptions (user_id)",
    # When Lemon Squeezy says the subscription started: among live subscriptions, the one that
    # started last decides the plan.
    "ALTER TABLE subscriptions ADD COLUMN started_at timestamptz",
    "UPDATE subscriptions SET started_at = created_at",
    "ALTER TABLE subscriptions ALTER COLUMN started_at SET NOT NULL",
    # An upgrade recorded before Lemon Squeezy is called, and settled by its paid invoice.
    """
        ALTER TABLE subscriptions
            ADD COLUMN pending_upgrade text
                CHECK (pending_upgrade IN ('starter', 'pro', 'studio', 'enterprise')),
            ADD COLUMN upgrade_state text
                CHECK (upgrade_state IN ('requested', 'awaiting_payment', 'reverting')),
            ADD COLUMN previous_variant_id text,
            ADD COLUMN upgrade_requested_at timestamptz,
            ADD CONSTRAINT subscriptions_upgrade_complete
                CHECK ((pending_upgrade IS NULL) = (upgrade_state IS NULL))
    """,
    "ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check",
    """
        ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
            CHECK (status IN ('processed', 'parked', 'ignored', 'quarantined'))
    """,
    # Why a delivery was quarantined (and stays, after an operator applied it).
    "ALTER TABLE webhook_deliveries ADD COLUMN reason text",
    "CREATE INDEX webhook_deliveries_quarantined ON webhook_deliveries (id) WHERE status = 'quarantined'",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in [
        "DROP INDEX webhook_deliveries_quarantined",
        "ALTER TABLE webhook_deliveries DROP COLUMN reason",
        "UPDATE webhook_deliveries SET status = 'ignored' WHERE status = 'quarantined'",
        "ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check",
        """
            ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
                CHECK (status IN ('processed', 'parked', 'ignored'))
        """,
        """
            ALTER TABLE subscriptions
                DROP CONSTRAINT subscriptions_upgrade_complete,
                DROP COLUMN upgrade_requested_at,
                DROP COLUMN previous_variant_id,
                DROP COLUMN upgrade_state,
                DROP COLUMN pending_upgrade,
                DROP COLUMN started_at
        """,
        "DROP INDEX subscriptions_user",
        "ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_pkey",
        "ALTER TABLE subscriptions ADD UNIQUE (provider_subscription_id)",
        # Fails when a user has more than one subscription, as it should: history would be lost.
        "ALTER TABLE subscriptions ADD PRIMARY KEY (user_id)",
    ]:
        op.execute(statement)
