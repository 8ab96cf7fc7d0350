"""The models the GPU workers can serve, and what the mesh knows about each without loading it.

Generation-domain knowledge, shared by both sides: the generation service validates a request's
model name and image size with it, and the workers find the models they load with it. Deliberately
free of torch and diffusers, so the generation service stays a light process.

Where the models come from is a `ModelSource`: the models bucket's manifests in every running
process (`services/generation/model_store.py`), or a local folder of diffusers directories
(`ModelFolder`) for tests and tools that use a cache directory directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from services.common.pagination import decode_name_token, encode_name_token, page_limit
from services.generation.samplers import ModelFamily, Sampler, samplers_for

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# What a model may be called: its name is a directory of the cache and part of object keys.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_SIZE_MULTIPLE = 8  # Latent pixels cover 8x8 image pixels; sizes off this grid cannot be generated.

# An optional JSON object beside a diffusers model's `model_index.json` with what its configs cannot
# say: `{"inpainting_variant": "<model name>"}` names the model's inpainting variant.
MODEL_SETTINGS_FILE = "pingvas.json"


class ModelKind(StrEnum):
    PIPELINE = "pipeline"  # A whole text-to-image pipeline a generation names as its `model`.
    LORA = "lora"  # A low-rank adapter a generation applies to a pipeline of its family.


class ModelFormat(StrEnum):
    DIFFUSERS = "diffusers"  # A diffusers directory (model_index.json and one folder per part).
    SINGLE_FILE = "single_file"  # One .safetensors checkpoint, loaded with `from_single_file`.


@dataclass(frozen=True)
class ModelInfo:
    """What the mesh needs to know about a model without loading it."""

    name: str
    family: ModelFamily
    path: Path
    native_size: int  # The image side the model was trained at, in pixels.
    min_size: int  # The smallest image side accepted, in pixels; a multiple of 8.
    max_size: int  # The largest image side accepted, in pixels.
    latent_channels: int
    kind: ModelKind = ModelKind.PIPELINE
    format: ModelFormat = ModelFormat.DIFFUSERS
    # The model's inpainting variant (a pipeline whose UNet also takes the mask and the masked
    # image), by name; empty when it has none and inpainting blends masked img2img instead.
    inpainting_variant: str = ""

    @property
    def samplers(self) -> tuple[Sampler, ...]:
        """The samplers a generation on this model may name."""
        return samplers_for(self.family)


class ModelSource(Protocol):
    """Where a catalog reads its models from."""

    async def read_models(self) -> dict[str, ModelInfo]:
        """Every model the source holds now, by name. Raises when the source cannot be read."""
        ...


class ModelFolder:
    """Diffusers models under one local folder; each `folder/<name>/model_index.json` is one.

    A directory that is not a readable diffusers text-to-image model is skipped (and logged), never
    an error: the folder is shared with operators copying models in by hand.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def read_models(self) -> dict[str, ModelInfo]:
        return await asyncio.to_thread(self.scan)

    def scan(self) -> dict[str, ModelInfo]:
        models: dict[str, ModelInfo] = {}
        try:
            candidates = sorted(self.folder.iterdir())
        except OSError as error:
            logger.warning("cannot list models folder %s: %s", self.folder, error)
            candidates = []
        for candidate in candidates:
            if candidate.name.startswith(".") or not candidate.is_dir():
                continue
            info = read_model(candidate)
            if info is not None:
                models[info.name] = info
        return models


