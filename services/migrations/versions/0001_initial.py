"""Users, the credit ledger and generations.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# One statement per execute: asyncpg prepares each statement and refuses several at once.
STATEMENTS = [
    """
        CREATE TABLE users (
            id uuid PRIMARY KEY,
            email text NOT NULL UNIQUE CHECK (email = lower(email)),
            plan text NOT NULL CHECK (plan IN ('free', 'starter', 'pro', 'studio', 'enterprise')),
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
        CREATE TABLE credit_accounts (
            user_id uuid PRIMARY KEY REFERENCES users (id),
            balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
            held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
            CONSTRAINT held_within_balance CHECK (held <= balance)
        )
    """,
    """
        CREATE TABLE credit_entries (
            id bigserial PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id),
            kind text NOT NULL CHECK (kind IN ('grant', 'reset', 'hold', 'capture', 'release',
                                               'revoke', 'refund', 'adjustment')),
            amount bigint NOT NULL,
            held_change bigint NOT NULL,
            reference text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT credit_entries_natural_key UNIQUE (user_id, kind, reference)
        )
    """,
    # A hold resolves at most once: one capture or one release per reference, never both.
    """
        CREATE UNIQUE INDEX credit_entries_one_resolution
            ON credit_entries (user_id, reference) WHERE kind IN ('capture', 'release')
    """,
    "CREATE INDEX credit_entries_by_user ON credit_entries (user_id, id DESC)",
    """
        CREATE TABLE generations (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id),
            state text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
            tier text NOT NULL CHECK (tier IN ('free', 'starter', 'pro', 'studio', 'enterprise')),
            prompt text NOT NULL,
            negative_prompt text NOT NULL DEFAULT '',
            model text NOT NULL,
            width integer NOT NULL CHECK (width > 0 AND width % 8 = 0),
            height integer NOT NULL CHECK (height > 0 AND height % 8 = 0),
            steps integer NOT NULL CHECK (steps BETWEEN 1 AND 150),
            seed bigint NOT NULL CHECK (seed BETWEEN 0 AND 4294967295),
            guidance double precision NOT NULL,
            request_id text,
            attempt integer NOT NULL DEFAULT 0,
            worker_id text,
            credits_held bigint NOT NULL CHECK (credits_held >= 0),
            credits_charged bigint NOT NULL DEFAULT 0 CHECK (credits_charged >= 0),
            gpu_seconds double precision NOT NULL DEFAULT 0,
            image_key text,
            failure_reason text,
            cancel_requested boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            CONSTRAINT generations_request_id UNIQUE (user_id, request_id),
            CONSTRAINT charge_within_hold CHECK (credits_charged <= credits_held)
        )
    """,
    "CREATE INDEX generations_by_user ON generations (user_id, created_at DESC, id DESC)",
    "CREATE INDEX generations_live ON generations (state, created_at) WHERE state IN ('QUEUED', 'RUNNING')",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("generations", "credit_entries", "credit_accounts", "users"):
        op.execute(f"DROP TABLE {table}")
