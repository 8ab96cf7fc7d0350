"""Each sampler a generation names, as InvokeAI names it, mapped to the diffusers scheduler that
implements it, built from the model's own scheduler config.

`from_config` carries over what the model was trained with (its beta schedule, prediction type,
timestep spacing) and the sampler adds only what makes it that sampler. Runs get a scheduler of
their sampler's own (`scheduler_for`, built once per loaded model and sampler by
`gpu_inference.inference`) and never replace the loaded pipeline's, so the model's config stays
the base every sampler starts from.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from services.generation.samplers import ModelFamily, Sampler, samplers_for


class SamplerNotAllowedError(ValueError):
    """The model's family does not allow this sampler (the service refuses it first; this guards
    the worker against a job that slipped past)."""

    def __init__(self, sampler: str, family: str) -> None:
        super().__init__(f"sampler {str(sampler)!r} is not allowed for {family} models")
        self.sampler = sampler
        self.family = family


# Karras sigmas are off unless the sampler's name asks for them: a model config that enables them
# would otherwise turn every sampler into its Karras variant, and `dpmpp_2m` into `dpmpp_2m_k`.
_NO_KARRAS = {"use_karras_sigmas": False}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

# The SD family's samplers solve its noise-prediction ODE/SDE; each is one scheduler class and the
# settings that make it the named sampler (as InvokeAI configures them).
_SD_SCHEDULERS: dict[Sampler, tuple[Any, dict[str, Any]]] = {
    Sampler.EULER: (EulerDiscreteScheduler, _NO_KARRAS),
    Sampler.EULER_A: (EulerAncestralDiscreteScheduler, {}),
    Sampler.DPMPP_2M: (DPMSolverMultistepScheduler, {**_DPMPP_2M, **_NO_KARRAS}),
    Sampler.DPMPP_2M_K: (DPMSolverMultistepScheduler, {**_DPMPP_2M, "use_karras_sigmas": True}),
    Sampler.DDIM: (DDIMScheduler, {}),
    Sampler.UNIPC: (UniPCMultistepScheduler, _NO_KARRAS),
    Sampler.LMS: (LMSDiscreteScheduler, _NO_KARRAS),  # Its coefficients integrate with scipy.
    Sampler.HEUN: (HeunDiscreteScheduler, _NO_KARRAS),
}

_SCHEDULERS: dict[ModelFamily, dict[Sampler, tuple[Any, dict[str, Any]]]] = {
    ModelFamily.SD15: _SD_SCHEDULERS,
    ModelFamily.SDXL: _SD_SCHEDULERS,
    # Flux is flow-matching: its Euler is the flow-matching Euler scheduler it ships with.
    ModelFamily.FLUX: {Sampler.EULER: (FlowMatchEulerDiscreteScheduler, {})},
}


def scheduler_for(sampler: Sampler | str, family: ModelFamily | str, base_config: Any) -> Any:
    """A new scheduler for `sampler`, configured from `base_config` (the model's own scheduler
    config). Raises ValueError for an unknown sampler and `SamplerNotAllowedError` for one the
    family does not allow."""
    sampler = Sampler(sampler)
    family = ModelFamily(family)
    if sampler not in samplers_for(family):
        raise SamplerNotAllowedError(sampler, family)
    scheduler_class, settings = _SCHEDULERS[family][sampler]
    return scheduler_class.from_config(base_config, **settings)
