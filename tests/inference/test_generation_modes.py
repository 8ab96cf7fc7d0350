"""img2img, inpainting, samplers, prompt weighting and the PNG's recipe, on the tiny SD1.5 models.

The tiny models' weights are random, so their images are noise: the tests compare images with
each other and with the init image, never with what a prompt should look like.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Sequence

import numpy as np
import pyparsing
import pytest
import torch
from compel import Compel
from PIL import Image
from support.prompts import prompt_readings

from gpu_inference.inference import (
    INVOKEAI_CHUNK,
    RECIPE_CHUNK,
    BatchStep,
    PromptSyntaxError,
    TextToImageRequest,
    TextToImageResult,
    run_text_to_image_batch,
)
from gpu_inference.registry import LoadedModel, ModelRegistry
from services.generation.catalog import ModelCatalog
from services.generation.modes import GenerationMode, LoraWeight
from services.generation.samplers import Sampler

SIZE = 64


@pytest.fixture(scope="module")
async def inpainting_model(catalog: ModelCatalog) -> LoadedModel:
    """`tiny-sd`'s inpainting variant, loaded once for this module."""
    return await ModelRegistry(catalog).acquire("tiny-sd-inpainting")


def _noise_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _centre_mask() -> Image.Image:
    """White (repaint) in the central 32x32 square, black elsewhere."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def _request(
    *,
    prompt: str = "a lighthouse at dusk",
    seed: int = 7,
    steps: int = 4,
    sampler: str = Sampler.EULER,
    strength: float | None = None,
    init_image: Image.Image | None = None,
    mask_image: Image.Image | None = None,
) -> TextToImageRequest:
    return TextToImageRequest(
        prompt=prompt,
        negative_prompt="blurry",
        width=SIZE,
        height=SIZE,
        steps=steps,
        seed=seed,
        guidance=7.5,
        sampler=sampler,
        strength=strength,
        init_image=init_image,
        mask_image=mask_image,
    )


def _run(
    model: LoadedModel, request: TextToImageRequest, steps: list[BatchStep] | None = None
) -> TextToImageResult:
    (result,) = run_text_to_image_batch(
        model, [request], steps.append if steps is not None else lambda _: None
    )
    return result


def _pixels(image: Image.Image | bytes) -> np.ndarray:
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _mean_difference(a: Image.Image | bytes, b: Image.Image | bytes) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


# --- samplers


def test_every_sampler_runs_on_sd15_gives_its_own_image_and_leaves_the_model_alone(
    tiny_model: LoadedModel,
) -> None:
    model_scheduler = tiny_model.pipeline.scheduler
    images = {}
    for sampler in Sampler:
        steps: list[BatchStep] = []
        images[sampler] = _run(tiny_model, _request(sampler=sampler, steps=3), steps).png
        # One report per sampler step, Heun's two model evaluations a step included.
        assert [(step.step, step.total_steps) for step in steps] == [(1, 3), (2, 3), (3, 3)], sampler

    assert {Image.open(io.BytesIO(png)).size for png in images.values()} == {(SIZE, SIZE)}
    # DDIM (eta 0) is Euler's method on the same noise levels (Karras et al. 2022, "Elucidating
    # the Design Space of Diffusion-Based Generative Models"): their images differ by float
    # rounding at most, one level in a few pixels, or not at all (test_samplers.py shows each
    # builds its own scheduler). Every other sampler is a method of its own, with its own image.
    assert _mean_difference(images[Sampler.EULER], images[Sampler.DDIM]) < 0.01
    others = [png for sampler, png in images.items() if sampler != Sampler.DDIM]
    assert len({_pixels(png).tobytes() for png in others}) == len(others)
    assert tiny_model.pipeline.scheduler is model_scheduler
    assert type(model_scheduler).__name__ == "EulerDiscreteScheduler"


def test_a_non_default_sampler_reproduces_its_image(tiny_model: LoadedModel) -> None:
    first = _run(tiny_model, _request(sampler=Sampler.DPMPP_2M_K, seed=5))
    again = _run(tiny_model, _request(sampler=Sampler.DPMPP_2M_K, seed=5))
    other = _run(tiny_model, _request(sampler=Sampler.DPMPP_2M_K, seed=6))

    assert first.png == again.png
    assert first.png != other.png


# --- prompt weighting


def _compel_embeddings(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """compel's own embeddings for `prompts`, long prompts chunked, all padded to one length."""
    compel = Compel(
        tokenizer=model.pipeline.tokenizer,
        text_encoder=model.pipeline.text_encoder,
        truncate_long_prompts=False,
    )
    with torch.inference_mode():
        return compel(list(prompts))


