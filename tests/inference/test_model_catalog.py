from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from services.generation.catalog import (
    MODEL_SETTINGS_FILE,
    ModelCatalog,
    ModelFolder,
    ModelInfo,
    size_range,
)


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
    assert catalog.names() == ["tiny-sd", "tiny-sd-b", "tiny-sd-inpainting"]


async def test_a_model_names_its_inpainting_variant_in_its_settings_file(catalog: ModelCatalog) -> None:
    base, other, variant = [
        await catalog.get(name) for name in ("tiny-sd", "tiny-sd-b", "tiny-sd-inpainting")
    ]

    assert base is not None and other is not None and variant is not None
    assert base.inpainting_variant == "tiny-sd-inpainting"
    assert other.inpainting_variant == ""
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
