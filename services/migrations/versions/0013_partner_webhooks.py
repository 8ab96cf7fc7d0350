"""Completion webhooks for partners: where a generation's events go, the key that signs them, and
the outbox that delivers them.

- `api_keys` gains `default_webhook_url` and `webhook_signing_secret` (`whsec_` and base64, as the
  Standard Webhooks specification writes it). The secret must be readable to sign with (an HMAC
  key cannot be stored as a hash), so it is stored sealed under a key derived from
  PINGVAS_JWT_SECRET (services.webhooks.sealing); keys made before this migration have none and
  cannot carry webhooks.
- `generations` gains `webhook_url`, `webhook_events` and `api_key_id`: what CreateGeneration
  asked for (or the key's default), fixed when the job is accepted.
- `webhook_outbox` holds one row per (generation, event), inserted in the transaction that makes
  the change it reports (RUNNING for `started`, the terminal state for `completed`), so a crash
  can neither lose nor invent one, and a redone change inserts nothing new. Its id is the
  delivery's stable `webhook-id`. `services.webhooks` sends due rows and records each attempt.

Grants, the narrowest that do the work, under row-level security as in 0006:
- `{schema}_app` (the generation service and the workers, in their tenant transactions): SELECT
  and INSERT on `webhook_outbox`, for its own tenant's rows only.
- `{schema}_system` (the deliverer, inside Database.system(purpose)): SELECT and UPDATE of the
  delivery's progress columns on `webhook_outbox`, and SELECT of `webhook_signing_secret` on
  `api_keys`, to sign. It cannot create deliveries nor change where one goes.

Revision ID: 0013
Revises: 0012
"""

from alembic import context, op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TENANT = "nullif(current_setting('pingvas.user_id', true), '')::uuid"
SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"

DELIVERY_PROGRESS = ("state", "attempts", "next_attempt_at", "last_status", "last_error", "finished_at")


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    app, system = f'"{roles.app}"', f'"{roles.system}"'
    op.execute(
        "ALTER TABLE api_keys ADD COLUMN default_webhook_url text, ADD COLUMN webhook_signing_secret text"
    )
    op.execute(
        """
        ALTER TABLE generations
            ADD COLUMN webhook_url text,
            ADD COLUMN webhook_events text[],
            ADD COLUMN api_key_id uuid REFERENCES api_keys (id)
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_outbox (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id),
            generation_id uuid NOT NULL REFERENCES generations (id),
            api_key_id uuid NOT NULL REFERENCES api_keys (id),
            event text NOT NULL CHECK (event IN ('started', 'completed')),
            url text NOT NULL,
            payload jsonb NOT NULL,
            state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_status integer,
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            UNIQUE (generation_id, event)
        )
        """
    )
    op.execute("CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending'")
    op.execute(f"GRANT SELECT, INSERT ON webhook_outbox TO {app}")
    op.execute(f"GRANT SELECT, UPDATE ({', '.join(DELIVERY_PROGRESS)}) ON webhook_outbox TO {system}")
    op.execute(f"GRANT SELECT (webhook_signing_secret) ON api_keys TO {system}")
    op.execute("ALTER TABLE webhook_outbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE webhook_outbox FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_rows ON webhook_outbox TO {app} "
        f"USING (user_id = {TENANT}) WITH CHECK (user_id = {TENANT})"
    )
    op.execute(
        f"CREATE POLICY system_work ON webhook_outbox TO {system} "
        f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
    )


def downgrade() -> None:
    roles = context.config.attributes["roles"]
    op.execute(f'REVOKE SELECT (webhook_signing_secret) ON api_keys FROM "{roles.system}"')
    op.execute("DROP TABLE webhook_outbox")
    op.execute(
        "ALTER TABLE generations DROP COLUMN api_key_id, DROP COLUMN webhook_events, DROP COLUMN webhook_url"
    )
    op.execute("ALTER TABLE api_keys DROP COLUMN webhook_signing_secret, DROP COLUMN default_webhook_url")
