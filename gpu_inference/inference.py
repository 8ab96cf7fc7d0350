"""Image generation on a loaded pipeline, in every mode: one call for one or more jobs, reporting
each denoising step through one callback.

A run uses a pipeline object of its own kind around the loaded model's components (`from_pipe`:
the text-to-image, image-to-image or inpainting class, with a scheduler for its sampler), built on
the first such run and kept with the model, so nothing is reloaded and the loaded pipeline itself
is never changed. Prompts are weighted with compel (InvokeAI's syntax) and reach the pipeline as
embeddings.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyparsing
import torch
from compel import CompelForSD, CompelForSDXL, PromptParser
from compel.prompt_parser import Conjunction
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from PIL import Image, PngImagePlugin

from gpu_inference.preview import PreviewFrame, unpack_flux_latents
from gpu_inference.registry import LoadedModel
from gpu_inference.samplers import scheduler_for
from services.generation.modes import GenerationMode, LoraWeight
from services.generation.samplers import DEFAULT_SAMPLER, ModelFamily, Sampler

# compel's prompt grammar backtracks exponentially on nested parentheses without pyparsing's
# packrat memo: "((((((((" took 44 s to parse on a CPU, so one prompt could hold the inference
# thread for hours. With the memo such prompts parse in milliseconds, to the same trees (checked
# on a few thousand random prompts). It is process-wide and only ever speeds pyparsing up.
pyparsing.ParserElement.enable_packrat()

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


class PromptSyntaxError(ValueError):
    """A prompt compel cannot read: a `.blend()` or `.and()` with more or fewer weights than
    parts, parentheses nested past what the parser's recursion allows, or a control character
    its grammar has no place for."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name  # "prompt" or "negative_prompt".
        self.reason = reason


_prompt_parsers = threading.local()


@functools.lru_cache(maxsize=1024)
def parse_prompt(prompt: str) -> Conjunction:
    """compel's reading of `prompt`, once per distinct prompt. A job's prompts are read before
    its run (`check_prompt_syntax`), then for its conditioning, and again to measure a batch
    member's conditioning alone; a reading costs milliseconds, 1.7 of them for the grammar
    that compel's own `parse_prompt_string` builds anew each time. One parser per thread: a
    pyparsing grammar is not made to parse in two threads at once. The readings are plain
    data that compel only reads."""
    parser = getattr(_prompt_parsers, "parser", None)
    if parser is None:
        parser = _prompt_parsers.parser = PromptParser()
    conjunction: Conjunction = parser.parse_conjunction(prompt)
    return conjunction


def check_prompt_syntax(field_name: str, prompt: str) -> None:
    """Raise `PromptSyntaxError` naming `field_name` when compel cannot parse `prompt`."""
    try:
        parse_prompt(prompt)
    except (PromptParser.ParsingException, pyparsing.ParseBaseException) as error:
        # pyparsing's own error: a character its grammar has no place for (a vertical tab).
        raise PromptSyntaxError(field_name, str(error)) from None
    except RecursionError:
        raise PromptSyntaxError(field_name, "parentheses nested too deeply") from None


@dataclass(frozen=True)
class TextToImageRequest:
    """One job of a batch, in any `GenerationMode`."""

    prompt: str  # InvokeAI's prompt syntax: `(word)1.2`, `word++`, `("a", "b").and()`.
    negative_prompt: str
    width: int  # Pixels of the output; a multiple of 8 within the model's size range.
    height: int
    steps: int  # The sampler's steps for the full schedule; img2img runs its strength's share.
    seed: int
    guidance: float  # Classifier-free guidance scale; 1.0 or less disables the negative branch.
    sampler: str = DEFAULT_SAMPLER
    # How far the init image is noised, 0 (kept as it is) to 1 (pure noise: independent of it).
    # Required in img2img; inpainting defaults to 1. None in txt2img.
    strength: float | None = None
    init_image: Image.Image | None = None  # Resized to width x height when it differs.
    mask_image: Image.Image | None = None  # White is repainted; needs an init image.
    # The LoRAs the worker has the registry apply before the call; inference only records them
    # in the image's metadata.
    loras: tuple[LoraWeight, ...] = ()
    # The generation's parameters as GetImage returns them: embedded in the PNG, so a downloaded
    # image carries its recipe. None writes no recipe.
    recipe: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Here, not in the pipeline call, so one member's prompt fails that member, not its batch.
        check_prompt_syntax("prompt", self.prompt)
        check_prompt_syntax("negative_prompt", self.negative_prompt)
        if self.mask_image is not None and self.init_image is None:
            raise ValueError("a mask needs an init image")
        if self.init_image is not None and self.mask_image is None and self.strength is None:
            raise ValueError("img2img needs a strength")
        if self.strength is not None and not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {self.strength}")

    @property
    def mode(self) -> GenerationMode:
        if self.init_image is None:
            return GenerationMode.TEXT_TO_IMAGE
        return GenerationMode.IMAGE_TO_IMAGE if self.mask_image is None else GenerationMode.INPAINTING

    @property
    def effective_strength(self) -> float:
        """The strength the run uses: txt2img starts from pure noise, as strength 1 does."""
        return 1.0 if self.strength is None else self.strength

    @property
    def denoising_steps(self) -> int:
        """The steps the sampler actually runs, as diffusers counts them: strength x steps,
        rounded down. Zero leaves the init image as it is."""
        return min(int(self.steps * self.effective_strength), self.steps)


