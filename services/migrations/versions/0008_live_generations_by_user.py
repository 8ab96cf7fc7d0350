"""The per-user cap counts a user's queued and running generations on every CreateGeneration.

Without this index that count walks the user's whole history through `generations_by_user`,
reading every finished row to find the few live ones, so admission grows slower the more a user
has made. The partial index holds live rows only: it stays as small as the queue.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX generations_live_by_user ON generations (user_id) WHERE state IN ('QUEUED', 'RUNNING')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX generations_live_by_user")
