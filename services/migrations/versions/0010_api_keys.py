"""Partner API keys.

`api_keys` stores each key's SHA-256 only (the secret is 32 random bytes, so a plain hash is
enough: there is nothing to brute-force), a short `prefix` of the secret that is not secret and
lets the user tell keys apart, its scopes, creation, last use, an optional expiry and the
revocation. Nothing is deleted: a revoked key keeps its row, for the record.

It is tenant data, row-level security as in 0006: the tenant role (`{schema}_app`) sees and
changes its own keys only: the user service creates, lists and revokes them in a transaction that
names the user.

Authenticating a call looks a key up by its hash, before anyone knows the tenant: every service
does it, as the system role (`{schema}_system`), inside Database.system(purpose). That role gets
exactly what the lookup needs and nothing more: SELECT of the columns that decide whether the key
authenticates and as whom (not the display name nor the prefix), and UPDATE of `last_used_at`
alone. It cannot create, revoke, rename nor re-scope a key. Neither role may DELETE.

Revision ID: 0010
Revises: 0009
"""

from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TENANT = "nullif(current_setting('pingvas.user_id', true), '')::uuid"
SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"

# What authenticating a key reads (services/common/api_keys.py); `last_used_at` too, because the
# write is skipped while the recorded use is recent.
SYSTEM_READABLE = ("id", "user_id", "secret_hash", "scopes", "expires_at", "revoked_at", "last_used_at")


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    app, system = f'"{roles.app}"', f'"{roles.system}"'
    op.execute(
        """
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id),
            display_name text NOT NULL,
            prefix text NOT NULL,
            secret_hash bytea NOT NULL UNIQUE,
            scopes text[] NOT NULL,
            created_at timestamptz NOT NULL,
            expires_at timestamptz,
            last_used_at timestamptz,
            revoked_at timestamptz,
            CHECK (cardinality(scopes) > 0)
        )
        """
    )
    op.execute("CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at DESC, id DESC)")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON api_keys TO {app}")
    op.execute(f"GRANT SELECT ({', '.join(SYSTEM_READABLE)}), UPDATE (last_used_at) ON api_keys TO {system}")
    op.execute("ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE api_keys FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_rows ON api_keys TO {app} "
        f"USING (user_id = {TENANT}) WITH CHECK (user_id = {TENANT})"
    )
    op.execute(
        f"CREATE POLICY system_work ON api_keys TO {system} "
        f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
