from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from services.generation.catalog import (
    MODEL_SETTINGS_FILE,
    ModelCatalog,
    ModelFolder,
    ModelInfo,
    ModelKind,
    SafetensorsHeader,
    checkpoint_family,
    lora_family,
    read_model,
    size_range,
)
from services.generation.model_store import ModelManifest, manifest_of_source
from services.generation.samplers import ModelFamily


async def test_reads_family_sizes_and_channels_from_the_diffusers_configs(
    catalog: ModelCatalog, models_dir: Path
) -> None:
    info = await catalog.get("tiny-sd")

    assert info is not None
    assert info.family == "sd15"
    assert info.path == models_dir / "tiny-sd"
    # unet sample_size 8 x VAE scale factor 8 (four VAE blocks).
    assert (info.native_size, info.min_size, info.max_size) == (64, 32, 128)
    assert info.latent_channels == 4
    assert catalog.names() == [
        "tiny-flux",
        "tiny-sd",
        "tiny-sd-b",
        "tiny-sd-inpainting",
        "tiny-sd-single",
        "tiny-sdxl",
    ]


async def test_reads_every_kind_of_model_directory_and_lists_only_pipelines(
    catalog: ModelCatalog, models_dir: Path
) -> None:
    seen = {
        name: (info.family, info.kind, info.format, info.native_size, info.latent_channels)
        for name in (
            "tiny-sdxl",
            "tiny-flux",
            "tiny-sd-single",
            "tiny-sd-lora",
            "tiny-sdxl-lora",
            "tiny-flux-lora",
        )
        if (info := await catalog.get(name)) is not None
    }

    assert seen == {
        "tiny-sdxl": ("sdxl", "pipeline", "diffusers", 64, 4),
        # Flux's size and channels are its VAE's: the transformer packs 2x2 latent patches.
        "tiny-flux": ("flux", "pipeline", "diffusers", 64, 16),
        # The single file's sizes come from the configs beside it, its family from its tensors.
        "tiny-sd-single": ("sd15", "pipeline", "single_file", 64, 4),
        # A LoRA's family from the base model its metadata names.
        "tiny-sd-lora": ("sd15", "lora", "diffusers", 0, 0),
        "tiny-sdxl-lora": ("sdxl", "lora", "diffusers", 0, 0),
        "tiny-flux-lora": ("flux", "lora", "diffusers", 0, 0),
    }
    assert catalog.names(ModelKind.LORA) == ["tiny-flux-lora", "tiny-sd-lora", "tiny-sdxl-lora"]
    page, _ = catalog.page(page_size=100, page_token="")
    assert [info.name for info in page] == catalog.names()


def test_a_checkpoint_of_no_known_architecture_needs_its_family_declared(
    tmp_path: Path, models_dir: Path
) -> None:
    (tmp_path / "mystery").mkdir()
    (tmp_path / "mystery" / "weights.safetensors").write_bytes(_safetensors({"some.weight": [2, 2]}))
    (tmp_path / "not-safetensors").mkdir()
    (tmp_path / "not-safetensors" / "x.safetensors").write_bytes(b"\xff" * 16)

    assert read_model(tmp_path / "mystery") is None
    declared = read_model(tmp_path / "mystery", family=ModelFamily.SDXL)
    assert declared is not None and (declared.family, declared.native_size) == ("sdxl", 1024)
    assert read_model(tmp_path / "not-safetensors", family=ModelFamily.SD15) is None


def _safetensors(tensors: dict[str, list[int]]) -> bytes:
    header = {
        name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for name, shape in tensors.items()
    }
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded


async def test_a_model_names_its_inpainting_variant_in_its_settings_file(catalog: ModelCatalog) -> None:
    base, other, variant = [
        await catalog.get(name) for name in ("tiny-sd", "tiny-sd-b", "tiny-sd-inpainting")
    ]

    assert base is not None and other is not None and variant is not None
    assert base.inpainting_variant == "tiny-sd-inpainting"
    assert other.inpainting_variant == ""
    assert (base.inpainting_only, other.inpainting_only, variant.inpainting_only) == (False, False, True)
    # The variant's UNet takes 9 channels, but its latents are SD's 4.
    assert (variant.family, variant.latent_channels, variant.native_size) == ("sd15", 4, 64)


async def test_a_malformed_settings_file_is_ignored_and_the_model_still_serves(
    tmp_path: Path, models_dir: Path
) -> None:
    for name, settings in (("garbage", "{not json"), ("bad-name", '{"inpainting_variant": "../x"}')):
        shutil.copytree(models_dir / "tiny-sd", tmp_path / name)
        (tmp_path / name / MODEL_SETTINGS_FILE).write_text(settings)

    models = ModelFolder(tmp_path).scan()

    assert {name: info.inpainting_variant for name, info in models.items()} == {"bad-name": "", "garbage": ""}


def test_size_range_matches_real_checkpoints() -> None:
    assert size_range(512) == (256, 1024)  # SD1.5
    assert size_range(1024) == (512, 2048)  # SDXL
    assert size_range(100) == (56, 200)  # half rounded up to the 8-pixel grid
    assert size_range(8) == (8, 16)


