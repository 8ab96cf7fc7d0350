"""Count failed attempts apart from attempts: a job handed back at a spot interruption is not a
poison job, but one that failed max_attempts times is.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE generations ADD COLUMN failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE generations DROP COLUMN failures")
