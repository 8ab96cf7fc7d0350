"""SDXL, Flux and single-file checkpoints through the registry and the batch entry point, on the
tiny random-weight models `pingvas models create-tiny` builds."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_inference.inference import BatchStep, TextToImageRequest, run_text_to_image_batch
from gpu_inference.preview import unpack_flux_latents
from gpu_inference.registry import LoadedModel, ModelRegistry
from services.generation.catalog import ModelCatalog, ModelFormat


@pytest.fixture(scope="module")
async def registry(catalog: ModelCatalog) -> ModelRegistry:
    return ModelRegistry(catalog, device="cpu")


def _request(*, steps: int = 3, guidance: float = 3.5) -> TextToImageRequest:
    return TextToImageRequest(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=steps,
        seed=11,
        guidance=guidance,
    )


def _run(model: LoadedModel, request: TextToImageRequest) -> tuple[np.ndarray, list[BatchStep]]:
    steps: list[BatchStep] = []
    (result,) = run_text_to_image_batch(model, [request], steps.append)
    return np.asarray(result.image), steps


async def test_a_single_file_checkpoint_and_its_diffusers_directory_give_the_same_image(
    registry: ModelRegistry,
) -> None:
    directory = await registry.acquire("tiny-sd")
    single_file = await registry.acquire("tiny-sd-single")

    assert single_file.info.format == ModelFormat.SINGLE_FILE
    assert type(single_file.pipeline) is type(directory.pipeline)
    from_directory, _ = _run(directory, _request(guidance=7.5))
    from_single_file, _ = _run(single_file, _request(guidance=7.5))

    assert from_directory.std() > 0  # Random weights still make a non-blank image.
    assert np.array_equal(from_single_file, from_directory)


async def test_a_flux_generation_streams_16_channel_previews_and_completes(registry: ModelRegistry) -> None:
    model = await registry.acquire("tiny-flux")
    assert type(model.pipeline).__name__ == "FluxPipeline"
    assert (model.info.family, model.info.latent_channels) == ("flux", 16)

    image, steps = _run(model, _request(steps=3))

    assert image.shape == (64, 64, 3)
    assert [step.step for step in steps] == [1, 2, 3]
    for step in steps:
        # Unpacked from Flux's 2x2 patches: 16 channels of 8x8 latent pixels.
        assert tuple(step.latents.shape) == (1, 16, 8, 8)
        preview = Image.open(io.BytesIO(step.update_for(0).preview_jpeg))
        assert (preview.format, preview.size) == ("JPEG", (64, 64))


async def test_flux_img2img_keeps_the_requested_size_and_previews_it(registry: ModelRegistry) -> None:
    model = await registry.acquire("tiny-flux")
    init = Image.new("RGB", (64, 64), (200, 40, 40))

    image, steps = _run(model, dataclasses.replace(_request(steps=4), init_image=init, strength=0.5))

    # Flux's img2img pipeline works at 1024x1024 unless given the size: 64x64 it must stay.
    assert image.shape == (64, 64, 3)
    assert [step.step for step in steps] == [1, 2]  # strength 0.5 of 4 steps
    assert all(tuple(step.latents.shape) == (1, 16, 8, 8) for step in steps)


async def test_flux_guidance_is_the_distilled_guidance_embedding(registry: ModelRegistry) -> None:
    model = await registry.acquire("tiny-flux")

    low, _ = _run(model, _request(guidance=1.0))
    high, _ = _run(model, _request(guidance=6.0))

    # With no classifier-free guidance, 1.0 still runs the model once per step, conditioned on it.
    assert not np.array_equal(low, high)


async def test_an_sdxl_generation_runs_with_two_text_encoders_and_previews(registry: ModelRegistry) -> None:
    model = await registry.acquire("tiny-sdxl")
    assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert model.info.family == "sdxl"

    image, steps = _run(model, _request(steps=2, guidance=5.0))

    assert image.shape == (64, 64, 3)
    assert [step.step for step in steps] == [1, 2]
    preview = Image.open(io.BytesIO(steps[-1].update_for(0).preview_jpeg))
    assert preview.size == (64, 64)


def test_unpacking_flux_latents_inverts_the_pipelines_packing() -> None:
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 10)  # A 80x48 image's latents.
    packed = FluxPipeline._pack_latents(latents, 2, 16, 6, 10)

    assert torch.equal(unpack_flux_latents(packed, 80, 48), latents)
    with pytest.raises(ValueError, match="do not fit"):
        unpack_flux_latents(packed, 64, 64)
