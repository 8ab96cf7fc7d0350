"""Sessions: the keyring that signs access tokens, and rotating refresh tokens.

- `signing_keys` holds the ES256 keys that sign access tokens, shared by every replica of the user
  service. A key is published (in the JWKS, and to every service's verifier) from its creation,
  and signs only from `not_before_signing`, one cache period later, so that no verifier meets a
  token whose key it has not fetched. A retired key is no longer published: it is retired only
  once every token it signed has expired. The private half is stored encrypted with the
  deployment's PINGVAS_JWT_SECRET. It belongs to no tenant: the tenant role may read the public
  columns only (every service verifies tokens), the system role (the user service's sign-in
  work) reads and writes it all.
- `refresh_tokens` stores only each token's SHA-256. Every token descends from one sign-in (its
  `family_id`); using a token rotates it (`rotated_at`, `replaced_by`), and using a rotated one
  again revokes the whole family. It is tenant data: row-level security as in 0006, the tenant
  role sees its own sessions; looking a token up by its hash spans tenants and is the system
  role's, inside Database.system(purpose). Neither role may DELETE.

Revision ID: 0007
Revises: 0006
"""

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TENANT = "nullif(current_setting('pingvas.user_id', true), '')::uuid"
SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    app, system = f'"{roles.app}"', f'"{roles.system}"'
    op.execute(
        """
        CREATE TABLE signing_keys (
            kid text PRIMARY KEY,
            public_jwk jsonb NOT NULL,
            private_key_pem text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            not_before_signing timestamptz NOT NULL,
            retired_at timestamptz,
            CHECK (NOT public_jwk ? 'd')
        )
        """
    )
    op.execute(
        """
        CREATE TABLE refresh_tokens (
            id uuid PRIMARY KEY,
            family_id uuid NOT NULL,
            user_id uuid NOT NULL REFERENCES users (id),
            token_hash bytea NOT NULL UNIQUE,
            issued_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            rotated_at timestamptz,
            replaced_by uuid REFERENCES refresh_tokens (id),
            revoked_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)")
    op.execute(f"GRANT SELECT (kid, public_jwk, not_before_signing, retired_at) ON signing_keys TO {app}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON signing_keys TO {system}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO {app}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO {system}")
    op.execute("ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_rows ON refresh_tokens TO {app} "
        f"USING (user_id = {TENANT}) WITH CHECK (user_id = {TENANT})"
    )
    op.execute(
        f"CREATE POLICY system_work ON refresh_tokens TO {system} "
        f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
    )


def downgrade() -> None:
    op.execute("DROP TABLE refresh_tokens")
    op.execute("DROP TABLE signing_keys")
