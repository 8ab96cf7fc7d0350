"""OAuth identities: which Pingvas user each Google or Discord account signs in as.

- `oauth_identities` maps a provider's account (`provider`, its stable `subject`: Google's `sub`,
  Discord's user id) to one user. A user may hold several, and a dev-login account may gain
  them; `email` is the verified address the identity was linked by.
  It is tenant data: row-level security as in 0006.
- Signing in looks an identity up by provider and subject, and a new identity's user up by
  verified email, before anyone is signed in: both span tenants, so it is the system role's work,
  inside Database.system(purpose). The system role may SELECT (find the identity) and INSERT
  (link a new one); nothing changes or deletes a link. The tenant role is granted nothing: no
  tenant-scoped code reads identities yet, and a grant is added with the code that needs it.

Revision ID: 0009
Revises: 0008
"""

from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    system = f'"{roles.system}"'
    op.execute(
        """
        CREATE TABLE oauth_identities (
            provider text NOT NULL CHECK (provider IN ('google', 'discord')),
            subject text NOT NULL,
            user_id uuid NOT NULL REFERENCES users (id),
            email text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, subject)
        )
        """
    )
    op.execute(f"GRANT SELECT, INSERT ON oauth_identities TO {system}")
    op.execute("ALTER TABLE oauth_identities ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE oauth_identities FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY system_work ON oauth_identities TO {system} "
        f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
    )


def downgrade() -> None:
    op.execute("DROP TABLE oauth_identities")
