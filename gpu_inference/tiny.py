"""Small random-weight pipelines with the real Stable Diffusion 1.5 architecture.

Tests and the embedded `pingvas up` need a model that loads and runs through exactly the code path a
real checkpoint uses (`AutoPipelineForText2Image.from_pretrained` on a diffusers directory), but in
well under a second on a CPU and without touching a model hub. The architecture is SD1.5's (CLIP text
encoder, cross-attention UNet, four-block KL VAE with scale factor 8, SD1.5's beta schedule); only
the widths are shrunk and the weights are random, so images are noise but every shape is real.

`tiny-sd` also has an inpainting variant, `tiny-sd-inpainting`: its text encoder and VAE, and a UNet
that takes SD1.5 inpainting's 9 input channels (latents, mask, masked image's latents).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from services.generation.catalog import write_model_settings

logger = logging.getLogger(__name__)

TINY_MODEL_SEEDS: dict[str, int] = {"tiny-sd": 0, "tiny-sd-b": 1}
"""The tiny models `create_tiny_models` builds; two distinct ones so model affinity can be tested."""

TINY_INPAINTING_VARIANTS: dict[str, str] = {"tiny-sd": "tiny-sd-inpainting"}
"""The inpainting variants `create_tiny_models` builds beside their models, by model."""

_LATENT_CHANNELS = 4
# SD inpainting's UNet input: the noisy latents, the mask (one channel) and the masked image's latents.
_INPAINTING_UNET_CHANNELS = 2 * _LATENT_CHANNELS + 1

_START_TOKEN = "<|startoftext|>"
_END_TOKEN = "<|endoftext|>"
_MAX_PROMPT_TOKENS = 77  # CLIP's context length; the SD pipeline pads and truncates to it.
_TEXT_HIDDEN_SIZE = 32


def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters.

    Byte-level BPE needs every byte to be a visible vocabulary symbol; printable ASCII and Latin-1
    bytes stand for themselves and the rest are shifted past U+0100.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def _write_clip_vocabulary(tokenizer_dir: Path) -> None:
    """Write a byte-level CLIP `vocab.json` and an empty `merges.txt`.

    The layout follows CLIP's: the 256 byte symbols, the same symbols with the end-of-word marker
    `</w>`, then the two special tokens. Without merges every word tokenizes to its bytes, which is
    enough for random weights and needs no download.
    """
    symbols = list(byte_to_unicode().values())
    tokens = [*symbols, *(f"{symbol}</w>" for symbol in symbols), _START_TOKEN, _END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _build_tokenizer(tokenizer_dir: Path) -> CLIPTokenizer:
    _write_clip_vocabulary(tokenizer_dir)
    # Load through the same file-based path a downloaded CLIP tokenizer takes.
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
        tokenizer_dir, model_max_length=_MAX_PROMPT_TOKENS
    )
    return tokenizer


def _build_text_encoder(tokenizer: CLIPTokenizer, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN_SIZE,
        intermediate_size=4 * _TEXT_HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_PROMPT_TOKENS,
        projection_dim=_TEXT_HIDDEN_SIZE,
        hidden_act="quick_gelu",  # SD1.5's text encoder (CLIP ViT-L/14) uses quick_gelu.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _build_unet(seed: int, *, in_channels: int = _LATENT_CHANNELS) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    # SD1.5's block layout (cross-attention at high resolution, a plain block at the bottom),
    # with two levels instead of four.
    unet: UNet2DConditionModel = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        in_channels=in_channels,
        out_channels=_LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=_TEXT_HIDDEN_SIZE,
        norm_num_groups=32,
    )
    return unet


def _build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    # Four blocks, so three downsamplings and SD's VAE scale factor of 8.
    vae: AutoencoderKL = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=64,
    )
    return vae


def _build_scheduler() -> EulerDiscreteScheduler:
    # SD1.5's training noise schedule. Euler runs exactly `steps` denoising steps (PNDM adds one),
    # which keeps step counting simple for the tests.
    scheduler: EulerDiscreteScheduler = EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return scheduler


def create_tiny_sd(target_dir: Path, *, seed: int = 0, inpainting: bool = False) -> Path:
    """Build a tiny random-weight SD1.5-architecture pipeline and save it in diffusers format;
    with `inpainting`, the inpainting pipeline (the same text encoder and VAE for a seed, and a
    9-channel UNet).

    Deterministic for a given seed. Idempotent: an existing `model_index.json` means the model is
    already there and nothing is rebuilt.
    """
    if (target_dir / "model_index.json").is_file():
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(target_dir / "tokenizer")
    pipeline_class: Any = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    unet_channels = _INPAINTING_UNET_CHANNELS if inpainting else _LATENT_CHANNELS
    # Typed as Any: diffusers' lazy imports hide the pipeline's base class from type checkers.
    pipeline: Any = pipeline_class(
        vae=_build_vae(seed),
        text_encoder=_build_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        unet=_build_unet(seed, in_channels=unet_channels),
        scheduler=_build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(target_dir, safe_serialization=True)
    logger.info("created tiny %smodel at %s (seed %d)", "inpainting " if inpainting else "", target_dir, seed)
    return target_dir


def create_tiny_models(models_dir: Path) -> list[Path]:
    """Create `tiny-sd`, `tiny-sd-b` and `tiny-sd-inpainting` under `models_dir`, each model
    naming its variant in its settings file; returns their directories."""
    paths = []
    for name, seed in TINY_MODEL_SEEDS.items():
        paths.append(create_tiny_sd(models_dir / name, seed=seed))
        variant = TINY_INPAINTING_VARIANTS.get(name)
        if variant is not None:
            paths.append(create_tiny_sd(models_dir / variant, seed=seed, inpainting=True))
            write_model_settings(models_dir / name, inpainting_variant=variant)
    return paths


def main(argv: list[str]) -> int:
    """`python -m gpu_inference.tiny MODELS_DIR`: what `pingvas models create-tiny` runs, as its
    own process, so that the CLI never imports torch."""
    if len(argv) != 1:
        print("usage: python -m gpu_inference.tiny MODELS_DIR", file=sys.stderr)
        return 2
    for path in create_tiny_models(Path(argv[0])):
        print(f"tiny model ready: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