def _bare_pipeline_image(
    model: LoadedModel, positive: torch.Tensor, negative: torch.Tensor, seed: int
) -> Image.Image:
    with torch.inference_mode():
        output = model.pipeline(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            width=SIZE,
            height=SIZE,
            num_inference_steps=4,
            guidance_scale=7.5,
            generator=[torch.Generator(device=model.device).manual_seed(seed)],
        )
    image: Image.Image = output.images[0]
    return image


@pytest.mark.parametrize(
    "prompt", ["a (lighthouse)1.5 at dusk", "a lighthouse++ at dusk", '("a lighthouse", "dusk").and()']
)
def test_a_weighted_prompt_is_conditioned_on_the_embedding_compel_computes(
    tiny_model: LoadedModel, prompt: str
) -> None:
    embeddings = _compel_embeddings(tiny_model, [prompt, "a lighthouse at dusk", "blurry"])
    weighted, plain, negative = embeddings[0:1], embeddings[1:2], embeddings[2:3]

    result = _run(tiny_model, _request(prompt=prompt))

    # The weighting changed the embedding, and the run used exactly compel's embedding.
    assert not torch.equal(weighted, plain)
    assert _mean_difference(result.image, _bare_pipeline_image(tiny_model, weighted, negative, 7)) == 0.0
    assert _mean_difference(result.image, _bare_pipeline_image(tiny_model, plain, negative, 7)) > 0.0


def test_a_long_prompt_is_chunked_not_cut_off(tiny_model: LoadedModel) -> None:
    # The tiny tokenizer spells every character as a token: each prompt is about 200 tokens, far
    # past CLIP's 77, and the two differ only in their last words.
    opening = "a lighthouse on a rocky cliff at dusk, waves, " * 4
    tides, storms = opening + "calm tide", opening + "storm clouds"

    embeddings = _compel_embeddings(tiny_model, [tides])
    with_tides = _run(tiny_model, _request(prompt=tides))
    with_storms = _run(tiny_model, _request(prompt=storms))

    assert embeddings.shape[1] == 3 * 77  # Three chunks, each with its own start and end tokens.
    assert _mean_difference(with_tides.image, with_storms.image) > 0.0


# --- img2img


def test_img2img_at_strength_0_keeps_the_init_image(tiny_model: LoadedModel) -> None:
    init = _noise_image(1)
    steps: list[BatchStep] = []

    kept = _run(tiny_model, _request(init_image=init, strength=0.0), steps)
    repainted = _run(tiny_model, _request(init_image=init, strength=1.0))

    # "Close" measured against what far looks like: the same init image fully repainted, and
    # an unrelated image of the same kind; both differ from the init by tens of levels.
    assert _mean_difference(repainted.image, init) > 20
    assert _mean_difference(_noise_image(2), init) > 20
    assert _mean_difference(kept.png, init) <= 1.0
    assert steps == []  # Zero steps to run: no denoising, no previews.
    assert kept.gpu_seconds == 0.0


def test_img2img_at_strength_1_is_independent_of_the_init_image(tiny_model: LoadedModel) -> None:
    first = _run(tiny_model, _request(init_image=_noise_image(1), strength=1.0, seed=3))
    second = _run(tiny_model, _request(init_image=_noise_image(2), strength=1.0, seed=3))
    # ...while at a lower strength each init image shows through.
    half_first = _run(tiny_model, _request(init_image=_noise_image(1), strength=0.5, seed=3))
    half_second = _run(tiny_model, _request(init_image=_noise_image(2), strength=0.5, seed=3))

    assert first.png == second.png
    assert _mean_difference(half_first.image, half_second.image) > 0.0


