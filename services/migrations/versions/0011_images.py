"""The gallery's images: one row per stored image, written in the transaction that records its
generation's success, after its objects are in S3 (so never a row without an object).

The row holds what the gallery lists and filters on without reading S3: the object keys (the
PNG at the seed's `{user_id}/{yyyy}/{mm}/{id}.png`, its WebP thumbnail beside it), their sizes,
the dimensions and what made it (prompt, seed, model, steps, guidance). An image's id is the
id of the generation that made it.

It is tenant data: row-level security ENABLEd and FORCEd as in 0006. Grants:
- `{schema}_app` (the worker's and the gallery's tenant transactions): SELECT and INSERT. The
  worker inserts its job's user's image; the gallery reads the caller's. No UPDATE or DELETE yet.
- `{schema}_system`: SELECT, inside Database.system(purpose): the gateway's signed image URLs
  (GetImageContent) name an image, not a tenant, and find its object by id.

Revision ID: 0011
Revises: 0010
"""

from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TENANT = "nullif(current_setting('pingvas.user_id', true), '')::uuid"
SYSTEM_PURPOSE_SET = "nullif(current_setting('pingvas.system_purpose', true), '') IS NOT NULL"


def upgrade() -> None:
    roles = context.config.attributes["roles"]
    app, system = f'"{roles.app}"', f'"{roles.system}"'
    op.execute(
        """
        CREATE TABLE images (
            id uuid PRIMARY KEY REFERENCES generations (id),
            user_id uuid NOT NULL REFERENCES users (id),
            object_key text NOT NULL UNIQUE,
            thumbnail_key text NOT NULL UNIQUE,
            size_bytes bigint NOT NULL CHECK (size_bytes > 0),
            thumbnail_size_bytes bigint NOT NULL CHECK (thumbnail_size_bytes > 0),
            width integer NOT NULL,
            height integer NOT NULL,
            prompt text NOT NULL,
            negative_prompt text NOT NULL,
            seed bigint NOT NULL,
            model text NOT NULL,
            steps integer NOT NULL,
            guidance double precision NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # A user's gallery, newest first, paged by (created_at, id).
    op.execute("CREATE INDEX images_by_user_newest ON images (user_id, created_at DESC, id DESC)")
    op.execute(f"GRANT SELECT, INSERT ON images TO {app}")
    op.execute(f"GRANT SELECT ON images TO {system}")
    op.execute("ALTER TABLE images ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE images FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_rows ON images TO {app} USING (user_id = {TENANT}) WITH CHECK (user_id = {TENANT})"
    )
    op.execute(
        f"CREATE POLICY system_work ON images TO {system} "
        f"USING ({SYSTEM_PURPOSE_SET}) WITH CHECK ({SYSTEM_PURPOSE_SET})"
    )


def downgrade() -> None:
    op.execute("DROP TABLE images")
