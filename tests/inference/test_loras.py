"""LoRAs as PEFT adapters on a resident pipeline: applied and removed without reloading the base
model, kept loaded under the registry's memory budget."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_inference.inference import TextToImageRequest, run_text_to_image_batch
from gpu_inference.registry import (
    LoadedModel,
    LoraFamilyMismatch,
    ModelRegistry,
    UnknownLoraError,
    UnknownModelError,
    estimate_weight_bytes,
)
from services.generation.catalog import LORA_WEIGHTS_NAME, ModelCatalog, ModelFolder, ModelKind


@dataclass(frozen=True)
class Lora:
    name: str
    weight: float


REQUEST = TextToImageRequest(
    prompt="a lighthouse at dusk", negative_prompt="", width=64, height=64, steps=2, seed=5, guidance=7.5
)


def _image(model: LoadedModel) -> np.ndarray:
    (result,) = run_text_to_image_batch(model, [REQUEST], lambda _step: None)
    return np.asarray(result.image)


@pytest.fixture(scope="module")
def lora_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """tiny-sd, the tiny LoRAs, and `second-lora`, another SD1.5 LoRA (tiny-sd-lora's weights at
    another name), so two adapters can compete for a budget."""
    directory = tmp_path_factory.mktemp("lora-models")
    for name in ("tiny-sd", "tiny-sd-lora", "tiny-sdxl-lora"):
        (directory / name).symlink_to(models_dir / name)
    shutil.copytree(models_dir / "tiny-sd-lora", directory / "second-lora")
    return directory


@pytest.fixture(scope="module")
def lora_catalog(lora_models_dir: Path) -> ModelCatalog:
    return ModelCatalog(ModelFolder(lora_models_dir))


async def test_a_lora_changes_the_image_and_removing_it_restores_the_base_without_a_reload(
    lora_catalog: ModelCatalog,
) -> None:
    registry = ModelRegistry(lora_catalog, device="cpu")
    model = await registry.acquire("tiny-sd")
    base = _image(model)

    await registry.apply_loras(model, [Lora("tiny-sd-lora", 1.0)])
    with_lora = _image(model)
    await registry.apply_loras(model, [Lora("tiny-sd-lora", 0.5)])
    half = _image(model)
    await registry.apply_loras(model, [])
    restored = _image(model)
    await registry.apply_loras(model, [Lora("tiny-sd-lora", 1.0)])
    again = _image(model)

    assert not np.array_equal(with_lora, base)
    assert not np.array_equal(half, with_lora)
    assert np.array_equal(restored, base)
    assert np.array_equal(again, with_lora)
    assert await registry.acquire("tiny-sd") is model
    metrics = registry.metrics
    assert (metrics.loads, metrics.adapter_loads, metrics.adapter_evictions) == (1, 1, 0)
    assert model.active_loras == (("tiny-sd-lora", 1.0),)


async def test_an_adapter_evicted_under_a_small_budget_is_loaded_again_on_next_use(
    lora_catalog: ModelCatalog, lora_models_dir: Path
) -> None:
    model_bytes = estimate_weight_bytes(lora_models_dir / "tiny-sd", torch.float32)
    lora_bytes = (lora_models_dir / "tiny-sd-lora" / LORA_WEIGHTS_NAME).stat().st_size
    # Room for the model and one adapter, not two.
    registry = ModelRegistry(lora_catalog, device="cpu", memory_budget_bytes=model_bytes + lora_bytes)
    model = await registry.acquire("tiny-sd")

    await registry.apply_loras(model, [Lora("tiny-sd-lora", 1.0)])
    first = _image(model)
    await registry.apply_loras(model, [Lora("second-lora", 1.0)])
    assert registry.loaded_adapters() == [("tiny-sd", "second-lora")]
    assert registry.resident_bytes() <= model_bytes + lora_bytes
    await registry.apply_loras(model, [Lora("tiny-sd-lora", 1.0)])

    assert registry.loaded_adapters() == [("tiny-sd", "tiny-sd-lora")]
    assert np.array_equal(_image(model), first)
    metrics = registry.metrics
    assert (metrics.loads, metrics.adapter_loads, metrics.adapter_evictions) == (1, 3, 2)


async def test_unknown_loras_and_loras_of_another_family_are_refused_before_anything_changes(
    lora_catalog: ModelCatalog,
) -> None:
    registry = ModelRegistry(lora_catalog, device="cpu")
    model = await registry.acquire("tiny-sd")

    with pytest.raises(LoraFamilyMismatch, match="is for sdxl"):
        await registry.apply_loras(model, [Lora("tiny-sd-lora", 1.0), Lora("tiny-sdxl-lora", 1.0)])
    with pytest.raises(UnknownLoraError):
        await registry.apply_loras(model, [Lora("no-such-lora", 1.0)])
    with pytest.raises(UnknownLoraError):
        await registry.apply_loras(model, [Lora("tiny-sd", 1.0)])  # A model, not a LoRA.
    with pytest.raises(UnknownModelError):
        await registry.acquire("tiny-sd-lora")  # A LoRA, not a model.

    assert registry.metrics.adapter_loads == 0
    assert model.active_loras == ()
    info = await lora_catalog.get("tiny-sdxl-lora")
    assert info is not None and (info.kind, info.family) == (ModelKind.LORA, "sdxl")
    assert lora_catalog.names() == ["tiny-sd"]
