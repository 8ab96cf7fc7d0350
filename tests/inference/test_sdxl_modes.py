"""The SDXL path of every mode: both text encoders and the pooled embedding through compel, the
samplers, img2img and inpainting, on a minimal random SDXL built here from tiny-sd's tokenizer,
VAE and scheduler (SDXL's own parts: a second, projecting text encoder and a UNet conditioned on
the pooled embedding and the size ids)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from compel import Compel, ReturnedEmbeddingsType
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from support.prompts import prompt_readings
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from gpu_inference.inference import BatchStep, TextToImageRequest, TextToImageResult, run_text_to_image_batch
from gpu_inference.registry import LoadedModel, ModelRegistry
from services.generation.catalog import ModelCatalog, ModelFolder
from services.generation.samplers import ModelFamily, Sampler

SIZE = 64
_TEXT_WIDTH = 32
_TIME_ID_WIDTH = 8  # Each of SDXL's six size/crop ids is embedded this wide.


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_WIDTH,
        intermediate_size=4 * _TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=_TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _create_tiny_sdxl(target: Path, sd15: Path) -> None:
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(sd15 / "tokenizer")
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_ID_WIDTH,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * _TIME_ID_WIDTH + _TEXT_WIDTH,
        cross_attention_dim=2 * _TEXT_WIDTH,  # Both encoders' hidden states, side by side.
        norm_num_groups=8,
    )
    pipeline = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=AutoencoderKL.from_pretrained(sd15 / "vae"),  # type: ignore[no-untyped-call]
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(sd15 / "scheduler"),  # type: ignore[no-untyped-call]
    )
    pipeline.save_pretrained(target, safe_serialization=True)


@pytest.fixture(scope="module")
async def sdxl_model(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> LoadedModel:
    folder = tmp_path_factory.mktemp("sdxl")
    _create_tiny_sdxl(folder / "tiny-sdxl", models_dir / "tiny-sd")
    model = await ModelRegistry(ModelCatalog(ModelFolder(folder))).acquire("tiny-sdxl")
    assert model.info.family == ModelFamily.SDXL
    return model


def _request(**fields: object) -> TextToImageRequest:
    defaults: dict[str, object] = {
        "prompt": "a (lighthouse)1.3 at dusk",
        "negative_prompt": "blurry",
        "width": SIZE,
        "height": SIZE,
        "steps": 3,
        "seed": 7,
        "guidance": 5.0,
    }
    return TextToImageRequest(**{**defaults, **fields})  # type: ignore[arg-type]


def _run(model: LoadedModel, request: TextToImageRequest, steps: list[BatchStep]) -> TextToImageResult:
    (result,) = run_text_to_image_batch(model, [request], steps.append)
    return result


def _noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def test_an_sdxl_jobs_prompt_is_read_once_for_both_encoders(
    sdxl_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compel conditions SDXL's two text encoders separately, each reading the prompt itself.
    readings = prompt_readings(monkeypatch)
    prompt = "a (lighthouse)1.3 at dusk, seen from the south pier"  # read by no earlier test

    _run(sdxl_model, _request(prompt=prompt), [])

    assert readings.count(prompt) == 1


def test_sdxl_is_conditioned_on_both_encoders_and_the_pooled_embedding_as_compel_computes(
    sdxl_model: LoadedModel,
) -> None:
    pipeline = sdxl_model.pipeline
    prompts = ["a (lighthouse)1.3 at dusk", "blurry"]
    penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    first = Compel(
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        returned_embeddings_type=penultimate,
        truncate_long_prompts=False,
    )
    second = Compel(
        tokenizer=pipeline.tokenizer_2,
        text_encoder=pipeline.text_encoder_2,
        returned_embeddings_type=penultimate,
        truncate_long_prompts=False,
        requires_pooled=True,
    )
    with torch.inference_mode():
        pooled_second, pooled = second(prompts)
        embeddings = torch.cat([first(prompts), pooled_second], dim=-1)
        output = pipeline(
            prompt_embeds=embeddings[0:1],
            negative_prompt_embeds=embeddings[1:2],
            pooled_prompt_embeds=pooled[0:1],
            negative_pooled_prompt_embeds=pooled[1:2],
            width=SIZE,
            height=SIZE,
            num_inference_steps=3,
            guidance_scale=5.0,
            generator=[torch.Generator().manual_seed(7)],
        )

    result = _run(sdxl_model, _request(), [])

    assert np.array_equal(np.asarray(result.image), np.asarray(output.images[0]))


def test_every_sampler_runs_on_sdxl(sdxl_model: LoadedModel) -> None:
    images = set()
    for sampler in Sampler:
        steps: list[BatchStep] = []
        result = _run(sdxl_model, _request(sampler=sampler), steps)
        # One report per sampler step, Heun's two model evaluations a step included.
        assert [(step.step, step.total_steps) for step in steps] == [(1, 3), (2, 3), (3, 3)], sampler
        images.add(np.asarray(result.image).tobytes())

    assert len(images) == len(Sampler)


def test_sdxl_img2img_and_inpainting_run_with_previews(sdxl_model: LoadedModel) -> None:
    init = _noise_image(1)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    img2img_steps: list[BatchStep] = []
    inpaint_steps: list[BatchStep] = []

    img2img = _run(sdxl_model, _request(init_image=init, strength=0.7), img2img_steps)
    inpainted = _run(sdxl_model, _request(init_image=init, mask_image=mask, strength=1.0), inpaint_steps)

    assert [step.step for step in img2img_steps] == [1, 2]  # 0.7 x 3 steps, rounded down.
    assert [step.step for step in inpaint_steps] == [1, 2, 3]
    for steps in (img2img_steps, inpaint_steps):
        preview = Image.open(io.BytesIO(steps[-1].update_for(0).preview_jpeg))
        assert (preview.format, preview.size) == ("JPEG", (SIZE, SIZE))
    assert img2img.image.size == inpainted.image.size == (SIZE, SIZE)
    outside = np.asarray(mask) == 0
    difference = np.abs(np.asarray(inpainted.image, dtype=np.int16) - np.asarray(init, dtype=np.int16))
    assert difference[outside].max() <= 1
