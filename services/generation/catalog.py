"""The models the GPU workers can serve: diffusers directories under one models folder.

Generation-domain knowledge, shared by both sides: the generation service validates a request's
model name and image size with it, and the workers find the models they load with it. Deliberately
free of torch and diffusers, so the generation service stays a light process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SIZE_MULTIPLE = 8  # Latent pixels cover 8x8 image pixels; sizes off this grid cannot be generated.


@dataclass(frozen=True)
class ModelInfo:
    """What the mesh needs to know about a model without loading it."""

    name: str
    family: str  # "sd15" or "sdxl": selects the preview projection and the pipeline class.
    path: Path
    native_size: int  # The image side the model was trained at, in pixels.
    min_size: int  # The smallest image side accepted, in pixels; a multiple of 8.
    max_size: int  # The largest image side accepted, in pixels.
    latent_channels: int


class ModelCatalog:
    """Finds diffusers models under `models_dir`; each `models_dir/<name>/model_index.json` is one.

    A directory that is not a readable diffusers text-to-image model is skipped (and logged), never
    an error: the folder is shared with operators copying models in by hand.
    """

    def __init__(self, models_dir: Path) -> None:
        self._models_dir = models_dir
        self._models: dict[str, ModelInfo] = {}
        self.rescan()

    @property
    def models_dir(self) -> Path:
        return self._models_dir

    def get(self, name: str) -> ModelInfo | None:
        """The model called `name`, or None.

        An unknown name triggers a rescan, so a model dropped into the folder later is served
        without a restart.
        """
        info = self._models.get(name)
        if info is None:
            self.rescan()
            info = self._models.get(name)
        return info

    def names(self) -> list[str]:
        """The names of the models found at the last scan, sorted."""
        return sorted(self._models)

    def rescan(self) -> None:
        """Read the models folder again. Replaces the index in one assignment, so readers in other
        threads see either the old or the new index, never a half-built one."""
        models: dict[str, ModelInfo] = {}
        try:
            candidates = sorted(self._models_dir.iterdir())
        except OSError as error:
            logger.warning("cannot list models folder %s: %s", self._models_dir, error)
            candidates = []
        for candidate in candidates:
            if candidate.name.startswith(".") or not candidate.is_dir():
                continue
            info = _read_model(candidate)
            if info is not None:
                models[info.name] = info
        self._models = models


def size_range(native_size: int) -> tuple[int, int]:
    """The accepted image sides for a model trained at `native_size`: half to double native.

    Below half, the UNet's receptive field sees too little to compose an image; above double, it
    repeats subjects. The minimum is rounded up to the 8-pixel latent grid.
    """
    half = max(_SIZE_MULTIPLE, native_size // 2)
    min_size = -(-half // _SIZE_MULTIPLE) * _SIZE_MULTIPLE
    return min_size, native_size * 2


def _read_model(model_dir: Path) -> ModelInfo | None:
    try:
        index = _read_json_object(model_dir / "model_index.json")
        unet = _read_json_object(model_dir / "unet" / "config.json")
        vae = _read_json_object(model_dir / "vae" / "config.json")
        class_name = _require(index, "_class_name", str)
        sample_size = _require(unet, "sample_size", int)
        latent_channels = _require(unet, "in_channels", int)
        vae_blocks = _require(vae, "block_out_channels", list)
    except (OSError, ValueError) as error:
        # ValueError covers malformed JSON (json.JSONDecodeError) and missing or mistyped keys.
        logger.info("skipping %s: not a diffusers text-to-image model (%s)", model_dir, error)
        return None
    if sample_size <= 0 or latent_channels <= 0 or not vae_blocks:
        logger.info("skipping %s: implausible unet/vae config", model_dir)
        return None
    # Each VAE block after the first halves the resolution.
    native_size = sample_size * 2 ** (len(vae_blocks) - 1)
    min_size, max_size = size_range(native_size)
    return ModelInfo(
        name=model_dir.name,
        family="sdxl" if "XL" in class_name else "sd15",
        path=model_dir,
        native_size=native_size,
        min_size=min_size,
        max_size=max_size,
        latent_channels=latent_channels,
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _require(config: dict[str, Any], key: str, kind: type[_T]) -> _T:
    value = config.get(key)
    # bool is an int subclass; a `true` sample_size is garbage, not 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key!r} missing or not {kind.__name__}")
    return value
