"""What a generation starts from, and the LoRAs it applies: generation-domain vocabulary that the
service records at acceptance and the GPU worker reads back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class GenerationMode(StrEnum):
    """The `generations.mode` column (migration 0014's CHECK spells the same words). It follows
    from the input images: none, an init image, or an init image and a mask."""

    TEXT_TO_IMAGE = "text_to_image"
    IMAGE_TO_IMAGE = "image_to_image"
    INPAINTING = "inpainting"

    @classmethod
    def of(cls, *, has_init: bool, has_mask: bool) -> GenerationMode:
        if not has_init:
            return cls.TEXT_TO_IMAGE
        return cls.INPAINTING if has_mask else cls.IMAGE_TO_IMAGE


@dataclass(frozen=True)
class LoraWeight:
    """One LoRA of the catalog applied with a weight (1 is the adapter's full strength)."""

    name: str
    weight: float

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LoraWeight:
        return cls(name=str(value["name"]), weight=float(value["weight"]))


def lora_set_key(loras: tuple[LoraWeight, ...]) -> str:
    """The LoRA set as a batch key names it: order does not change the result, so it is sorted."""
    return ",".join(f"{lora.name}:{lora.weight:g}" for lora in sorted(loras, key=lambda lora: lora.name))


def steps_run(steps: int, strength: float | None) -> int:
    """The denoising steps a run of `steps` takes at `strength` (None: text-to-image, all of
    them): img2img and inpainting start (1 - strength) into the schedule, so ceil(strength x
    steps), at least 1."""
    if strength is None:
        return steps
    return max(1, math.ceil(strength * steps))
