"""One text-to-image run on a loaded pipeline, reporting each denoising step through one callback."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gpu_inference.preview import latents_to_preview_jpeg
from gpu_inference.registry import LoadedModel


def configure_cpu_threads(device: torch.device, threads: int | None) -> int:
    """Set torch's CPU thread count once per worker process and return it.

    On a CPU worker the default (one thread per core) leaves nothing for the worker's own event
    loop and the mesh beside it; OpenMP threads that lose their core then stall each step. So the
    default leaves one core free. On CUDA the CPU threads only feed the GPU and keep the default.
    """
    if threads is None:
        if device.type != "cpu":
            return torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class TextToImageRequest:
    prompt: str
    negative_prompt: str
    width: int  # Pixels; a multiple of 8 within the model's size range.
    height: int
    steps: int
    seed: int
    guidance: float  # Classifier-free guidance scale; 1.0 or less disables the negative branch.


@dataclass(frozen=True)
class StepUpdate:
    step: int  # 1-based.
    total_steps: int  # The scheduler's step count; equals the requested steps for most schedulers.
    preview_jpeg: bytes


@dataclass(frozen=True)
class TextToImageResult:
    png: bytes
    seed: int
    gpu_seconds: float  # Wall time of the pipeline call, what the user is billed for.


def run_text_to_image(
    model: LoadedModel, request: TextToImageRequest, on_step: Callable[[StepUpdate], None]
) -> TextToImageResult:
    """Run `request` on `model` synchronously; the worker calls this from a thread.

    `on_step` is called once per denoising step with a cheap preview. Whatever it raises stops the
    run at that step and propagates out of this function: that is how a job is cancelled or
    abandoned when its lease is lost.
    """
    pipeline = model.pipeline
    family = model.info.family

    def on_step_end(pipe: Any, step_index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        preview_jpeg, _, _ = latents_to_preview_jpeg(tensors["latents"], family)
        on_step(StepUpdate(step=step_index + 1, total_steps=pipe.num_timesteps, preview_jpeg=preview_jpeg))
        return tensors

    # One run per pipeline at a time: the scheduler holds the run's timesteps and step index.
    with model.run_lock, torch.inference_mode():
        # Seeded on the model's device so a seed reproduces the same image on the same hardware.
        generator = torch.Generator(device=model.device).manual_seed(request.seed)
        started = time.perf_counter()
        output = pipeline(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=generator,
            output_type="pil",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        gpu_seconds = time.perf_counter() - started

    buffer = io.BytesIO()
    output.images[0].save(buffer, format="PNG", optimize=False)
    return TextToImageResult(png=buffer.getvalue(), seed=request.seed, gpu_seconds=gpu_seconds)
