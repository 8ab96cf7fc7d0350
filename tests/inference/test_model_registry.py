from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest
import torch

from gpu_inference.registry import ModelRegistry, UnknownModelError, estimate_weight_bytes
from services.generation.catalog import ModelCatalog, ModelFolder


@pytest.fixture(scope="session")
def three_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """`a`, `b` and `c`: three equal-size models, enough to tell LRU order from load order."""
    directory = tmp_path_factory.mktemp("three-models")
    for name, source in (("a", "tiny-sd"), ("b", "tiny-sd-b"), ("c", "tiny-sd")):
        shutil.copytree(models_dir / source, directory / name)
    return directory


@pytest.fixture(scope="session")
def model_bytes(models_dir: Path) -> int:
    return estimate_weight_bytes(models_dir / "tiny-sd", torch.float32)


async def test_loads_on_cpu_in_float32_and_reuses_the_loaded_model(
    catalog: ModelCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gpu_inference.registry")
    loads: list[str] = []
    registry = ModelRegistry(catalog, device="cpu", on_load=lambda name, _seconds: loads.append(name))

    first = await registry.acquire("tiny-sd")
    second = await registry.acquire("tiny-sd")

    assert second is first
    assert first.device == torch.device("cpu")
    assert first.dtype == torch.float32
    assert first.pipeline.unet.dtype == torch.float32
    assert first.pipeline.unet.device == torch.device("cpu")
    assert loads == ["tiny-sd"]
    metrics = registry.metrics
    assert (metrics.loads, metrics.hits, metrics.misses) == (1, 1, 1)
    assert metrics.load_seconds > 0
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("loaded model tiny-sd in ") for message in messages)
    assert "model tiny-sd already loaded" in messages


async def test_a_compile_mode_wraps_each_loaded_unet_and_eager_is_the_default(catalog: ModelCatalog) -> None:
    from torch._dynamo.eval_frame import OptimizedModule

    eager = await ModelRegistry(catalog, device="cpu").acquire("tiny-sd")
    compiled = await ModelRegistry(catalog, device="cpu", compile_mode="reduce-overhead").acquire("tiny-sd")

    assert not isinstance(eager.pipeline.unet, OptimizedModule)
    # Compilation itself is lazy (the first run of each shape); the wrapper keeps the weights.
    assert isinstance(compiled.pipeline.unet, OptimizedModule)
    assert compiled.pipeline.unet.dtype == torch.float32
    assert compiled.memory_bytes == eager.memory_bytes


async def test_memory_estimate_before_load_matches_the_loaded_tensors(
    catalog: ModelCatalog, model_bytes: int
) -> None:
    model = await ModelRegistry(catalog, device="cpu").acquire("tiny-sd")

    # Only non-persistent buffers (absent from the files) separate the two.
    assert model_bytes <= model.memory_bytes < model_bytes * 1.01
    assert estimate_weight_bytes(model.info.path, torch.float16) < model_bytes * 0.51


async def test_concurrent_acquires_of_a_cold_model_load_it_once(catalog: ModelCatalog) -> None:
    registry = ModelRegistry(catalog, device="cpu")

    waiters = [asyncio.create_task(registry.acquire("tiny-sd-b")) for _ in range(5)]
    await asyncio.sleep(0)  # Every waiter has now asked and is waiting.
    assert registry.loading() == ["tiny-sd-b"]
    assert registry.loaded() == []
    models = await asyncio.gather(*waiters)

    assert all(model is models[0] for model in models)
    assert registry.metrics.loads == 1
    assert registry.metrics.misses == 5
    assert registry.loading() == []
    assert registry.loaded() == ["tiny-sd-b"]


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load(catalog: ModelCatalog) -> None:
    registry = ModelRegistry(catalog, device="cpu")
    impatient = asyncio.create_task(registry.acquire("tiny-sd"))
    patient = asyncio.create_task(registry.acquire("tiny-sd"))
    await asyncio.sleep(0)

    impatient.cancel()
    model = await patient

    assert impatient.cancelled()
    assert model.info.name == "tiny-sd"
    assert registry.metrics.loads == 1


async def test_evicts_the_least_recently_used_model_to_fit_the_budget(
    three_models_dir: Path, model_bytes: int
) -> None:
    evicted: list[str] = []
    registry = ModelRegistry(
        ModelCatalog(ModelFolder(three_models_dir)),
        device="cpu",
        memory_budget_bytes=int(model_bytes * 2.5),
        on_evict=evicted.append,
    )

    await registry.acquire("a")
    await registry.acquire("b")
    await registry.acquire("a")  # b is now the least recently used.
    await registry.acquire("c")

    assert evicted == ["b"]
    assert registry.loaded() == ["a", "c"]
    assert registry.metrics.evictions == 1
    assert registry.resident_bytes() <= model_bytes * 2.5


async def test_never_evicts_a_pinned_model(three_models_dir: Path, model_bytes: int) -> None:
    registry = ModelRegistry(
        ModelCatalog(ModelFolder(three_models_dir)),
        device="cpu",
        memory_budget_bytes=int(model_bytes * 1.5),
        pinned=["a"],
    )
    await registry.preload(["a"])

    await registry.acquire("b")  # a is the least recently used, but pinned: over budget is allowed.
    await registry.acquire("c")

    assert registry.loaded() == ["a", "c"]
    assert registry.metrics.evictions == 1


async def test_a_model_larger_than_the_budget_still_loads(catalog: ModelCatalog) -> None:
    registry = ModelRegistry(catalog, device="cpu", memory_budget_bytes=1)

    await registry.acquire("tiny-sd")
    await registry.acquire("tiny-sd-b")

    assert registry.loaded() == ["tiny-sd-b"]
    assert registry.metrics.evictions == 1


async def test_unknown_model_is_an_error(catalog: ModelCatalog) -> None:
    registry = ModelRegistry(catalog, device="cpu")

    with pytest.raises(UnknownModelError) as raised:
        await registry.acquire("no-such-model")

    assert raised.value.name == "no-such-model"
    assert registry.loading() == []
    assert registry.metrics.loads == 0


async def test_a_failed_load_is_reported_to_every_waiter_and_can_be_retried(
    tmp_path: Path, models_dir: Path
) -> None:
    shutil.copytree(models_dir / "tiny-sd", tmp_path / "broken")
    weights = tmp_path / "broken" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    registry = ModelRegistry(ModelCatalog(ModelFolder(tmp_path)), device="cpu")

    outcomes = await asyncio.gather(
        registry.acquire("broken"), registry.acquire("broken"), return_exceptions=True
    )

    assert all(isinstance(outcome, Exception) for outcome in outcomes)
    assert outcomes[0] is outcomes[1]
    assert registry.loading() == []
    assert registry.loaded() == []
    shutil.copy(models_dir / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors", weights)
    assert (await registry.acquire("broken")).info.name == "broken"
