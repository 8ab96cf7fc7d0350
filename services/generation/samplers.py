"""The samplers a generation may name, as InvokeAI names them, and which model families allow
which.

Generation-domain vocabulary shared by both sides: the generation service validates a request's
sampler with it, and the GPU worker maps each name to a diffusers scheduler configured from the
model's own scheduler config (`gpu_inference/samplers.py`).
"""

from __future__ import annotations

from enum import StrEnum


class ModelFamily(StrEnum):
    """A model's architecture: selects the pipeline class, the preview projection, the samplers
    and which LoRAs fit it."""

    SD15 = "sd15"
    SDXL = "sdxl"
    FLUX = "flux"


class Sampler(StrEnum):
    EULER = "euler"
    EULER_A = "euler_a"  # Euler ancestral.
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_K = "dpmpp_2m_k"  # DPM++ 2M with Karras sigmas.
    DDIM = "ddim"
    UNIPC = "unipc"
    LMS = "lms"
    HEUN = "heun"


# The sampler a generation that names none gets: the tiny and the stock SD checkpoints ship an
# Euler scheduler config, and Flux's flow-matching scheduler is an Euler one.
DEFAULT_SAMPLER = Sampler.EULER

# Flux is a flow-matching model: only the flow-matching Euler scheduler drives it; the other
# samplers solve the SD family's noise-prediction ODE and do not apply.
_SAMPLERS_BY_FAMILY: dict[ModelFamily, tuple[Sampler, ...]] = {
    ModelFamily.SD15: tuple(Sampler),
    ModelFamily.SDXL: tuple(Sampler),
    ModelFamily.FLUX: (Sampler.EULER,),
}


def samplers_for(family: ModelFamily | str) -> tuple[Sampler, ...]:
    """The samplers a model of `family` allows, in the enum's order."""
    return _SAMPLERS_BY_FAMILY[ModelFamily(family)]
