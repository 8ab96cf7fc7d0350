"""Issue 15's generation parameters: the sampler, img2img/inpainting inputs, LoRAs and the mode.

`generations` gains:
- `sampler`: the InvokeAI name the generation runs with (the model's default resolved at
  acceptance); rows from before ran the tiny models' Euler scheduler, so they read 'euler'.
- `strength`: how much of the init image is repainted, 0..1; NULL for text-to-image.
- `init_image_id` / `mask_image_id`: the ids the request named (a gallery image or an upload),
  reported back as given; `init_image_key` / `mask_image_key`: the objects of the images
  bucket the worker reads, fixed at acceptance (an upload is copied under `inputs/` when it
  is used, so the day-long expiry of `uploads/` never takes an input a generation needs).
- `loras`: the LoRA set, a JSON array of {"name", "weight"} in the request's order.
- `mode`: text_to_image, image_to_image or inpainting (services.generation.modes).

Uploads need no table: an upload's object key is derived from its owner and its id
(`uploads/{user_id}/{upload_id}`), so another tenant's id names an object that does not exist.

No new grants: `{schema}_app` already has SELECT, INSERT and UPDATE on `generations` (0006),
which cover the new columns; row-level security applies to them as to the rest of the row.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE generations
            ADD COLUMN sampler text NOT NULL DEFAULT 'euler',
            ADD COLUMN strength double precision CHECK (strength >= 0 AND strength <= 1),
            ADD COLUMN init_image_id text,
            ADD COLUMN init_image_key text,
            ADD COLUMN mask_image_id text,
            ADD COLUMN mask_image_key text,
            ADD COLUMN loras jsonb NOT NULL DEFAULT '[]',
            ADD COLUMN mode text NOT NULL DEFAULT 'text_to_image'
                CHECK (mode IN ('text_to_image', 'image_to_image', 'inpainting')),
            ADD CONSTRAINT generations_inputs_match_mode CHECK (
                (mode = 'text_to_image' AND init_image_key IS NULL AND mask_image_key IS NULL
                    AND strength IS NULL)
                OR (mode = 'image_to_image' AND init_image_key IS NOT NULL AND mask_image_key IS NULL
                    AND strength IS NOT NULL)
                OR (mode = 'inpainting' AND init_image_key IS NOT NULL AND mask_image_key IS NOT NULL
                    AND strength IS NOT NULL)
            )
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE generations
            DROP CONSTRAINT generations_inputs_match_mode,
            DROP COLUMN mode,
            DROP COLUMN loras,
            DROP COLUMN mask_image_key,
            DROP COLUMN mask_image_id,
            DROP COLUMN init_image_key,
            DROP COLUMN init_image_id,
            DROP COLUMN strength,
            DROP COLUMN sampler
        """
    )