def test_img2img_runs_its_strength_share_of_the_steps_with_previews(tiny_model: LoadedModel) -> None:
    steps: list[BatchStep] = []
    request = _request(init_image=_noise_image(1), strength=0.5, steps=4)

    _run(tiny_model, request, steps)

    assert request.mode is GenerationMode.IMAGE_TO_IMAGE and request.denoising_steps == 2
    assert [(step.step, step.total_steps) for step in steps] == [(1, 2), (2, 2)]
    preview = Image.open(io.BytesIO(steps[-1].update_for(0).preview_jpeg))
    assert (preview.format, preview.size) == ("JPEG", (SIZE, SIZE))


def test_img2img_reproduces_its_image(tiny_model: LoadedModel) -> None:
    first = _run(tiny_model, _request(init_image=_noise_image(1), strength=0.75, seed=9))
    again = _run(tiny_model, _request(init_image=_noise_image(1), strength=0.75, seed=9))
    other = _run(tiny_model, _request(init_image=_noise_image(1), strength=0.75, seed=10))

    assert first.png == again.png
    assert first.png != other.png


def test_an_img2img_batch_gives_each_member_the_image_it_gets_alone(tiny_model: LoadedModel) -> None:
    requests = [
        _request(init_image=_noise_image(1), strength=0.75, seed=1),
        _request(init_image=_noise_image(2), strength=0.75, seed=2, prompt="a red fox"),
    ]

    batch = run_text_to_image_batch(tiny_model, requests, lambda _: None)
    alone = [_run(tiny_model, request) for request in requests]

    for together, single in zip(batch, alone, strict=True):
        # Matrix kernels may sum in another order at another batch size: one level of rounding.
        assert np.abs(_pixels(together.png) - _pixels(single.png)).max() <= 1
    assert _mean_difference(batch[0].image, batch[1].image) > 0.0


def test_a_batch_refuses_members_of_different_modes_or_strengths(tiny_model: LoadedModel) -> None:
    txt2img = _request()
    img2img = _request(init_image=_noise_image(1), strength=0.5)
    stronger = _request(init_image=_noise_image(1), strength=0.75)

    for members in ([txt2img, img2img], [img2img, stronger]):
        with pytest.raises(ValueError, match="sampler, mode and strength"):
            run_text_to_image_batch(tiny_model, members, lambda _: None)


def test_requests_refuse_inputs_that_make_no_mode() -> None:
    with pytest.raises(ValueError, match="mask needs an init image"):
        _request(mask_image=_centre_mask())
    with pytest.raises(ValueError, match="needs a strength"):
        _request(init_image=_noise_image(1))
    with pytest.raises(ValueError, match="between 0 and 1"):
        _request(init_image=_noise_image(1), strength=1.5)


# --- inpainting


def _outside_and_inside_differences(result: TextToImageResult, init: Image.Image) -> tuple[int, float]:
    """The largest difference from `init` outside the mask, and the mean one inside it."""
    inside = np.asarray(_centre_mask()) == 255
    difference = np.abs(_pixels(result.png) - _pixels(init))
    return int(difference[~inside].max()), float(difference[inside].mean())


def test_inpainting_with_the_variant_repaints_only_the_mask_with_previews(
    inpainting_model: LoadedModel,
) -> None:
    init = _noise_image(1)
    steps: list[BatchStep] = []

    result = _run(inpainting_model, _request(init_image=init, mask_image=_centre_mask()), steps)

    outside, inside = _outside_and_inside_differences(result, init)
    assert outside <= 1
    assert inside > 20
    assert [step.step for step in steps] == [1, 2, 3, 4]
    assert Image.open(io.BytesIO(steps[-1].update_for(0).preview_jpeg)).format == "JPEG"


def test_inpainting_without_a_variant_blends_masked_img2img(tiny_model: LoadedModel) -> None:
    init = _noise_image(1)
    steps: list[BatchStep] = []

    result = _run(tiny_model, _request(init_image=init, mask_image=_centre_mask(), strength=0.75), steps)

    outside, inside = _outside_and_inside_differences(result, init)
    assert outside <= 1
    assert inside > 20
    assert [step.step for step in steps] == [1, 2, 3]  # 0.75 x 4 steps.


def test_an_inpainting_model_refuses_text_to_image(inpainting_model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="inpainting model"):
        _run(inpainting_model, _request())


# --- the PNG's recipe


