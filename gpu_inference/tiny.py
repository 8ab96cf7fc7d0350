"""Small random-weight models with the real architectures: SD1.5, SDXL, Flux, an SD1.5 single-file
checkpoint and LoRAs.

Tests and the embedded `pingvas up` need models that load and run through exactly the code path a
real checkpoint uses (`from_pretrained` on a diffusers directory, `from_single_file` on an original
checkpoint, `load_lora_weights` on a diffusers LoRA), but in well under a second on a CPU and without
touching a model hub. Each architecture is the real one (SD1.5: CLIP text encoder, cross-attention
UNet, four-block KL VAE with scale factor 8, SD1.5's beta schedule; SDXL: two CLIP text encoders and
the UNet's size/crop conditioning; Flux: CLIP and T5 text encoders, an MMDiT transformer over packed
16-channel latents, a flow-matching scheduler); only the widths are shrunk and the weights are random,
so images are noise but every shape is real.

`tiny-sd` also has an inpainting variant, `tiny-sd-inpainting`: its text encoder and VAE, and a UNet
that takes SD1.5 inpainting's 9 input channels (latents, mask, masked image's latents).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

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


def _build_vae(
    seed: int,
    *,
    latent_channels: int = _LATENT_CHANNELS,
    scaling_factor: float = 0.18215,
    **architecture: Any,
) -> AutoencoderKL:
    torch.manual_seed(seed)
    # Four blocks, so three downsamplings and SD's VAE scale factor of 8.
    vae: AutoencoderKL = AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        **architecture,
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


def _build_sdxl_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    # SDXL's layout (a plain block at high resolution, cross-attention below it, linear
    # projections, the "text_time" conditioning on the pooled text embedding and the six size and
    # crop numbers), with two levels.
    unet: UNet2DConditionModel = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * _TEXT_HIDDEN_SIZE,  # Both text encoders' states, concatenated.
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # Six time ids of `addition_time_embed_dim` each, plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * 8 + _TEXT_HIDDEN_SIZE,
        norm_num_groups=32,
    )
    return unet


def create_tiny_sdxl(target_dir: Path, *, seed: int = 2) -> Path:
    """Build a tiny random-weight SDXL-architecture pipeline in diffusers format (idempotent)."""
    if (target_dir / "model_index.json").is_file():
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(target_dir / "tokenizer")
    tokenizer_2 = _build_tokenizer(target_dir / "tokenizer_2")
    text_encoder_2_config = _build_text_encoder(tokenizer_2, seed + 1).config
    torch.manual_seed(seed + 1)
    pipeline: Any = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=_build_vae(seed, scaling_factor=0.13025),  # SDXL's retrained VAE's latent scale.
        text_encoder=_build_text_encoder(tokenizer, seed),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_2_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_build_sdxl_unet(seed),
        scheduler=_build_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(target_dir, safe_serialization=True)
    logger.info("created tiny SDXL model at %s (seed %d)", target_dir, seed)
    return target_dir


_T5_PAD, _T5_EOS, _T5_UNK = "<pad>", "</s>", "<unk>"
_T5_WORD_START = "\u2581"  # SentencePiece's word-boundary marker.
_FLUX_LATENT_CHANNELS = 16  # FLUX.1's VAE latent channels (SD's have 4).
_FLUX_T5_TOKENS = 64  # The tiny Flux's T5 sequence length (FLUX.1-dev uses 512).


def _build_t5_tokenizer(tokenizer_dir: Path) -> T5Tokenizer:
    """A unigram T5 tokenizer over single characters, saved and reloaded from files like a
    downloaded one. Flux encodes the prompt with T5 as well as CLIP."""
    characters = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    pieces = [*characters, *(_T5_WORD_START + character for character in characters), _T5_WORD_START]
    vocab = [(_T5_PAD, 0.0), (_T5_EOS, 0.0), (_T5_UNK, 0.0), *((piece, -1.0) for piece in pieces)]
    built = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=_FLUX_T5_TOKENS)
    built.save_pretrained(tokenizer_dir)
    tokenizer: T5Tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir)
    return tokenizer


def create_tiny_flux(target_dir: Path, *, seed: int = 3) -> Path:
    """Build a tiny random-weight FLUX.1-dev-architecture pipeline in diffusers format (idempotent).

    Like FLUX.1-dev it embeds the distilled guidance scale (`guidance_embeds`), so the pipeline's
    `guidance_scale` conditions the transformer instead of running classifier-free guidance.
    """
    if (target_dir / "model_index.json").is_file():
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(target_dir / "tokenizer")
    tokenizer_2 = _build_t5_tokenizer(target_dir / "tokenizer_2")
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=_TEXT_HIDDEN_SIZE,
            d_kv=8,
            d_ff=2 * _TEXT_HIDDEN_SIZE,
            num_layers=2,
            num_heads=4,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
        )
    )
    torch.manual_seed(seed)
    transformer: Any = FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=4 * _FLUX_LATENT_CHANNELS,  # 2x2 patches of latent pixels, packed.
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN_SIZE,  # T5's hidden size.
        pooled_projection_dim=_TEXT_HIDDEN_SIZE,  # CLIP's pooled output.
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # Sums to the head dimension.
    )
    vae = _build_vae(
        seed,
        latent_channels=_FLUX_LATENT_CHANNELS,
        # FLUX.1's VAE: no quantisation convolutions, and its latents' shift and scale.
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    # FLUX.1-dev's scheduler: flow matching, its shift growing with the image's token count.
    scheduler: Any = FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipeline: Any = FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=scheduler,
        vae=vae,
        text_encoder=_build_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(target_dir, safe_serialization=True)
    logger.info("created tiny Flux model at %s (seed %d)", target_dir, seed)
    return target_dir


def create_tiny_single_file(target_dir: Path, source_dir: Path) -> Path:
    """Save the SD1.5 diffusers model in `source_dir` as an original single-file checkpoint.

    The checkpoint, `{target_dir.name}.safetensors`, has the original Stable Diffusion key layout
    (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`) that
    `from_single_file` reads. Beside it, `config/` holds the diffusers configs and tokenizer
    without weights: `from_single_file(config=...)` builds the pipeline from them offline (without
    it diffusers would fetch SD1.5's configs from the hub, which do not fit a tiny model). Idempotent.
    """
    checkpoint = target_dir / f"{target_dir.name}.safetensors"
    if checkpoint.is_file():
        return target_dir
    config_dir = target_dir / "config"
    shutil.copytree(
        source_dir,
        config_dir,
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", ".*"),
        dirs_exist_ok=True,
    )
    unet_config = json.loads((source_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((source_dir / "vae" / "config.json").read_text())
    weights = {
        **_unet_to_original(
            load_file(source_dir / "unet" / "diffusion_pytorch_model.safetensors"), unet_config
        ),
        **_vae_to_original(load_file(source_dir / "vae" / "diffusion_pytorch_model.safetensors"), vae_config),
        # The original keeps transformers' older CLIP layout, under a `text_model.` wrapper.
        **{
            "cond_stage_model.transformer.text_model." + key: tensor
            for key, tensor in load_file(source_dir / "text_encoder" / "model.safetensors").items()
        },
    }
    partial = checkpoint.with_suffix(".partial")
    save_file({key: tensor.contiguous() for key, tensor in weights.items()}, partial)
    partial.rename(checkpoint)
    logger.info("created tiny single-file checkpoint %s from %s", checkpoint, source_dir)
    return target_dir


def _unet_to_original(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers SD UNet's weights to the original (LDM) layout, for any number of
    levels and layers per block (the converter diffusers ships hard-codes SD1.5's four levels)."""
    levels = len(config["block_out_channels"])
    layers: int = config["layers_per_block"]
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    block = 1
    for level in range(levels):
        for layer in range(layers):
            prefixes[f"down_blocks.{level}.resnets.{layer}."] = f"input_blocks.{block}.0."
            prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{block}.1."
            block += 1
        if level < levels - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{block}.0.op."
            block += 1
    block = 0
    for level in range(levels):
        has_attention = "CrossAttn" in config["up_block_types"][level]
        for layer in range(layers + 1):
            prefixes[f"up_blocks.{level}.resnets.{layer}."] = f"output_blocks.{block}.0."
            prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{block}.1."
            if layer == layers and level < levels - 1:
                upsampler = 2 if has_attention else 1
                prefixes[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{block}.{upsampler}."
            block += 1
    resnet_parts = {
        "norm1.": "in_layers.0.",
        "conv1.": "in_layers.2.",
        "norm2.": "out_layers.0.",
        "conv2.": "out_layers.3.",
        "time_emb_proj.": "emb_layers.1.",
        "conv_shortcut.": "skip_connection.",
    }
    converted = {}
    for key, tensor in weights.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            for part, original in resnet_parts.items():
                if rest.startswith(part):
                    rest = original + rest[len(part) :]
                    break
        converted["model.diffusion_model." + prefixes[prefix] + rest] = tensor
    return converted


def _vae_to_original(weights: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers KL VAE's weights to the original (LDM) layout; its attention's linear
    projections become the original's 1x1 convolutions."""
    levels = len(config["block_out_channels"])
    prefixes = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for coder in ("encoder", "decoder"):
        prefixes[f"{coder}.mid_block.attentions.0."] = f"{coder}.mid.attn_1."
        for index in range(2):
            prefixes[f"{coder}.mid_block.resnets.{index}."] = f"{coder}.mid.block_{index + 1}."
    for level in range(levels):
        for layer in range(config["layers_per_block"]):
            prefixes[f"encoder.down_blocks.{level}.resnets.{layer}."] = f"encoder.down.{level}.block.{layer}."
        for layer in range(config["layers_per_block"] + 1):
            # The original numbers the decoder's levels from the bottom up.
            original = f"decoder.up.{levels - 1 - level}.block.{layer}."
            prefixes[f"decoder.up_blocks.{level}.resnets.{layer}."] = original
        if level < levels - 1:
            prefixes[f"encoder.down_blocks.{level}.downsamplers.0."] = f"encoder.down.{level}.downsample."
            prefixes[f"decoder.up_blocks.{level}.upsamplers.0."] = (
                f"decoder.up.{levels - 1 - level}.upsample."
            )
    attention_parts = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    converted = {}
    for key, tensor in weights.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len, default="")
        rest = key[len(prefix) :].replace("conv_shortcut.", "nin_shortcut.")
        original = prefixes.get(prefix, "")
        if original.endswith("attn_1."):
            for part, renamed in attention_parts.items():
                if rest.startswith(part):
                    rest = renamed + rest[len(part) :]
                    if renamed != "norm." and rest.endswith("weight"):
                        tensor = tensor.reshape(*tensor.shape, 1, 1)
                    break
        converted["first_stage_model." + original + rest] = tensor
    return converted


# kohya's sd-scripts metadata key naming a LoRA's base model; most published LoRAs carry it.
LORA_BASE_MODEL_KEY = "ss_base_model_version"
_LORA_BASE_MODELS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name.


def create_tiny_lora(target_dir: Path, base_dir: Path, *, family: str, seed: int) -> Path:
    """Build a random rank-4 LoRA for the model in `base_dir` and save it as diffusers saves a
    trained one: `pytorch_lora_weights.safetensors` of PEFT `lora_A`/`lora_B` weights under the
    denoiser's prefix (`unet.` or `transformer.`), with the base model named in the metadata.

    Both matrices are random (a freshly trained LoRA starts with B = 0, which would change
    nothing), so applying it visibly changes the image. Idempotent.
    """
    target = target_dir / LORA_WEIGHTS_NAME
    if target.is_file():
        return target_dir
    component = "transformer" if family == "flux" else "unet"
    model_class: Any = FluxTransformer2DModel if family == "flux" else UNet2DConditionModel
    denoiser = model_class.from_pretrained(base_dir / component)
    torch.manual_seed(seed)
    denoiser.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    weights = {
        f"{component}.{key}": tensor.contiguous()
        for key, tensor in get_peft_model_state_dict(denoiser).items()
    }
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(weights, partial, metadata={"format": "pt", LORA_BASE_MODEL_KEY: _LORA_BASE_MODELS[family]})
    partial.rename(target)
    logger.info("created tiny %s LoRA at %s", family, target_dir)
    return target_dir


def create_tiny_models(models_dir: Path) -> list[Path]:
    """Create every tiny model under `models_dir`; returns their directories.

    `tiny-sd` and `tiny-sd-b` (SD1.5, distinct, so model affinity can be tested), `tiny-sd`'s
    inpainting variant `tiny-sd-inpainting` (named in tiny-sd's settings file), `tiny-sdxl`,
    `tiny-flux`, `tiny-sd-single` (tiny-sd as a single-file checkpoint) and the LoRAs
    `tiny-sd-lora`, `tiny-sdxl-lora` and `tiny-flux-lora`.
    """
    built = []
    for name, seed in TINY_MODEL_SEEDS.items():
        built.append(create_tiny_sd(models_dir / name, seed=seed))
        variant = TINY_INPAINTING_VARIANTS.get(name)
        if variant is not None:
            built.append(create_tiny_sd(models_dir / variant, seed=seed, inpainting=True))
            write_model_settings(models_dir / name, inpainting_variant=variant)
    sdxl = create_tiny_sdxl(models_dir / "tiny-sdxl")
    flux = create_tiny_flux(models_dir / "tiny-flux")
    built += [
        sdxl,
        flux,
        create_tiny_single_file(models_dir / "tiny-sd-single", models_dir / "tiny-sd"),
        create_tiny_lora(models_dir / "tiny-sd-lora", models_dir / "tiny-sd", family="sd15", seed=10),
        create_tiny_lora(models_dir / "tiny-sdxl-lora", sdxl, family="sdxl", seed=11),
        create_tiny_lora(models_dir / "tiny-flux-lora", flux, family="flux", seed=12),
    ]
    return built


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
