"""Text-to-image on a loaded pipeline: one call for one or more jobs, reporting each denoising
step through one callback."""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from gpu_inference.preview import PreviewFrame, unpack_flux_latents
from gpu_inference.registry import LoadedModel
from services.generation.samplers import ModelFamily

# zlib level 1, as InvokeAI defaults to: on a smooth 512x512 test image it encoded in 22 ms
# against 85 ms at PIL's default 6, for a file 24 % larger. Every level is lossless.
THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80
PNG_COMPRESS_LEVEL = 1


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
    preview: PreviewFrame

    @functools.cached_property
    def preview_jpeg(self) -> bytes:
        """Waits for the preview's pixels (on CUDA) and encodes them: read it off the inference
        thread, so the denoising loop never waits for a JPEG."""
        return self.preview.jpeg()[0]


@dataclass(frozen=True)
class BatchStep:
    """One denoising step of a batch. Previews are made on request, per member, so a member
    nobody watches any more (cancelled mid-batch) costs nothing."""

    step: int  # 1-based.
    total_steps: int
    latents: torch.Tensor  # The whole batch's latents after this step.
    family: str

    def update_for(self, index: int) -> StepUpdate:
        preview = PreviewFrame(self.latents[index : index + 1], self.family)
        return StepUpdate(step=self.step, total_steps=self.total_steps, preview=preview)


@dataclass(frozen=True)
class TextToImageResult:
    image: Image.Image
    seed: int
    # Wall time of the pipeline call divided among the batch's members: what the user is billed for.
    gpu_seconds: float

    @functools.cached_property
    def png(self) -> bytes:
        """The image as PNG, encoded on first read: the worker encodes it off the inference
        thread while the GPU runs the next call (PIL releases the GIL while compressing)."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()

    @functools.cached_property
    def thumbnail_webp(self) -> bytes:
        """The gallery's thumbnail: WebP, its longest side THUMBNAIL_SIDE (never enlarged)."""
        thumbnail = self.image.copy()
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()


def run_text_to_image_batch(
    model: LoadedModel, requests: Sequence[TextToImageRequest], on_step: Callable[[BatchStep], None]
) -> list[TextToImageResult]:
    """Run `requests` as one pipeline call, one image each, in order.

    They must share size, steps and guidance (one scheduler and one guidance scale drive the
    call); prompts, negative prompts and seeds are each member's own. Every member gets its own
    generator, so its starting noise, and so its image, is the one its seed gives alone (up to
    floating-point differences between batch sizes). `on_step` is called once per step for the
    whole batch, on the calling thread (the worker's inference thread). Whatever it raises stops
    the run at that step and propagates out of this function: that is how a batch is cancelled,
    abandoned when its leases are lost, or handed back.
    """
    if not requests:
        raise ValueError("a batch needs at least one request")
    shared = {(r.width, r.height, r.steps, r.guidance) for r in requests}
    if len(shared) != 1:
        raise ValueError(f"a batch's requests must share size, steps and guidance; got {sorted(shared)}")
    first = requests[0]
    pipeline = model.pipeline
    family = model.info.family

    def on_step_end(pipe: Any, step_index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        latents = tensors["latents"]
        if family == ModelFamily.FLUX:
            # Flux's loop holds its latents packed in 2x2 patches; previews need them as images.
            latents = unpack_flux_latents(latents, first.width, first.height)
        on_step(BatchStep(step_index + 1, pipe.num_timesteps, latents, family))
        return tensors

    # One run per pipeline at a time: the scheduler holds the run's timesteps and step index.
    with model.run_lock, torch.inference_mode():
        # Seeded on the model's device so a seed reproduces the same image on the same hardware.
        generators = [torch.Generator(device=model.device).manual_seed(r.seed) for r in requests]
        started = time.perf_counter()
        if family == ModelFamily.FLUX:
            # FLUX.1-dev is guidance-distilled: `guidance_scale` conditions the transformer (one
            # pass per step) instead of classifier-free guidance, so there is no negative branch
            # and no negative prompt (that would take FluxPipeline's `true_cfg_scale`, a second pass).
            family_arguments: dict[str, Any] = {}
        else:
            family_arguments = {"negative_prompt": [r.negative_prompt for r in requests]}
        output = pipeline(
            prompt=[r.prompt for r in requests],
            **family_arguments,
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=generators,
            output_type="pil",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        gpu_seconds = (time.perf_counter() - started) / len(requests)

    return [
        TextToImageResult(image=image, seed=request.seed, gpu_seconds=gpu_seconds)
        for request, image in zip(requests, output.images, strict=True)
    ]