def _png_text_chunks(png: bytes) -> dict[bytes, bytes]:
    """The PNG's tEXt chunks by keyword, read straight from the chunk stream."""
    chunks, offset = {}, 8
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        assert zlib.crc32(kind + data) == int.from_bytes(
            png[offset + 8 + length : offset + 12 + length], "big"
        )
        if kind == b"tEXt":
            keyword, _, text = data.partition(b"\0")
            chunks[keyword] = text
        offset += 12 + length
    return chunks


def test_the_png_carries_its_recipe_and_invokeai_metadata(tiny_model: LoadedModel) -> None:
    recipe = {
        "prompt": "a lighthouse at dusk, 灯台",
        "negativePrompt": "blurry",
        "model": "tiny-sd",
        "sampler": "dpmpp_2m_k",
        "steps": 4,
        "guidance": 7.5,
        "seed": 7,
        "width": SIZE,
        "height": SIZE,
        "mode": "img2img",
        "strength": 0.5,
        "loras": [{"name": "tiny-lora", "weight": 0.8}],
    }
    request = TextToImageRequest(
        prompt=recipe["prompt"],
        negative_prompt="blurry",
        width=SIZE,
        height=SIZE,
        steps=4,
        seed=7,
        guidance=7.5,
        sampler=Sampler.DPMPP_2M_K,
        strength=0.5,
        init_image=_noise_image(1),
        loras=(LoraWeight("tiny-lora", 0.8),),
        recipe=recipe,
    )

    chunks = _png_text_chunks(_run(tiny_model, request).png)

    assert json.loads(chunks[RECIPE_CHUNK.encode()]) == recipe
    invokeai = json.loads(chunks[INVOKEAI_CHUNK.encode()])
    assert invokeai == {
        "generation_mode": "img2img",
        "positive_prompt": "a lighthouse at dusk, 灯台",
        "negative_prompt": "blurry",
        "width": SIZE,
        "height": SIZE,
        "seed": 7,
        "steps": 4,
        "cfg_scale": 7.5,
        "scheduler": "dpmpp_2m_k",
        "strength": 0.5,
        "model": {"name": "tiny-sd", "base": "sd-1"},
        "loras": [{"model": {"name": "tiny-lora"}, "weight": 0.8}],
    }


# --- prompt syntax


def test_deeply_nested_parentheses_parse_at_once_and_too_deep_ones_are_refused(
    tiny_model: LoadedModel,
) -> None:
    # Without pyparsing's packrat memo compel's grammar backtracks exponentially: this prompt
    # alone held a CPU for minutes.
    nested = "(" * 9 + "a lighthouse" + ")" * 9
    assert pyparsing.ParserElement._packratEnabled  # First: without it the run below takes minutes.

    result = _run(tiny_model, _request(prompt=nested))

    assert Image.open(io.BytesIO(result.png)).size == (SIZE, SIZE)
    with pytest.raises(PromptSyntaxError, match="nested too deeply") as refused:
        _request(prompt="(" * 200 + "a lighthouse")
    assert refused.value.field_name == "prompt"


def test_a_jobs_prompt_is_read_once_from_its_check_to_its_run(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reading costs the worker milliseconds of CPU (the job's check reads it on the event
    # loop): the check's reading serves compel's conditioning in the run.
    readings = prompt_readings(monkeypatch)
    prompt = "a (lighthouse)1.2 at dusk, seen from the north pier"  # read by no earlier test

    _run(tiny_model, _request(prompt=prompt))

    assert readings.count(prompt) == 1


@pytest.mark.parametrize(
    ("negative_prompt", "reason"),
    [('("blurry", "dark").blend(0.5, 0.3, 0.2)', "mismatched"), ("blurry\x0bdark", "Expected end of text")],
)
def test_a_prompt_compel_cannot_read_is_refused_naming_its_field(negative_prompt: str, reason: str) -> None:
    with pytest.raises(PromptSyntaxError, match=reason) as refused:
        TextToImageRequest(
            prompt="a lighthouse",
            negative_prompt=negative_prompt,
            width=SIZE,
            height=SIZE,
            steps=4,
            seed=1,
            guidance=7.5,
        )
    assert refused.value.field_name == "negative_prompt"