@dataclass(frozen=True)
class StepUpdate:
    step: int  # 1-based.
    total_steps: int  # The sampler steps this run takes: the requested steps, img2img's share of them.
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
    # PNG tEXt chunks, keyword -> text: the recipe (`pingvas`) and InvokeAI's `invokeai_metadata`.
    text_chunks: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def png(self) -> bytes:
        """The image as PNG with its text chunks, encoded on first read: the worker encodes it off
        the inference thread while the GPU runs the next call (PIL releases the GIL while
        compressing)."""
        info = PngImagePlugin.PngInfo()
        for keyword, text in self.text_chunks.items():
            info.add_text(keyword, text)
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
        return buffer.getvalue()

    @functools.cached_property
    def thumbnail_webp(self) -> bytes:
        """The gallery's thumbnail: WebP, its longest side THUMBNAIL_SIDE (never enlarged)."""
        thumbnail = self.image.copy()
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()


RECIPE_CHUNK = "pingvas"
INVOKEAI_CHUNK = "invokeai_metadata"

# InvokeAI's names for the generation modes and the model bases, in its `invokeai_metadata`.
_INVOKEAI_MODES = {
    GenerationMode.TEXT_TO_IMAGE: "txt2img",
    GenerationMode.IMAGE_TO_IMAGE: "img2img",
    GenerationMode.INPAINTING: "inpaint",
}
_INVOKEAI_BASES = {ModelFamily.SD15: "sd-1", ModelFamily.SDXL: "sdxl", ModelFamily.FLUX: "flux"}


def text_chunks(model_name: str, family: str, request: TextToImageRequest) -> dict[str, str]:
    """The PNG text chunks of `request`'s image: its recipe as given, and the same parameters in
    InvokeAI's metadata format so InvokeAI can recall them. ASCII JSON, so both stay tEXt chunks
    whatever the prompt's script."""
    chunks: dict[str, str] = {}
    if request.recipe is not None:
        chunks[RECIPE_CHUNK] = json.dumps(request.recipe, sort_keys=True)
    invokeai: dict[str, Any] = {
        "generation_mode": _INVOKEAI_MODES[request.mode],
        "positive_prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
        "steps": request.steps,
        "cfg_scale": request.guidance,
        "scheduler": str(request.sampler),  # InvokeAI names its samplers as we do.
        "model": {"name": model_name, "base": _INVOKEAI_BASES[ModelFamily(family)]},
        "loras": [{"model": {"name": lora.name}, "weight": lora.weight} for lora in request.loras],
    }
    if request.strength is not None:
        invokeai["strength"] = request.strength
    chunks[INVOKEAI_CHUNK] = json.dumps(invokeai, sort_keys=True)
    return chunks


def _shared_settings(request: TextToImageRequest) -> tuple[Any, ...]:
    return (
        request.width,
        request.height,
        request.steps,
        request.guidance,
        request.sampler,
        request.mode,
        request.effective_strength,
    )


