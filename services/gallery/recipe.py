"""An image's recipe: the parameters that made it, as GetImage shows them. The gallery shows it on
every image, and the GPU worker embeds the same JSON in the PNG it stores (the `pingvas` tEXt
chunk), so a downloaded image carries what "use again" would copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from google.protobuf import json_format
from pingvas.gallery.v1 import gallery_resources_pb2 as resources
from pingvas.generation.v1.generation_resources_pb2 import GenerationMode
from pingvas.generation.v1.generation_resources_pb2 import LoraWeight as LoraWeightProto

from services.generation.modes import LoraWeight

# The fields of `Image` that say how it was made (the rest say where it is and how it is kept).
RECIPE_FIELDS = (
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "mode",
    "strength",
    "loras",
    "init_image_id",
    "mask_image_id",
)


class RecipeSource(Protocol):
    """What a recipe is read from: an image's row, or the generation that is making it."""

    @property
    def prompt(self) -> str: ...
    @property
    def negative_prompt(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def guidance(self) -> float: ...
    @property
    def sampler(self) -> str: ...
    @property
    def mode(self) -> str: ...  # services.generation.modes.GenerationMode's words.
    @property
    def strength(self) -> float | None: ...
    @property
    def init_image_id(self) -> str | None: ...
    @property
    def mask_image_id(self) -> str | None: ...


def image_recipe(source: RecipeSource, loras: Sequence[LoraWeight]) -> resources.Image:
    """An `Image` with only its recipe fields set."""
    return resources.Image(
        prompt=source.prompt,
        negative_prompt=source.negative_prompt,
        model=source.model,
        width=source.width,
        height=source.height,
        seed=source.seed,
        steps=source.steps,
        guidance=source.guidance,
        sampler=source.sampler,
        mode=GenerationMode.Value(f"GENERATION_MODE_{source.mode.upper()}"),
        strength=source.strength,
        loras=[LoraWeightProto(name=lora.name, weight=lora.weight) for lora in loras],
        init_image_id=source.init_image_id or "",
        mask_image_id=source.mask_image_id or "",
    )


_JSON_NAMES = frozenset(resources.Image.DESCRIPTOR.fields_by_name[name].json_name for name in RECIPE_FIELDS)


def recipe_json(source: RecipeSource, loras: Sequence[LoraWeight]) -> dict[str, Any]:
    """The recipe as GetImage's JSON (through the gateway) shows it: camelCase names, enums by
    name, int64 as strings, fields at their defaults included, strength absent when unset."""
    shown = json_format.MessageToDict(image_recipe(source, loras), always_print_fields_with_no_presence=True)
    return {name: value for name, value in shown.items() if name in _JSON_NAMES}
