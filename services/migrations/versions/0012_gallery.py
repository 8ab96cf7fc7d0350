"""The gallery's own fields on images: starred, a board, and a full-text index of the prompt.

- `starred` and `board` are the owner's to change (UpdateImage). A board is a name on the image,
  '' for none: a board exists while an image names it, as a tag does, so there is no second
  table to keep in step and nothing to clean up when its last image goes.
- `prompt_search` is a tsvector the database derives from the prompt (English configuration),
  with a GIN index, for ListImages' `websearch_to_tsquery` search.

Grants, the narrowest that do the work:
- `{schema}_app` gains UPDATE of `starred` and `board` only (the columns UpdateImage sets) and
  DELETE (DeleteImage), both still under the tenant policy of 0011: a tenant changes and
  deletes only its own rows.
- `{schema}_system` gains nothing. `pingvas storage gc` reads rows by object key with the
  SELECT that 0011 granted (inside Database.system(purpose)) and deletes only objects, never
  rows.

Revision ID: 0012
Revises: 0011
"""

from alembic import context, op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    app = f'"{roles.app}"'
    op.execute(
        """
        ALTER TABLE images
            ADD COLUMN starred boolean NOT NULL DEFAULT false,
            ADD COLUMN board text NOT NULL DEFAULT '' CHECK (length(board) <= 100),
            ADD COLUMN prompt_search tsvector
                GENERATED ALWAYS AS (to_tsvector('english', prompt)) STORED
        """
    )
    op.execute("CREATE INDEX images_prompt_search ON images USING gin (prompt_search)")
    # A board's images and the starred ones, newest first: the keyset walk of a filtered listing.
    op.execute(
        "CREATE INDEX images_by_user_board_newest ON images (user_id, board, created_at DESC, id DESC) "
        "WHERE board <> ''"
    )
    op.execute(
        "CREATE INDEX images_by_user_starred_newest ON images (user_id, created_at DESC, id DESC) "
        "WHERE starred"
    )
    op.execute(f"GRANT UPDATE (starred, board), DELETE ON images TO {app}")


def downgrade() -> None:
    roles = context.config.attributes["roles"]
    op.execute(f'REVOKE UPDATE (starred, board), DELETE ON images FROM "{roles.app}"')
    op.execute("ALTER TABLE images DROP COLUMN prompt_search, DROP COLUMN board, DROP COLUMN starred")
