"""Row-level security, and each environment's own roles with exactly the grants they need.

Tenant data is reached only through a transaction that names the tenant, and the database
enforces it: every table holding tenant data has row-level security ENABLEd and FORCEd (so the
owner is held to the policies too), and the services connect as roles that are neither
superuser, owner, BYPASSRLS nor members of another role (services.migrations.provision makes
them; services.common.database.DatabaseRoles names them after the schema):

- `{schema}_app`, the tenant role. Its policies show it only rows whose user is the transaction's
  `pingvas.user_id` (set transaction-locally by Database.tenant), so a query that forgets its
  `WHERE user_id` still sees one tenant, and a query outside a tenant transaction sees nothing.
  It reads and changes its tenant's account, generations, ledger and subscriptions, appends
  ledger entries and emails, and cannot see webhook deliveries at all.
- `{schema}_system`, for the work that legitimately spans tenants: the generation reconciler and
  signed image URLs (read generations), sign-in by email (find or create a user), and billing's
  webhooks, reconciler, expiry and email sender (subscriptions, plans, credits, deliveries,
  emails, for whichever user a Lemon Squeezy event names). Its policies admit it only inside
  Database.system(purpose), which sets `pingvas.system_purpose`.

Neither role may UPDATE, DELETE or TRUNCATE the ledger (credit_entries), nor DELETE anything:
nothing in Pingvas deletes rows. The roles are granted on this schema only, so dev's roles
cannot reach prod_pingvas and prod's cannot reach dev_pingvas. The single `pingvas_app` role of
0002, granted on every schema, loses what it held here.

Revision ID: 0006
Revises: 0005
"""

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Each table holding tenant data, and the expression that names its tenant. webhook_deliveries
# has no user column (its payloads name users): only the system role reaches it.
TENANT_TABLES = {
    "users": "id",
    "credit_accounts": "user_id",
    "credit_entries": "user_id",
    "generations": "user_id",
    "subscriptions": "user_id",
    "email_outbox": "user_id",
    "webhook_deliveries": None,
}

# nullif: after a tenant transaction the setting reverts to '' on that connection, not to unset.
TENANT = "nullif(current_setting('pingvas.user_id', true), '')::uuid"
SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"

APP_GRANTS = {
    "users": "SELECT, UPDATE",  # a plan change; sign-up is the system role's
    "credit_accounts": "SELECT, INSERT, UPDATE",
    "credit_entries": "SELECT, INSERT",  # append-only
    "generations": "SELECT, INSERT, UPDATE",
    "subscriptions": "SELECT, UPDATE",  # an upgrade's intent; webhooks create subscriptions
    "email_outbox": "SELECT, INSERT",  # enqueued with the change it reports; sent by the system role
}
SYSTEM_GRANTS = {
    "users": "SELECT, INSERT, UPDATE",
    "credit_accounts": "SELECT, INSERT, UPDATE",
    "credit_entries": "SELECT, INSERT",  # append-only
    "generations": "SELECT",
    "subscriptions": "SELECT, INSERT, UPDATE",
    "webhook_deliveries": "SELECT, INSERT, UPDATE",
    "email_outbox": "SELECT, INSERT, UPDATE",
}
APP_SEQUENCES = ("credit_entries_id_seq", "email_outbox_id_seq")
SYSTEM_SEQUENCES = ("credit_entries_id_seq", "webhook_deliveries_id_seq", "email_outbox_id_seq")

LEGACY_ROLE = "pingvas_app"


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    roles = context.config.attributes["roles"]
    app, system = f'"{roles.app}"', f'"{roles.system}"'
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{LEGACY_ROLE}') THEN
                REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {LEGACY_ROLE};
                REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM {LEGACY_ROLE};
                REVOKE ALL ON SCHEMA "{schema}" FROM {LEGACY_ROLE};
            END IF;
        END
        $$
        """
    )
    for role in (app, system):
        op.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
        op.execute(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM {role}')
        op.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    for table, privileges in APP_GRANTS.items():
        op.execute(f"GRANT {privileges} ON {table} TO {app}")
    for table, privileges in SYSTEM_GRANTS.items():
        op.execute(f"GRANT {privileges} ON {table} TO {system}")
    for sequence in APP_SEQUENCES:
        op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {app}")
    for sequence in SYSTEM_SEQUENCES:
        op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {system}")
    for table, tenant_column in TENANT_TABLES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        if tenant_column is not None:
            op.execute(
                f"CREATE POLICY tenant_rows ON {table} TO {app} "
                f"USING ({tenant_column} = {TENANT}) WITH CHECK ({tenant_column} = {TENANT})"
            )
        op.execute(
            f"CREATE POLICY system_work ON {table} TO {system} "
            f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
        )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    roles = context.config.attributes["roles"]
    for table, tenant_column in TENANT_TABLES.items():
        op.execute(f"DROP POLICY system_work ON {table}")
        if tenant_column is not None:
            op.execute(f"DROP POLICY tenant_rows ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for role in (roles.app, roles.system):
        op.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"')
        op.execute(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM "{role}"')
        op.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM "{role}"')