def run_text_to_image_batch(
    model: LoadedModel, requests: Sequence[TextToImageRequest], on_step: Callable[[BatchStep], None]
) -> list[TextToImageResult]:
    """Run `requests` as one pipeline call, one image each, in order, in any mode.

    They must share size, steps and guidance, sampler, mode and strength (one scheduler, one
    guidance scale and one noise level drive the call); prompts, negative prompts, seeds, init
    images and masks are each member's own. Every member gets its own generator, so its starting
    noise, and so its image, is the one its seed gives alone (up to floating-point differences
    between batch sizes). `on_step` is called once per step for the whole batch, on the calling
    thread (the worker's inference thread). Whatever it raises stops the run at that step and
    propagates out of this function: that is how a batch is cancelled, abandoned when its leases
    are lost, or handed back.

    img2img at strength 1 starts from pure noise, as txt2img does, so its image does not depend
    on the init image; a strength that leaves no step to run returns the init image itself.
    Inpainting runs the inpainting pipeline class: on an inpainting model (its UNet also takes
    the mask and the masked image; the worker passes the model's variant) it conditions on them,
    on any other model it blends the init image back outside the mask at every step. Either way
    the init image's own pixels are pasted back outside the mask, as InvokeAI does, so the VAE's
    round trip cannot shift them.
    """
    if not requests:
        raise ValueError("a batch needs at least one request")
    shared = {_shared_settings(r) for r in requests}
    if len(shared) != 1:
        raise ValueError(
            "a batch's requests must share size, steps and guidance, and sampler, mode and strength; "
            f"got {sorted(shared, key=repr)}"
        )
    first = requests[0]
    family = model.info.family
    mode = first.mode
    chunks = [text_chunks(model.info.name, family, request) for request in requests]
    # The mode is shared: every member has an init image (and a mask) or none has.
    init_images = [_fit(r.init_image, r.width, r.height, "RGB") for r in requests if r.init_image is not None]
    mask_images = [_fit(r.mask_image, r.width, r.height, "L") for r in requests if r.mask_image is not None]
    if _is_inpainting_model(model.pipeline) and mode is not GenerationMode.INPAINTING:
        raise ValueError(f"{model.info.name} is an inpainting model: it needs an init image and a mask")

    if mode is not GenerationMode.TEXT_TO_IMAGE and first.denoising_steps == 0:
        # Nothing to denoise: diffusers would fail on an empty schedule, and the answer is known.
        return [
            TextToImageResult(image=image.copy(), seed=request.seed, gpu_seconds=0.0, text_chunks=chunk)
            for request, image, chunk in zip(requests, init_images, chunks, strict=True)
        ]

    inputs: dict[str, Any] = {}
    if mode is GenerationMode.IMAGE_TO_IMAGE and first.effective_strength < 1.0:
        pipeline_class: Any = AutoPipelineForImage2Image
        inputs = {"image": init_images, "strength": first.effective_strength}
        if family == ModelFamily.FLUX:
            # SD's img2img works at its init image's size; Flux's at its default 1024x1024 unless told.
            inputs |= {"width": first.width, "height": first.height}
    elif mode is GenerationMode.INPAINTING:
        pipeline_class = AutoPipelineForInpainting
        inputs = {
            "image": init_images,
            "mask_image": mask_images,
            "strength": first.effective_strength,
            "width": first.width,
            "height": first.height,
        }
    else:
        # txt2img, and img2img at strength 1: diffusers' img2img would still keep a trace of the
        # init image in its first noised latents.
        pipeline_class = AutoPipelineForText2Image
        inputs = {"width": first.width, "height": first.height}

    reported = 0

    def on_step_end(pipe: Any, step_index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # A second-order sampler (Heun) evaluates the model twice per step, and diffusers calls
        # back after each evaluation: report sampler steps, as many as the request's.
        nonlocal reported
        order = pipe.scheduler.order
        step = -(-(step_index + 1) // order)
        if step > reported:
            reported = step
            latents = tensors["latents"]
            if family == ModelFamily.FLUX:
                # Flux's loop holds its latents packed in 2x2 patches; previews need them as images.
                latents = unpack_flux_latents(latents, first.width, first.height)
            on_step(BatchStep(step, -(-pipe.num_timesteps // order), latents, family))
        return tensors

    # One run per pipeline at a time: the run's pipeline shares the loaded model's modules, and
    # LoRA adapters are set on them between runs.
    with model.run_lock, torch.inference_mode():
        started = time.perf_counter()
        pipeline = _run_pipeline(model, pipeline_class, first.sampler)
        # Seeded on the model's device so a seed reproduces the same image on the same hardware.
        generators = [torch.Generator(device=model.device).manual_seed(r.seed) for r in requests]
        output = pipeline(
            **_prompt_inputs(pipeline, family, requests),
            **inputs,
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

    images: list[Image.Image] = output.images
    if mode is GenerationMode.INPAINTING:
        images = [
            Image.composite(generated, init, mask)
            for generated, init, mask in zip(images, init_images, mask_images, strict=True)
        ]
    return [
        TextToImageResult(image=image, seed=request.seed, gpu_seconds=gpu_seconds, text_chunks=chunk)
        for request, image, chunk in zip(requests, images, chunks, strict=True)
    ]


def _fit(image: Image.Image, width: int, height: int, colour_mode: str) -> Image.Image:
    """`image` in `colour_mode` at the output's size."""
    image = image.convert(colour_mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _run_pipeline(model: LoadedModel, pipeline_class: Any, sampler: str) -> Any:
    """The pipeline for runs of `pipeline_class` with `sampler` on `model`, built on the first.
    Call it under the model's `run_lock`.

    Building one cost about 2 ms of CPU a run (`from_pipe` inspects every component's signature,
    `from_config` validates the scheduler's), on the path of every job. Reusing it is how
    diffusers' pipelines are meant to be called: each call sets its scheduler's timesteps, which
    resets every scheduler's per-run state (its step index, a multistep solver's history), also
    after a run stopped midway."""
    key = (pipeline_class, Sampler(sampler))
    pipeline = model.run_pipelines.get(key)
    if pipeline is None:
        scheduler = scheduler_for(sampler, model.info.family, model.pipeline.scheduler.config)
        # The auto classes' from_pipe takes the modules as they are; a pipeline class's own
        # from_pipe would cast them all to one dtype, modules a model keeps in float32 included.
        pipeline = pipeline_class.from_pipe(model.pipeline, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        model.run_pipelines[key] = pipeline
    return pipeline


def _is_inpainting_model(pipeline: Any) -> bool:
    """An inpainting model's UNet takes the noisy latents, the mask and the masked image's
    latents (4 + 1 + 4 channels for SD); it cannot denoise plain latents."""
    unet = getattr(pipeline, "unet", None)
    if unet is None:
        return False
    return bool(unet.config.in_channels != unet.config.out_channels)


def _prompt_inputs(pipeline: Any, family: str, requests: Sequence[TextToImageRequest]) -> dict[str, Any]:
    """The prompts as the pipeline takes them: compel's weighted embeddings for the SD family,
    each prompt chunked past CLIP's 77 tokens and every negative padded to the same length."""
    try:
        return _prompt_embeddings(pipeline, family, requests)
    except RecursionError:
        # The requests' own check parsed them, but on a shallower stack than this thread's.
        raise PromptSyntaxError("prompt", "parentheses nested too deeply") from None


def conditioning_length(model: LoadedModel, request: TextToImageRequest) -> int:
    """The tokens `request`'s prompt conditioning takes on its own: its prompt and negative
    prompt in 77-token chunks as compel makes them, padded to each other.

    One call pads every member to its longest, and a padded conditioning draws another image:
    the worker runs only members of one length together, so an image never depends on what it
    was batched with. Flux's text goes to its pipeline as text, padded to a fixed length: 0.
    """
    family = model.info.family
    if family == ModelFamily.FLUX:
        return 0
    with model.run_lock, torch.inference_mode():
        inputs = _prompt_inputs(model.pipeline, family, [request])
    return int(inputs["prompt_embeds"].shape[1])


def _reading_prompts_once(*weightings: Any) -> None:
    """Have compel's weighting objects read prompts through `parse_prompt` (an instance
    attribute shadows the class's parse for these objects only)."""
    for weighting in weightings:
        weighting.parse_prompt_string = parse_prompt


def _prompt_embeddings(pipeline: Any, family: str, requests: Sequence[TextToImageRequest]) -> dict[str, Any]:
    prompts = [r.prompt for r in requests]
    negative_prompts = [r.negative_prompt for r in requests]
    if family == ModelFamily.SD15:
        weighting = CompelForSD(pipeline)
        _reading_prompts_once(weighting.compel)
        conditioning = weighting(prompts, negative_prompts)
        return {
            "prompt_embeds": conditioning.embeds,
            "negative_prompt_embeds": conditioning.negative_embeds,
        }
    if family == ModelFamily.SDXL:
        # Both text encoders, and the second one's pooled embedding, which SDXL also conditions on.
        weighting_xl = CompelForSDXL(pipeline)
        _reading_prompts_once(weighting_xl.compel_1, weighting_xl.compel_2)
        conditioning = weighting_xl(prompts, negative_prompt=negative_prompts)
        return {
            "prompt_embeds": conditioning.embeds,
            "negative_prompt_embeds": conditioning.negative_embeds,
            "pooled_prompt_embeds": conditioning.pooled_embeds,
            "negative_pooled_prompt_embeds": conditioning.negative_pooled_embeds,
        }
    if family == ModelFamily.FLUX:
        # FLUX.1-dev is guidance-distilled: `guidance_scale` conditions the transformer (one pass
        # per step) instead of classifier-free guidance, so there is no negative branch and no
        # negative prompt (that would take FluxPipeline's `true_cfg_scale`, a second pass).
        return {"prompt": prompts}
    return {"prompt": prompts, "negative_prompt": negative_prompts}