class ModelCatalog:
    """The models of a `ModelSource`, read once at start (`refresh`) and again when a name it
    does not know is asked for, so a model added later is served without a restart.

    Misses are rate-limited: a miss waits for a read that starts after it arrived (so a model
    pushed before the request is always seen), reads start at most once per
    `refresh_interval_seconds`, and every miss waiting meanwhile shares the one read. A flood of
    unknown names costs the source one read per interval, and each such request waits at most
    that long.

    All methods must be called from one event loop.
    """

    def __init__(self, source: ModelSource, *, refresh_interval_seconds: float = 0.0) -> None:
        self._source = source
        self._refresh_interval_seconds = refresh_interval_seconds
        self._models: dict[str, ModelInfo] = {}
        self._refreshing: asyncio.Task[None] | None = None
        # When the read in flight began reading (None while it waits for its turn), and when the
        # last read began: the rate limit counts from there.
        self._read_started: float | None = None
        self._last_read_started = -float("inf")

    @property
    def source(self) -> ModelSource:
        return self._source

    async def get(self, name: str) -> ModelInfo | None:
        """The model called `name`, or None when the source does not hold it either."""
        info = self._models.get(name)
        if info is None and MODEL_NAME.fullmatch(name):
            # A name no model can have costs no read.
            await self._refresh_after(time.monotonic())
            info = self._models.get(name)
        return info

    def names(self) -> list[str]:
        """The names of the models found at the last read, sorted."""
        return sorted(self._models)

    def page(self, *, page_size: int, page_token: str) -> tuple[list[ModelInfo], str]:
        """One page of the models found at the last read, by name, and the next page's token."""
        after, limit = decode_name_token(page_token), page_limit(page_size)
        following = [self._models[name] for name in self.names() if name > after][: limit + 1]
        next_token = encode_name_token(following[limit - 1].name) if len(following) > limit else ""
        return following[:limit], next_token

    async def refresh(self) -> None:
        """Read the source again now (subject to the rate limit). A source that cannot be read
        leaves the index as it was, and is logged."""
        await self._refresh_after(time.monotonic())

    async def _refresh_after(self, asked_at: float) -> None:
        while True:
            task = self._refreshing
            if task is None:
                task = asyncio.create_task(self._read(), name="model catalog read")
                self._refreshing = task
            joinable = self._read_started is None or self._read_started >= asked_at
            await asyncio.shield(task)
            if joinable:
                return

    async def _read(self) -> None:
        try:
            wait = self._last_read_started + self._refresh_interval_seconds - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._read_started = self._last_read_started = time.monotonic()
            try:
                models = await self._source.read_models()
            except Exception as error:
                logger.warning(
                    "cannot read the models of %r; keeping the last index: %s", self._source, error
                )
                return
            # One assignment: readers see the old index or the new one, never a half-built one.
            self._models = models
        finally:
            self._read_started = None
            self._refreshing = None


def size_range(native_size: int) -> tuple[int, int]:
    """The accepted image sides for a model trained at `native_size`: half to double native.

    Below half, the UNet's receptive field sees too little to compose an image; above double, it
    repeats subjects. The minimum is rounded up to the 8-pixel latent grid.
    """
    half = max(_SIZE_MULTIPLE, native_size // 2)
    min_size = -(-half // _SIZE_MULTIPLE) * _SIZE_MULTIPLE
    return min_size, native_size * 2


def read_model(model_dir: Path, name: str | None = None) -> ModelInfo | None:
    """What the mesh needs to know about the diffusers model in `model_dir` (called `name`, by
    default the directory's name), from its configs alone; None when it is not a readable
    diffusers text-to-image model (logged)."""
    try:
        index = _read_json_object(model_dir / "model_index.json")
        unet = _read_json_object(model_dir / "unet" / "config.json")
        vae = _read_json_object(model_dir / "vae" / "config.json")
        class_name = _require(index, "_class_name", str)
        sample_size = _require(unet, "sample_size", int)
        # What the UNet predicts is the latent; an inpainting UNet also takes the mask and the
        # masked image's latents as input channels.
        latent_channels = _require(unet, "out_channels", int)
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
        name=name or model_dir.name,
        family=ModelFamily.SDXL if "XL" in class_name else ModelFamily.SD15,
        path=model_dir,
        native_size=native_size,
        min_size=min_size,
        max_size=max_size,
        latent_channels=latent_channels,
        inpainting_variant=_read_inpainting_variant(model_dir),
    )


def write_model_settings(model_dir: Path, *, inpainting_variant: str) -> None:
    """Write `model_dir`'s MODEL_SETTINGS_FILE, naming its inpainting variant."""
    if not MODEL_NAME.fullmatch(inpainting_variant):
        raise ValueError(f"{inpainting_variant!r} is not a model name")
    settings = {"inpainting_variant": inpainting_variant}
    (model_dir / MODEL_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _read_inpainting_variant(model_dir: Path) -> str:
    """The inpainting variant MODEL_SETTINGS_FILE names, or "" when there is none. A malformed
    file is logged and ignored: the model itself still serves."""
    path = model_dir / MODEL_SETTINGS_FILE
    if not path.is_file():
        return ""
    try:
        variant = _read_json_object(path).get("inpainting_variant", "")
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return ""
    if not isinstance(variant, str) or (variant and not MODEL_NAME.fullmatch(variant)):
        logger.warning("ignoring %s: inpainting_variant %r is not a model name", path, variant)
        return ""
    return variant


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
