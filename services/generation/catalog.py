"""The models the GPU workers can serve, and what the mesh knows about each without loading it.

Generation-domain knowledge, shared by both sides: the generation service validates a request's
model name and image size with it, and the workers find the models they load with it. Deliberately
free of torch and diffusers, so the generation service stays a light process.

Where the models come from is a `ModelSource`: the models bucket's manifests in every running
process (`services/generation/model_store.py`), or a local folder of model directories
(`ModelFolder`) for tests and tools that use a cache directory directly.

A model directory is one of three things, told apart by what it holds:

- a diffusers pipeline: `model_index.json` and one folder per part;
- a single-file checkpoint: one `*.safetensors` file in the original (LDM/BFL) key layout, and
  optionally `config/`, the diffusers configs and tokenizers of its architecture without weights,
  which `from_single_file` then builds the pipeline from offline;
- a LoRA: `pytorch_lora_weights.safetensors` (diffusers' name for a LoRA's weights).

A checkpoint's or LoRA's family is read from its safetensors header alone (tensor names and the
metadata), never by loading weights.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import struct
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
    # An inpainting pipeline itself (its UNet takes the mask and the masked image's latents as
    # input channels besides the latents): it can only inpaint.
    inpainting_only: bool = False

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
    """Models under one local folder, each a directory `folder/<name>/` (see the module's doc).

    A directory that is not a readable model is skipped (and logged), never an error: the folder
    is shared with operators copying models in by hand.
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

    def names(self, kind: ModelKind = ModelKind.PIPELINE) -> list[str]:
        """The names of the models of `kind` found at the last read, sorted. Pipelines by
        default: a LoRA is not a model a generation can name as its `model`."""
        return sorted(name for name, info in self._models.items() if info.kind == kind)

    def page(self, *, page_size: int, page_token: str) -> tuple[list[ModelInfo], str]:
        """One page of the pipelines found at the last read (LoRAs are not listed as models), by
        name, and the next page's token."""
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


# Where a single-file checkpoint's directory keeps its diffusers configs, and a LoRA's file name.
SINGLE_FILE_CONFIG_DIR = "config"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"

# What a single-file checkpoint without configs is assumed to be: its family's stock model.
_STOCK_NATIVE_SIZE = {ModelFamily.SD15: 512, ModelFamily.SDXL: 1024, ModelFamily.FLUX: 1024}
_STOCK_LATENT_CHANNELS = {ModelFamily.SD15: 4, ModelFamily.SDXL: 4, ModelFamily.FLUX: 16}


def read_model(
    model_dir: Path,
    name: str | None = None,
    *,
    family: ModelFamily | None = None,
) -> ModelInfo | None:
    """What the mesh needs to know about the model in `model_dir` (called `name`, by default the
    directory's name), from its configs and safetensors headers alone; None when it is not a
    readable model (logged). `family` declares a single-file checkpoint's or a LoRA's
    architecture where its tensor names do not tell it."""
    name = name or model_dir.name
    if (model_dir / "model_index.json").is_file():
        return _read_diffusers(model_dir, name)
    if (model_dir / LORA_WEIGHTS_NAME).is_file():
        return read_lora(model_dir / LORA_WEIGHTS_NAME, name, path=model_dir, family=family)
    checkpoints = single_file_checkpoints(model_dir)
    if len(checkpoints) == 1:
        return read_single_file(checkpoints[0], name, path=model_dir, family=family)
    logger.info(
        "skipping %s: not a diffusers directory, a LoRA or a directory of one .safetensors checkpoint",
        model_dir,
    )
    return None


def single_file_checkpoints(model_dir: Path) -> list[Path]:
    """The `*.safetensors` files at the top of `model_dir` (a single-file model holds one)."""
    try:
        return sorted(
            path for path in model_dir.iterdir() if path.suffix == ".safetensors" and path.is_file()
        )
    except OSError:
        return []


def _read_diffusers(model_dir: Path, name: str) -> ModelInfo | None:
    try:
        sizes = _diffusers_sizes(model_dir)
    except (OSError, ValueError) as error:
        # ValueError covers malformed JSON (json.JSONDecodeError) and missing or mistyped keys.
        logger.info("skipping %s: not a diffusers text-to-image model (%s)", model_dir, error)
        return None
    if sizes is None:
        logger.info("skipping %s: implausible unet/vae config", model_dir)
        return None
    family, native_size, latent_channels = sizes
    info = _pipeline_info(name, model_dir, family, native_size, latent_channels, ModelFormat.DIFFUSERS)
    return dataclasses.replace(info, inpainting_only=_unet_takes_mask(model_dir))


def _unet_takes_mask(model_dir: Path) -> bool:
    """Whether the UNet takes more input channels than it predicts: SD inpainting's 9 (latents,
    mask, masked image's latents) against 4. Flux has no UNet; a missing config says no."""
    try:
        unet = _read_json_object(model_dir / "unet" / "config.json")
    except (OSError, ValueError):
        return False
    return _require(unet, "in_channels", int) > _require(unet, "out_channels", int)


def _diffusers_sizes(model_dir: Path) -> tuple[ModelFamily, int, int] | None:
    """A diffusers directory's family, native size and latent channels, from its configs.

    SD's native size is the UNet's latent sample size times the VAE's downscaling (each VAE
    block after the first halves the resolution). Flux's transformer has no sample size and
    packs its latents, so its VAE's own sample size and latent channels say them.
    """
    index = _read_json_object(model_dir / "model_index.json")
    class_name = _require(index, "_class_name", str)
    vae = _read_json_object(model_dir / "vae" / "config.json")
    vae_blocks = _require(vae, "block_out_channels", list)
    if "Flux" in class_name:
        family = ModelFamily.FLUX
        native_size = _require(vae, "sample_size", int)
        latent_channels = _require(vae, "latent_channels", int)
    else:
        family = ModelFamily.SDXL if "XL" in class_name else ModelFamily.SD15
        unet = _read_json_object(model_dir / "unet" / "config.json")
        native_size = _require(unet, "sample_size", int) * 2 ** (len(vae_blocks) - 1)
        # What the UNet predicts is the latent; an inpainting UNet also takes the mask and the
        # masked image's latents as input channels.
        latent_channels = _require(unet, "out_channels", int)
    if native_size <= 0 or latent_channels <= 0 or not vae_blocks:
        return None
    return family, native_size, latent_channels


def _pipeline_info(
    name: str, path: Path, family: ModelFamily, native_size: int, latent_channels: int, weights: ModelFormat
) -> ModelInfo:
    min_size, max_size = size_range(native_size)
    return ModelInfo(
        name=name,
        family=family,
        path=path,
        native_size=native_size,
        min_size=min_size,
        max_size=max_size,
        latent_channels=latent_channels,
        format=weights,
        inpainting_variant=_read_inpainting_variant(path),
    )


def read_single_file(
    checkpoint: Path, name: str, *, path: Path, family: ModelFamily | None = None
) -> ModelInfo | None:
    """The single-file checkpoint `checkpoint`, to be found at `path` (its directory) once in
    place. Its family is `family` when declared, else the one its tensor names show; its sizes
    come from its `config/` when it has one, else its family's stock model's."""
    try:
        header = read_safetensors_header(checkpoint)
    except (OSError, ValueError) as error:
        logger.info("skipping %s: not a readable safetensors file (%s)", checkpoint, error)
        return None
    detected = checkpoint_family(header)
    family = family or detected
    if family is None:
        logger.info("skipping %s: no known architecture's tensors in it; declare its family", checkpoint)
        return None
    native_size, latent_channels = _STOCK_NATIVE_SIZE[family], _STOCK_LATENT_CHANNELS[family]
    config_dir = checkpoint.parent / SINGLE_FILE_CONFIG_DIR
    if (config_dir / "model_index.json").is_file():
        try:
            sizes = _diffusers_sizes(config_dir)
        except (OSError, ValueError) as error:
            logger.info("skipping %s: its configs are unreadable (%s)", checkpoint, error)
            return None
        if sizes is None or sizes[0] != family:
            logger.info("skipping %s: its configs are not of a %s model", checkpoint, family)
            return None
        _, native_size, latent_channels = sizes
    return _pipeline_info(name, path, family, native_size, latent_channels, ModelFormat.SINGLE_FILE)


def read_lora(weights: Path, name: str, *, path: Path, family: ModelFamily | None = None) -> ModelInfo | None:
    """The LoRA in `weights`, to be found at `path` (its directory) once in place. Its family is
    `family` when declared, else what its metadata or tensor names show."""
    try:
        header = read_safetensors_header(weights)
    except (OSError, ValueError) as error:
        logger.info("skipping %s: not a readable safetensors file (%s)", weights, error)
        return None
    family = family or lora_family(header)
    if family is None:
        logger.info("skipping %s: its base architecture is not recognisable; declare its family", weights)
        return None
    return ModelInfo(
        name=name,
        family=family,
        path=path,
        native_size=0,
        min_size=0,
        max_size=0,
        latent_channels=0,
        kind=ModelKind.LORA,
    )


_MAX_SAFETENSORS_HEADER = 100 * 2**20  # The format's own limit.


@dataclass(frozen=True)
class SafetensorsHeader:
    """A safetensors file's table of contents: each tensor's dtype and shape, and the metadata."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read only the header: an 8-byte little-endian length, then that much JSON. ValueError
    when it is not a safetensors file."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError("too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_SAFETENSORS_HEADER:
            raise ValueError("header too large")
        data = json.loads(file.read(length))
    if not isinstance(data, dict):
        raise ValueError("header is not a JSON object")
    metadata = data.pop("__metadata__", None) or {}
    try:
        tensors = {
            key: (str(entry["dtype"]), tuple(int(d) for d in entry["shape"])) for key, entry in data.items()
        }
    except (KeyError, TypeError) as error:
        raise ValueError(f"malformed tensor entry: {error!r}") from None
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in dict(metadata).items()})


def checkpoint_family(header: SafetensorsHeader) -> ModelFamily | None:
    """A single-file checkpoint's architecture from its tensor names: SD1.5 keeps its CLIP text
    encoder under `cond_stage_model.`, SDXL its two under `conditioner.embedders.`, Flux (BFL's
    layout, with or without ComfyUI's `model.diffusion_model.` prefix) has `double_blocks`."""
    keys = header.tensors
    if any(key.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for key in keys):
        return ModelFamily.FLUX
    if any(key.startswith("conditioner.embedders.") for key in keys):
        return ModelFamily.SDXL
    if any(key.startswith("cond_stage_model.") for key in keys) and any(
        key.startswith("model.diffusion_model.input_blocks.") for key in keys
    ):
        return ModelFamily.SD15
    return None


# kohya's sd-scripts metadata key naming a LoRA's base model, which most published LoRAs carry.
LORA_BASE_MODEL_KEY = "ss_base_model_version"


def lora_family(header: SafetensorsHeader) -> ModelFamily | None:
    """A LoRA's base architecture: from kohya's `ss_base_model_version` metadata when present,
    else from its tensor names (a diffusers Flux LoRA targets `transformer.`, kohya's Flux ones
    `lora_unet_double_blocks_`; SDXL's adapt a second text encoder or a 2048-wide
    cross-attention, SD1.5's a 768-wide one)."""
    base = header.metadata.get(LORA_BASE_MODEL_KEY, "").lower()
    if base:
        if base.startswith("flux"):
            return ModelFamily.FLUX
        if base.startswith("sdxl"):
            return ModelFamily.SDXL
        if base.startswith(("sd_v1", "sd1")):
            return ModelFamily.SD15
    keys = header.tensors
    if any(key.startswith(("transformer.", "lora_unet_double_blocks_", "lora_transformer_")) for key in keys):
        return ModelFamily.FLUX
    if any(key.startswith(("text_encoder_2.", "lora_te2_")) for key in keys):
        return ModelFamily.SDXL
    for key, (_, shape) in keys.items():
        # Down-projections of the cross-attention's key: their input width is the text width.
        if ("attn2.to_k.lora_A" in key or "attn2_to_k.lora_down" in key) and len(shape) == 2:
            return {768: ModelFamily.SD15, 2048: ModelFamily.SDXL}.get(shape[1])
    return None


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
