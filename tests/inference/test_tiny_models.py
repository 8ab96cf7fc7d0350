from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from gpu_inference.registry import LoadedModel
from gpu_inference.tiny import create_tiny_sd


def test_tokenizer_is_written_locally_as_byte_level_clip_files(models_dir: Path) -> None:
    tokenizer_dir = models_dir / "tiny-sd" / "tokenizer"
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))

    assert (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").startswith("#version:")
    assert len(vocab) == 2 * 256 + 2
    assert {"a", "a</w>", "<|startoftext|>", "<|endoftext|>"} <= vocab.keys()
    assert sum(token.endswith("</w>") for token in vocab) == 256


def test_loaded_pipeline_has_sd15_shapes(tiny_model: LoadedModel) -> None:
    pipeline = tiny_model.pipeline

    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.vae_scale_factor == 8
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    tokens = pipeline.tokenizer("a photo", padding="max_length", max_length=77).input_ids
    assert len(tokens) == 77
    assert tokens[0] == pipeline.tokenizer.bos_token_id
    assert pipeline.tokenizer.decode(tokens, skip_special_tokens=True) == "a photo"


def test_same_seed_builds_identical_weights_and_rebuilding_is_a_no_op(
    tmp_path: Path, models_dir: Path
) -> None:
    rebuilt = create_tiny_sd(tmp_path / "again", seed=0)
    index_mtime = (rebuilt / "model_index.json").stat().st_mtime_ns

    assert _unet_weights(rebuilt) == _unet_weights(models_dir / "tiny-sd")
    assert _unet_weights(rebuilt) != _unet_weights(models_dir / "tiny-sd-b")
    assert create_tiny_sd(rebuilt, seed=0) == rebuilt
    assert (rebuilt / "model_index.json").stat().st_mtime_ns == index_mtime


def test_the_inpainting_variant_shares_text_encoder_and_vae_and_takes_nine_unet_channels(
    models_dir: Path,
) -> None:
    variant = models_dir / "tiny-sd-inpainting"
    index = json.loads((variant / "model_index.json").read_text())
    unet = json.loads((variant / "unet" / "config.json").read_text())

    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert (unet["in_channels"], unet["out_channels"]) == (9, 4)
    for part in ("text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (variant / part).read_bytes() == (models_dir / "tiny-sd" / part).read_bytes()


def _unet_weights(model_dir: Path) -> dict[str, bytes]:
    path = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), framework="pt") as weights:
        return {key: weights.get_tensor(key).numpy().tobytes() for key in weights.keys()}  # noqa: SIM118


def test_the_single_file_checkpoint_has_the_original_key_layout_of_every_tiny_sd_weight(
    models_dir: Path,
) -> None:
    with safe_open(str(models_dir / "tiny-sd-single" / "tiny-sd-single.safetensors"), framework="pt") as file:
        keys = list(file.keys())
    source_counts = {}
    for component, weights in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        with safe_open(
            str(models_dir / "tiny-sd" / component / f"{weights}.safetensors"), framework="pt"
        ) as file:
            source_counts[component] = len(list(file.keys()))

    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert [sum(key.startswith(prefix) for key in keys) for prefix in prefixes] == list(
        source_counts.values()
    )
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # The original's conv_in.
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert (models_dir / "tiny-sd-single" / "config" / "unet" / "config.json").is_file()
    assert not list((models_dir / "tiny-sd-single" / "config").rglob("*.safetensors"))


def test_flux_text_encoders_have_local_clip_and_t5_tokenizers(models_dir: Path) -> None:
    from transformers import AutoTokenizer

    t5 = AutoTokenizer.from_pretrained(models_dir / "tiny-flux" / "tokenizer_2")

    tokens = t5("a red fox").input_ids
    assert tokens[-1] == t5.eos_token_id
    assert t5.decode(tokens, skip_special_tokens=True) == "a red fox"
