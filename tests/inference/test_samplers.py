from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from gpu_inference.inference import BatchStep, TextToImageRequest, run_text_to_image_batch
from gpu_inference.registry import LoadedModel
from gpu_inference.samplers import SamplerNotAllowedError, scheduler_for
from services.generation.samplers import ModelFamily, Sampler, samplers_for


@pytest.mark.parametrize(
    ("sampler", "scheduler_class", "karras"),
    [
        (Sampler.EULER, "EulerDiscreteScheduler", False),
        (Sampler.EULER_A, "EulerAncestralDiscreteScheduler", None),
        (Sampler.DPMPP_2M, "DPMSolverMultistepScheduler", False),
        (Sampler.DPMPP_2M_K, "DPMSolverMultistepScheduler", True),
        (Sampler.DDIM, "DDIMScheduler", None),
        (Sampler.UNIPC, "UniPCMultistepScheduler", False),
        (Sampler.LMS, "LMSDiscreteScheduler", False),
        (Sampler.HEUN, "HeunDiscreteScheduler", False),
    ],
)
def test_each_sampler_is_its_scheduler_on_the_model_config(
    tiny_model: LoadedModel, sampler: Sampler, scheduler_class: str, karras: bool | None
) -> None:
    model_config = tiny_model.pipeline.scheduler.config
    # A model config that turns Karras sigmas on must not make every sampler a Karras one.
    karras_config: Any = EulerDiscreteScheduler.from_config(model_config, use_karras_sigmas=True).config

    for config in (model_config, karras_config):
        scheduler = scheduler_for(sampler, ModelFamily.SD15, config)

        assert type(scheduler).__name__ == scheduler_class
        # The model's training schedule carries over.
        assert (scheduler.config.beta_schedule, scheduler.config.beta_end) == ("scaled_linear", 0.012)
        assert (scheduler.config.prediction_type, scheduler.config.timestep_spacing) == ("epsilon", "leading")
        if karras is not None:
            assert scheduler.config.use_karras_sigmas is karras
    if sampler in (Sampler.DPMPP_2M, Sampler.DPMPP_2M_K):
        assert (scheduler.config.algorithm_type, scheduler.config.solver_order) == ("dpmsolver++", 2)


def test_flux_allows_only_its_flow_matching_euler() -> None:
    flux_config: Any = FlowMatchEulerDiscreteScheduler(shift=3.0).config

    scheduler = scheduler_for("euler", "flux", flux_config)

    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    assert scheduler.config.shift == 3.0
    with pytest.raises(SamplerNotAllowedError, match="'euler_a' is not allowed for flux"):
        scheduler_for(Sampler.EULER_A, ModelFamily.FLUX, flux_config)
    with pytest.raises(ValueError, match="is not a valid Sampler"):
        scheduler_for("k_euler_karras", ModelFamily.SD15, flux_config)


class _StopAtStep2(Exception):
    pass


def _stop_at_step_2(batch_step: BatchStep) -> None:
    if batch_step.step == 2:
        raise _StopAtStep2


@pytest.mark.parametrize("sampler", samplers_for(ModelFamily.SD15))
def test_a_kind_of_run_reuses_its_pipeline_and_draws_what_a_fresh_one_draws(
    tiny_model: LoadedModel, sampler: Sampler
) -> None:
    # The loaded model's modules, none of its runs' pipelines yet.
    model = dataclasses.replace(tiny_model, run_pipelines={})
    request = TextToImageRequest(
        prompt="a lighthouse at dusk",
        negative_prompt="",
        width=64,
        height=64,
        steps=4,
        seed=11,
        guidance=7.5,
        sampler=sampler,
    )

    (first,) = run_text_to_image_batch(model, [request], lambda _step: None)
    (built,) = model.run_pipelines.values()
    # A run stopped midway leaves a multistep sampler's history and step index behind.
    with pytest.raises(_StopAtStep2):
        run_text_to_image_batch(model, [request], _stop_at_step_2)
    (again,) = run_text_to_image_batch(model, [request], lambda _step: None)

    assert model.run_pipelines == {(AutoPipelineForText2Image, sampler): built}
    assert built.scheduler is not tiny_model.pipeline.scheduler, "the loaded pipeline's is never changed"
    assert again.image.tobytes() == first.image.tobytes()