async def test_finds_a_model_added_after_start_and_skips_garbage(tmp_path: Path, models_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "model_index.json").write_text("{not json")
    (tmp_path / "no-unet").mkdir()
    (tmp_path / "no-unet" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "stray-file.txt").write_text("hello")
    catalog = ModelCatalog(ModelFolder(tmp_path))
    await catalog.refresh()
    assert catalog.names() == []
    assert await catalog.get("late") is None

    shutil.copytree(models_dir / "tiny-sd", tmp_path / "late")

    info = await catalog.get("late")
    assert info is not None
    assert info.path == tmp_path / "late"
    assert catalog.names() == ["late"]


async def test_detects_sdxl_from_the_pipeline_class(tmp_path: Path, models_dir: Path) -> None:
    shutil.copytree(models_dir / "tiny-sd", tmp_path / "xl")
    index = tmp_path / "xl" / "model_index.json"
    index.write_text(index.read_text().replace("StableDiffusionPipeline", "StableDiffusionXLPipeline"))

    info = await ModelCatalog(ModelFolder(tmp_path)).get("xl")

    assert info is not None
    assert info.family == "sdxl"


async def test_a_missing_models_folder_is_an_empty_catalog(tmp_path: Path) -> None:
    catalog = ModelCatalog(ModelFolder(tmp_path / "does-not-exist"))
    await catalog.refresh()
    assert catalog.names() == []


def test_catalog_does_not_import_torch() -> None:
    # The generation service validates requests with the catalog and must stay light.
    probe = (
        "import sys, services.generation.catalog; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert result.stdout.split() == ["False", "False"]


class CountingFolder(ModelFolder):
    """A real folder source that counts how often the catalog reads it."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.reads = 0

    async def read_models(self) -> dict[str, ModelInfo]:
        self.reads += 1
        return await super().read_models()


async def test_a_flood_of_unknown_names_costs_one_read_and_a_model_added_before_a_request_is_found(
    tmp_path: Path, models_dir: Path
) -> None:
    source = CountingFolder(tmp_path)
    catalog = ModelCatalog(source, refresh_interval_seconds=0.2)
    await catalog.refresh()

    answers = await asyncio.gather(*(catalog.get(f"unknown-{index}") for index in range(50)))

    assert answers == [None] * 50
    assert source.reads == 2  # the start's read, then one read shared by all fifty misses
    # A name no model can have is refused without a read.
    assert await catalog.get("../../etc/passwd") is None
    assert source.reads == 2

    # Added within the interval after the last read: the request waits for a read that starts
    # after it arrived, so it finds the model.
    shutil.copytree(models_dir / "tiny-sd", tmp_path / "added")
    info = await catalog.get("added")
    assert info is not None and info.name == "added"
    assert source.reads == 3


def test_architectures_are_told_from_tensor_names_and_lora_metadata() -> None:
    def header(*names: str, shape: tuple[int, ...] = (4, 4), **metadata: str) -> SafetensorsHeader:
        return SafetensorsHeader({name: ("F16", shape) for name in names}, metadata)

    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert (
        checkpoint_family(header(unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight"))
        == "sd15"
    )
    assert checkpoint_family(header(unet, "conditioner.embedders.1.model.text_projection")) == "sdxl"
    assert checkpoint_family(header("double_blocks.0.img_attn.qkv.weight")) == "flux"
    assert checkpoint_family(header("model.diffusion_model.double_blocks.0.img_attn.qkv.weight")) == "flux"
    assert checkpoint_family(header("first_stage_model.decoder.conv_in.weight")) is None

    assert lora_family(header("unet.x.lora_A.weight", ss_base_model_version="sdxl_base_v1-0")) == "sdxl"
    assert lora_family(header("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight")) == "flux"
    assert lora_family(header("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight")) == "sdxl"
    cross_attention = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    assert lora_family(header(cross_attention, shape=(4, 768))) == "sd15"
    assert lora_family(header(cross_attention, shape=(4, 2048))) == "sdxl"
    assert lora_family(header("unet.x.lora_A.weight")) is None  # Neither tells: declare it.


def test_a_push_records_the_inpainting_variant_in_the_manifest(models_dir: Path, tmp_path: Path) -> None:
    """The mesh's catalog reads the bucket's manifests, not the files: the variant must travel."""
    manifest = manifest_of_source(models_dir / "tiny-sd", name="tiny-sd").manifest
    assert manifest.inpainting_variant == "tiny-sd-inpainting"
    read_back = ModelManifest.from_json(manifest.to_json())
    assert read_back.info(tmp_path).inpainting_variant == "tiny-sd-inpainting"
    variant = manifest_of_source(models_dir / "tiny-sd-inpainting", name="tiny-sd-inpainting").manifest
    assert ModelManifest.from_json(variant.to_json()).info(tmp_path).inpainting_only
    assert not read_back.info(tmp_path).inpainting_only
    assert manifest_of_source(models_dir / "tiny-sd-b", name="tiny-sd-b").manifest.inpainting_variant == ""
