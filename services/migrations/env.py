"""Alembic environment: migrations always run on a connection handed over by
services.migrations.upgrade, whose search_path already names the deployment's schema."""

from alembic import context

from services.common.schema import metadata

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=schema,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
