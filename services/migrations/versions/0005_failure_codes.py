"""Failures as a code and an incident id instead of raw exception text, which could show users
file paths and CUDA messages. Past failures keep no text: their detail is in the logs.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE generations ADD COLUMN failure_code text, ADD COLUMN incident_id text")
    op.execute("UPDATE generations SET failure_code = 'UNKNOWN' WHERE state = 'FAILED'")
    op.execute("ALTER TABLE generations DROP COLUMN failure_reason")
    op.execute(
        "ALTER TABLE generations ADD CONSTRAINT generations_failure_code_when_failed "
        "CHECK ((state = 'FAILED') = (failure_code IS NOT NULL))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE generations DROP CONSTRAINT generations_failure_code_when_failed")
    op.execute("ALTER TABLE generations ADD COLUMN failure_reason text")
    op.execute("UPDATE generations SET failure_reason = failure_code WHERE state = 'FAILED'")
    op.execute("ALTER TABLE generations DROP COLUMN failure_code, DROP COLUMN incident_id")
