"""GPU throughput of the worker's text-to-image path, against a bare diffusers call, in one run.

GPU run (SD1.5 architecture, random weights, 512x512, 30 steps, fp16, median of 5 after warm-up),
from the repository root with a CUDA build of torch and the project's dependencies installed:

    python bench/gpu_throughput.py
    python bench/gpu_throughput.py --no-compile     # without the torch.compile rows (minutes to compile)
    python bench/gpu_throughput.py --compile-modes default,reduce-overhead
    python bench/gpu_throughput.py --dtype bf16     # section 2 in bf16; the worker path stays fp16

CPU smoke run (tiny configs, 64x64, 4 steps, fp32, median of 3; the default where CUDA is absent):

    .venv/bin/python bench/gpu_throughput.py --tiny

Nothing is downloaded. The script builds a pipeline with the real Stable Diffusion 1.5 architecture
(the UNet, VAE and scheduler configs of runwayml/stable-diffusion-v1-5 and the text config of
openai/clip-vit-large-patch14, written below as dicts) and random weights, with a byte-level CLIP
tokenizer written locally, and saves it once in diffusers format under `--model-dir` (default
/tmp/pingvas-bench-models). The worker path then loads it through `ModelCatalog` + `ModelRegistry`
exactly as a real checkpoint, so its device, dtype, channels-last and attention choices are the
registry's own (fp16 on CUDA whatever `--dtype` says: the registry has no dtype setting, so section 1
runs the bare call in the registry's dtype too, and `--dtype` applies to section 2). Speed does not
depend on the weights' values, only on the shapes.

It reports, measured side by side in the same process and run, median of `--runs` after warm-up:

1. images/s and it/s of the worker path (`run_text_to_image_batch` on a registry-loaded model, as
   the worker calls it, with a latent preview JPEG per member and step, encoded on a second
   thread as the progress relays do, and each call's PNGs encoded while the next call runs, as
   `Worker._store_results` does) against a bare diffusers call on the same model directory with
   diffusers' defaults, at batch 1 and at batch 4 (`--batches`; 4 is the worker's default max
   batch on CUDA: four jobs with their own prompts and seeds; the bare call uses
   `num_images_per_prompt`), runs alternating between the two at each batch size. Each run makes
   `--calls` calls back to back (3). "images/s" divides a run's images by its whole time (the
   worker's run ends once its last PNG is encoded, so it pays for one PNG encode the GPU no
   longer overlaps); "steady" is what a busy worker sustains: the batch over the median time
   from one call's images being ready (bare: the call returned; worker: its PNGs encoded) to the
   next's. The target's worker/bare ratio is judged on "steady", and both ratios are printed;
2. one row per setting, each changed alone from the registry's configuration (SDPA attention,
   channels-last UNet on CUDA, eager, AutoencoderKL), on a bare pipeline at batch 1: classic
   `AttnProcessor` instead of `AttnProcessor2_0`, channels-last toggled, `AutoencoderTiny` (random
   weights, default config) instead of AutoencoderKL, and `torch.compile(unet, mode)` for each of
   `--compile-modes` (CUDA only unless `--compile-on-cpu`), followed by the worker path at batch 1
   and 4 through a registry compiling its UNet the same way (`PINGVAS_COMPILE_MODE`; eager by
   default);
3. the share of the GPU's dense fp16/bf16 peak reached, counting 1.36 TFLOP per classifier-free-
   guidance step of SD1.5 at 512x512, scaled by pixels and batch;
4. the targets: worker/bare >= 1.0 (steady images/s) and >= 120 it/s at batch 1 on an H100 (best
   published 104.6);
5. one pair of rows (worker path, bare call) per architecture (SD1.5, SDXL, Flux) and mode, with
   and without a LoRA, at batch 1: the worker applies the LoRA through `ModelRegistry.apply_loras`
   (a PEFT adapter), the bare call through `load_lora_weights` + `set_adapters`; printed with each
   row's worker/bare ratio and the LoRA's it/s cost against the same path without it (target: at
   most 10 %). The models are those `pingvas models create-tiny` builds (tiny-sd, tiny-sdxl,
   tiny-flux and their LoRAs, built under `--model-dir`/tiny), or the directories of the same
   names in `--family-models`. Each in txt2img and in img2img (a flat grey init image at strength
   0.6, so both paths run 60 % of the steps; the bare call is `AutoPipelineForImage2Image` on the
   same modules). Flux runs with its distilled guidance (3.5) and no negative prompt.

Set PYTHONUNBUFFERED=1 to see the progress lines as they happen when the output is piped.

"loop it/s" is denoising steps per second once the loop runs (what diffusers' progress bar and the
published figures show), timed by CUDA events (or the clock on CPU) recorded at each step's end;
"call it/s" divides the steps by the whole call (text encoding, VAE decode and, for the worker,
PNG encoding included). The bare call carries a step callback that only records that event.
It is not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/gpu_throughput.py` without the package installed
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # Before the import: it warns at import time.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoencoderTiny,
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from gpu_inference.inference import (  # noqa: E402
    BatchStep,
    StepUpdate,
    TextToImageRequest,
    TextToImageResult,
    configure_cpu_threads,
    run_text_to_image_batch,
)
from gpu_inference.registry import LoadedModel, ModelRegistry  # noqa: E402
from gpu_inference.tiny import byte_to_unicode, create_tiny_models  # noqa: E402
from services.generation.catalog import ModelCatalog, ModelFolder  # noqa: E402
from services.generation.modes import LoraWeight  # noqa: E402

# --- Stable Diffusion 1.5, as published (runwayml/stable-diffusion-v1-5, diffusers format) ---------

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

CLIP_VIT_L14_TEXT: dict[str, Any] = {  # openai/clip-vit-large-patch14, text_config
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# SD1.5's training noise schedule. Euler runs exactly `steps` UNet evaluations (PNDM adds one).
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}

# --- Tiny stand-ins for the CPU smoke run (the layout of gpu_inference/tiny.py) ----------------------

TINY_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_TEXT: dict[str, Any] = {
    **CLIP_VIT_L14_TEXT,
    "hidden_size": 32,
    "intermediate_size": 128,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

# --- Figures the results are held against ------------------------------------------------------------

SD15_TFLOP_PER_CFG_STEP = 1.36  # One denoising step at 512x512 with classifier-free guidance (2 UNet passes).
TARGET_WORKER_OVER_BARE = 1.0
TARGET_ITS_H100 = 120.0
BEST_PUBLISHED_ITS_H100 = 104.6

# Dense fp16/bf16 tensor-core peaks, TFLOP/s; the first name fragment found in the device name wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)

NAME_WIDTH = 50  # The rows' name column.
PROMPT = "a red fox standing in fresh snow, golden hour, highly detailed"
NEGATIVE_PROMPT = ""  # What the worker sends when the user gives none.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- The model on disk ------------------------------------------------------------------------------


def write_clip_tokenizer(tokenizer_dir: Path, vocab_size: int, max_length: int) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer padded to `vocab_size`, with CLIP's special-token ids.

    The 256 byte symbols, the same with the end-of-word marker, filler tokens up to the size, then
    `<|startoftext|>` and `<|endoftext|>` as the last two ids (49406 and 49407 in CLIP). With no
    merges every word tokenizes to its bytes: enough for random weights.
    """
    symbols = list(byte_to_unicode().values())
    tokens = [*symbols, *(f"{symbol}</w>" for symbol in symbols)]
    tokens += [f"<|unused{index}|>" for index in range(vocab_size - 2 - len(tokens))]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=max_length)
    return tokenizer


def build_model(target: Path, tiny: bool) -> Path:
    """Build the random-weight SD1.5-architecture pipeline and save it at `target`, once.

    Written into a dot-named staging folder (which the catalog skips) and renamed into place, so
    an interrupted build never leaves a half model that looks complete.
    """
    if (target / "model_index.json").is_file():
        log(f"using the model saved at {target}")
        return target
    if target.exists():
        log(f"removing the incomplete model at {target}")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    unet_config, vae_config, text_config = (
        (TINY_UNET, TINY_VAE, TINY_TEXT) if tiny else (SD15_UNET, SD15_VAE, CLIP_VIT_L14_TEXT)
    )
    log(f"building {target.name} with random weights (once; the full size takes a minute on few cores)")
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = write_clip_tokenizer(
            staging / "tokenizer", text_config["vocab_size"], text_config["max_position_embeddings"]
        )
        torch.manual_seed(0)
        pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
            vae=AutoencoderKL(**vae_config),  # type: ignore[no-untyped-call]
            text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**unet_config),  # type: ignore[no-untyped-call]
            scheduler=EulerDiscreteScheduler(**SD15_SCHEDULER),  # type: ignore[no-untyped-call]
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        # float32, no variant: what a downloaded SD1.5 checkpoint's main weights are.
        pipeline.save_pretrained(staging, safe_serialization=True)
        del pipeline
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built and saved in {time.perf_counter() - started:.1f}s")
    return target


# --- Timing -----------------------------------------------------------------------------------------


class StepClock:
    """Marks each denoising step's end without synchronizing: a CUDA event on the GPU, the clock on
    the CPU (where every op is synchronous anyway). Each pipeline call's marks are kept apart, so
    the time between calls never counts as a step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.calls: list[list[Any]] = []
        # When each call's images were ready (perf_counter): the bare call's return; for the
        # worker path, the last of its PNGs encoded.
        self.ready: list[float] = []

    def reset(self) -> None:
        self.calls = []
        self.ready = []

    def next_call(self) -> None:
        self.calls.append([])

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            self.calls[-1].append(event)
        else:
            self.calls[-1].append(time.perf_counter())

    def seconds_per_step(self) -> float | None:
        """Steady-state seconds per step, from each call's first step's end to its last's; call
        after a sync."""
        span, steps = 0.0, 0
        for marks in self.calls:
            if len(marks) < 2:
                continue
            span += marks[0].elapsed_time(marks[-1]) / 1000.0 if self.cuda else marks[-1] - marks[0]
            steps += len(marks) - 1
        return span / steps if steps else None

    def seconds_per_call(self) -> float | None:
        """Steady-state seconds from one call's images to the next's: what a busy worker
        sustains, without the first call's start or the last one's drain."""
        if len(self.ready) < 2:
            return None
        return (self.ready[-1] - self.ready[0]) / (len(self.ready) - 1)


@dataclass
class Sample:
    wall: float
    step: float | None
    period: float | None  # Steady-state seconds per call (StepClock.seconds_per_call).
    steps: int
    peak_bytes: int | None


@dataclass
class Row:
    name: str
    batch: int
    calls: int  # Pipeline calls back to back in each run.
    samples: list[Sample]
    warmup_walls: list[float]
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(sample.wall for sample in self.samples)

    @property
    def steps(self) -> int:
        return self.samples[-1].steps

    @property
    def images_per_s(self) -> float:
        return self.batch * self.calls / self.wall

    @property
    def steady_images_per_s(self) -> float | None:
        periods = [sample.period for sample in self.samples if sample.period is not None]
        return self.batch / statistics.median(periods) if periods else None

    @property
    def call_its(self) -> float:
        return self.steps / self.wall

    @property
    def loop_its(self) -> float | None:
        steps = [sample.step for sample in self.samples if sample.step is not None]
        return 1.0 / statistics.median(steps) if steps else None

    @property
    def peak_mib(self) -> float | None:
        peaks = [sample.peak_bytes for sample in self.samples if sample.peak_bytes is not None]
        return max(peaks) / 2**20 if peaks else None


# A run takes the step clock and a seed and returns how many denoising steps it made.
Run = Callable[[StepClock, int], int]


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.clock = StepClock(device)
        self.peak_tflops: float | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def one(self, run: Run, seed: int) -> Sample:
        gc.collect()
        self.clock.reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        started = time.perf_counter()
        steps = run(self.clock, seed)
        self.sync()
        wall = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return Sample(
            wall=wall,
            step=self.clock.seconds_per_step(),
            period=self.clock.seconds_per_call(),
            steps=steps,
            peak_bytes=peak,
        )

    def measure(self, runs: dict[str, tuple[Run, int]], *, warmup: int | None = None) -> list[Row]:
        """Warm each run up, then time them, alternating, `--runs` times each."""
        warmup = self.args.warmup if warmup is None else warmup
        warmup_walls: dict[str, list[float]] = {name: [] for name in runs}
        for name, (run, _batch) in runs.items():
            for index in range(warmup):
                log(f"warm-up {name} ({index + 1}/{warmup})")
                warmup_walls[name].append(self.one(run, 1000 + index).wall)
        log(f"timing {' / '.join(runs)}, {self.args.runs} runs each")
        samples: dict[str, list[Sample]] = {name: [] for name in runs}
        for index in range(self.args.runs):
            for name, (run, _batch) in runs.items():
                samples[name].append(self.one(run, index))
        return [
            Row(name, batch, self.args.calls, samples[name], warmup_walls[name])
            for name, (_run, batch) in runs.items()
        ]

    def tflops(self, row: Row) -> float | None:
        loop_its = row.loop_its
        if loop_its is None:
            return None
        pixels = self.args.size * self.args.size / (512 * 512)
        guidance = 1.0 if self.args.guidance > 1.0 else 0.5  # No negative branch without CFG.
        return float(SD15_TFLOP_PER_CFG_STEP * pixels * row.batch * guidance * loop_its)

    def print_header(self) -> None:
        print(
            f"  {'':{NAME_WIDTH}} {'batch':>5} {'images/s':>9} {'steady':>9} {'call it/s':>9} {'loop it/s':>9}"
            f" {'TFLOP/s':>8} {'%peak':>6} {'peak MiB':>9}",
            flush=True,
        )

    def print_row(self, row: Row, baseline: Row | None = None) -> None:
        loop_its = row.loop_its
        tflops = self.tflops(row)
        share = (
            f"{100 * tflops / self.peak_tflops:5.1f}%"
            if tflops is not None and self.peak_tflops is not None
            else "   n/a"
        )
        peak = f"{row.peak_mib:9.0f}" if row.peak_mib is not None else f"{'-':>9}"
        steady = row.steady_images_per_s
        delta = ""
        if baseline is not None and baseline is not row and loop_its and baseline.loop_its:
            delta = f"  {100 * (loop_its / baseline.loop_its - 1):+6.1f}% it/s"
        print(
            f"  {row.name:{NAME_WIDTH}} {row.batch:5d} {row.images_per_s:9.2f}"
            f" {steady if steady is not None else float('nan'):9.2f} {row.call_its:9.2f}"
            f" {loop_its if loop_its is not None else float('nan'):9.2f}"
            f" {tflops if tflops is not None else float('nan'):8.2f} {share} {peak}{delta}"
            f"{'  ' + row.note if row.note else ''}",
            flush=True,
        )

    def print_skipped(self, name: str, why: str) -> None:
        print(f"  {name:{NAME_WIDTH}} {why}", flush=True)


# --- The two paths ----------------------------------------------------------------------------------


def preview_jpeg(update: StepUpdate) -> bytes:
    return update.preview_jpeg


def worker_run(
    model: LoadedModel,
    args: argparse.Namespace,
    batch: int,
    guidance: float | None = None,
    *,
    init_image: Image.Image | None = None,
    strength: float | None = None,
) -> Run:
    """`run_text_to_image_batch` as the worker calls it, `--calls` times back to back, `batch` jobs
    with their own prompts and seeds each time. As in the worker, the step callback starts each
    member's preview and a second thread encodes the JPEGs meanwhile (the progress relays), and a
    call's PNGs are encoded in parallel while the next call runs (`Worker._store_results`); the
    run ends when the last call's previews and PNGs are encoded."""

    def run(clock: StepClock, seed: int) -> int:
        steps = 0
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="previews") as preview_encoder,
            ThreadPoolExecutor(max_workers=batch, thread_name_prefix="png") as png_encoder,
        ):
            encoding: list[Future[bytes]] = []
            png_calls: list[list[Future[bytes]]] = []
            encoded_at: dict[int, float] = {}

            def note_encoded(future: Future[bytes]) -> None:
                encoded_at[id(future)] = time.perf_counter()

            def on_step(batch_step: BatchStep) -> None:
                nonlocal steps
                steps += 1
                for index in range(batch):
                    update = batch_step.update_for(index)
                    encoding.append(preview_encoder.submit(preview_jpeg, update))
                clock.mark()

            for call in range(args.calls):
                requests = [
                    TextToImageRequest(
                        prompt=f"{PROMPT}, variation {index}",
                        negative_prompt=NEGATIVE_PROMPT,
                        width=args.size,
                        height=args.size,
                        steps=args.steps,
                        seed=(seed * args.calls + call) * batch + index,
                        guidance=args.guidance if guidance is None else guidance,
                        init_image=init_image,
                        strength=strength,
                    )
                    for index in range(batch)
                ]
                clock.next_call()
                results = run_text_to_image_batch(model, requests, on_step)
                pngs = [png_encoder.submit(png_bytes, result) for result in results]
                for png in pngs:
                    png.add_done_callback(note_encoded)
                png_calls.append(pngs)
                encoding += pngs
            for encoded in encoding:
                encoded.result()
        clock.ready = [max(encoded_at[id(png)] for png in pngs) for pngs in png_calls]
        return steps

    return run


def png_bytes(result: TextToImageResult) -> bytes:
    return result.png


def bare_run(
    pipeline: Any,
    device: torch.device,
    args: argparse.Namespace,
    batch: int,
    guidance: float | None = None,
    *,
    flux: bool = False,
    init_image: Image.Image | None = None,
    strength: float | None = None,
) -> Run:
    """A plain diffusers call, `--calls` times back to back; its step callback only records the
    step clock's mark. Flux takes no negative prompt. With an
    `init_image`, `pipeline` is an image-to-image one and runs at `strength`."""
    negative = {} if flux else {"negative_prompt": NEGATIVE_PROMPT}
    inputs: dict[str, Any] = {"width": args.size, "height": args.size}
    if init_image is not None:
        inputs = {"image": init_image, "strength": strength}
        if flux:  # Its img2img works at 1024x1024 unless given the size.
            inputs |= {"width": args.size, "height": args.size}

    def run(clock: StepClock, seed: int) -> int:
        steps = 0

        def on_step_end(_pipe: Any, _index: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
            nonlocal steps
            steps += 1
            clock.mark()
            return {}

        for call in range(args.calls):
            clock.next_call()
            with torch.inference_mode():
                pipeline(
                    prompt=PROMPT,
                    **negative,
                    **inputs,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance if guidance is None else guidance,
                    num_images_per_prompt=batch,
                    generator=torch.Generator(device=device).manual_seed(seed * args.calls + call),
                    callback_on_step_end=on_step_end,
                )
            clock.ready.append(time.perf_counter())  # PIL images: the call synchronized to make them.
        return steps

    return run


def set_attention(pipeline: Any, processor_class: type) -> None:
    for component in (pipeline.unet, pipeline.vae):
        if hasattr(component, "set_attn_processor"):
            component.set_attn_processor(processor_class())


@contextmanager
def classic_attention(pipeline: Any) -> Iterator[None]:
    set_attention(pipeline, AttnProcessor)
    try:
        yield
    finally:
        set_attention(pipeline, AttnProcessor2_0)


@contextmanager
def vae_swapped(pipeline: Any, vae: Any) -> Iterator[None]:
    full_vae = pipeline.vae
    pipeline.vae = vae
    try:
        yield
    finally:
        pipeline.vae = full_vae


@contextmanager
def channels_last(pipeline: Any, on: bool) -> Iterator[None]:
    unet = pipeline.unet
    unet.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    try:
        yield
    finally:
        unet.to(memory_format=torch.contiguous_format if on else torch.channels_last)


def detect_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, f"{override:.0f} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_TFLOPS:
        if fragment in name:
            return tflops, f"{tflops:.0f} TFLOP/s dense fp16/bf16 ({name})"
    return None, f"unknown for {name!r}; pass --peak-tflops"


def measure_settings(
    bench: Bench,
    bare: Any,
    run_1: Run,
    baseline: Row,
    registry_channels_last: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> list[Row]:
    """Section 2's rows: one setting changed at a time from the registry's configuration."""
    tiny_vae: Any = AutoencoderTiny()  # type: ignore[no-untyped-call]
    settings = {
        "classic attention (AttnProcessor)": classic_attention(bare),
        f"channels_last {'off' if registry_channels_last else 'on'}": channels_last(
            bare, not registry_channels_last
        ),
        "AutoencoderTiny instead of AutoencoderKL": vae_swapped(
            bare, tiny_vae.to(device=device, dtype=dtype)
        ),
    }
    rows: list[Row] = []
    for name, setting in settings.items():
        with setting:
            (row,) = bench.measure({name: (run_1, 1)})
        bench.print_row(row, baseline)
        rows.append(row)
    return rows


def measure_compiled(
    bench: Bench,
    bare: Any,
    run_1: Run,
    baseline: Row,
    mode: str,
    args: argparse.Namespace,
    model_name: str,
    batches: list[int],
) -> list[Row]:
    """The bare call with `torch.compile(unet, mode)`, then the worker path on a second registry
    that compiles its UNet the same way (`ModelRegistry(compile_mode=mode)`, the worker's
    PINGVAS_COMPILE_MODE) at batch 1 and 4. The first runs of each shape compile, so three
    warm-up runs each. A compiler failure is printed and the benchmark goes on."""
    rows: list[Row] = []
    name = compiled_bare_name(mode)
    eager_unet = bare.unet
    bare.unet = torch.compile(eager_unet, mode=mode)
    try:
        (row,) = bench.measure({name: (run_1, 1)}, warmup=max(3, bench.args.warmup))
        row.note = warmup_note(row)
        bench.print_row(row, baseline)
        rows.append(row)
    except Exception as error:  # A compiler failure is a finding, not a reason to lose the rest.
        bench.print_skipped(name, f"failed: {type(error).__name__}: {error}"[:200])
    finally:
        bare.unet = eager_unet
    name = compiled_worker_name(mode)
    registry = ModelRegistry(
        ModelCatalog(ModelFolder(args.model_dir)), device=str(bench.device), compile_mode=mode
    )
    try:
        model = asyncio.run(registry.acquire(model_name))
        for batch in batches:
            (row,) = bench.measure(
                {name: (worker_run(model, args, batch), batch)}, warmup=max(3, args.warmup)
            )
            row.note = warmup_note(row)
            bench.print_row(row, baseline if batch == 1 else None)
            rows.append(row)
    except Exception as error:
        bench.print_skipped(name, f"failed: {type(error).__name__}: {error}"[:200])
    finally:
        del registry
        gc.collect()
        torch._dynamo.reset()
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def warmup_note(row: Row) -> str:
    """The warm-up runs' walls: with torch.compile, the first runs of each shape compile."""
    return "warm-up " + " / ".join(f"{wall:.1f}s" for wall in row.warmup_walls)


def steady_ratio(worker_row: Row, bare_row: Row) -> float:
    worker, bare = worker_row.steady_images_per_s, bare_row.steady_images_per_s
    return worker / bare if worker is not None and bare else float("nan")


def compiled_bare_name(mode: str) -> str:
    return f'torch.compile(unet, "{mode}")'


def compiled_worker_name(mode: str) -> str:
    return f'worker path, ModelRegistry(compile_mode="{mode}")'


# Section 5's models by architecture: (model, its LoRA, guidance). Flux-dev's distilled guidance
# is conditioning, not classifier-free guidance; 3.5 is its usual value.
ARCHITECTURES = {
    "SD1.5": ("tiny-sd", "tiny-sd-lora", None),
    "SDXL": ("tiny-sdxl", "tiny-sdxl-lora", None),
    "Flux": ("tiny-flux", "tiny-flux-lora", 3.5),
}
TARGET_LORA_COST = 0.10  # A LoRA may cost at most 10 % it/s.
IMG2IMG_STRENGTH = 0.6


def measure_pair(
    bench: Bench,
    args: argparse.Namespace,
    device: torch.device,
    label: str,
    paths: tuple[LoadedModel, Any, float | None, bool, dict[str, Any]],
    *,
    with_lora: bool,
) -> tuple[Row, Row]:
    """The worker path and the bare call of one architecture and mode, side by side: `paths` is
    the registry's model, the bare pipeline, the guidance, whether it is Flux (no negative
    prompt), and the img2img inputs ({} for txt2img)."""
    model, bare, guidance, flux, start = paths
    suffix, worker_name, bare_name = (
        (" + LoRA", "worker (apply_loras)", "bare (load_lora_weights)")
        if with_lora
        else ("", "worker", "bare")
    )
    worker_row, bare_row = bench.measure(
        {
            f"{label}{suffix}: {worker_name}": (worker_run(model, args, 1, guidance, **start), 1),
            f"{label}{suffix}: {bare_name}": (
                bare_run(bare, device, args, 1, guidance, flux=flux, **start),
                1,
            ),
        }
    )
    return worker_row, bare_row


def measure_architectures(bench: Bench, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Section 5: worker path and bare call per architecture, without and with its LoRA."""
    models_dir = args.family_models or args.model_dir / "tiny"
    if args.family_models is None:
        log(f"building the tiny models of every architecture under {models_dir} (once)")
        create_tiny_models(models_dir)
    registry = ModelRegistry(ModelCatalog(ModelFolder(models_dir)), device=str(device))
    print(
        "\n5. architectures and modes (txt2img, img2img at strength 0.6), worker path vs bare"
        f" call, batch 1, {args.size}x{args.size}, {args.steps} steps, models from {models_dir}",
        flush=True,
    )
    bench.print_header()
    rows: list[Row] = []
    summary = []
    # img2img starts from a flat grey picture at strength 0.6: both paths run 60 % of the steps.
    init_image = Image.new("RGB", (args.size, args.size), (128, 128, 128))
    for architecture, (model_name, lora_name, guidance) in ARCHITECTURES.items():
        model = asyncio.run(registry.acquire(model_name))
        flux = model.info.family == "flux"
        text_to_image: Any = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            model.info.path, dtype=registry.dtype
        ).to(device)
        text_to_image.set_progress_bar_config(disable=True)
        image_to_image: Any = AutoPipelineForImage2Image.from_pipe(text_to_image)
        image_to_image.set_progress_bar_config(disable=True)
        for mode, bare, start in (
            ("txt2img", text_to_image, {}),
            ("img2img", image_to_image, {"init_image": init_image, "strength": IMG2IMG_STRENGTH}),
        ):
            label = f"{architecture} {mode}"
            paths = (model, bare, guidance, flux, start)
            worker_plain, bare_plain = measure_pair(bench, args, device, label, paths, with_lora=False)
            asyncio.run(registry.apply_loras(model, [LoraWeight(lora_name, 0.8)]))
            bare.load_lora_weights(str(models_dir / lora_name), adapter_name="bench")
            bare.set_adapters(["bench"], adapter_weights=[0.8])
            worker_lora, bare_lora = measure_pair(bench, args, device, label, paths, with_lora=True)
            asyncio.run(registry.apply_loras(model, []))
            bare.delete_adapters("bench")
            for row in (worker_plain, bare_plain):
                bench.print_row(row)
            bench.print_row(worker_lora, worker_plain)
            bench.print_row(bare_lora, bare_plain)
            rows += [worker_plain, bare_plain, worker_lora, bare_lora]
            summary.append((label, worker_plain, bare_plain, worker_lora, bare_lora))
        del text_to_image, image_to_image
        gc.collect()
    print(f"  pipeline loads {registry.metrics.loads}, adapter loads {registry.metrics.adapter_loads}")
    for label, worker_plain, bare_plain, worker_lora, bare_lora in summary:
        cost = 1 - (worker_lora.loop_its or 0.0) / (worker_plain.loop_its or float("nan"))
        print(
            f"  {label}: worker/bare steady images/s {steady_ratio(worker_plain, bare_plain):.3f},"
            f" with LoRA {steady_ratio(worker_lora, bare_lora):.3f} (target >= {TARGET_WORKER_OVER_BARE:.1f});"
            f" LoRA cost {100 * cost:+.1f}% loop it/s (target <= {100 * TARGET_LORA_COST:.0f}%)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size_group = parser.add_mutually_exclusive_group()
    size_group.add_argument("--tiny", action="store_true", help="tiny configs (the default without CUDA)")
    size_group.add_argument("--full", action="store_true", help="the real SD1.5 sizes even without CUDA")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pingvas-bench-models",
        help="models folder the random-weight model is saved in and loaded from",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="section 2's dtype (default: fp16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (512; tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; tiny: 4)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (5; tiny: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per row first")
    parser.add_argument(
        "--calls", type=int, default=3, help="pipeline calls back to back in each run (the steady state)"
    )
    parser.add_argument("--no-settings", action="store_true", help="skip section 2's one-setting rows")
    parser.add_argument(
        "--batches", default="1,4", help="batch sizes of section 1 and the compiled worker rows"
    )
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the worker's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--compile-modes",
        default="max-autotune-no-cudagraphs",
        help="comma-separated torch.compile modes, a pair of rows each (bare, worker path)",
    )
    parser.add_argument("--compile-on-cpu", action="store_true", help="smoke-test the compile rows on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense fp16 peak")
    parser.add_argument(
        "--no-architectures", action="store_true", help="skip section 5's rows per architecture and LoRA"
    )
    parser.add_argument(
        "--family-models",
        type=Path,
        default=None,
        help="section 5's models folder (tiny-sd, tiny-sdxl, tiny-flux and their -lora directories);"
        " default: the tiny ones, built under --model-dir/tiny",
    )
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    tiny = args.tiny or (not args.full and not on_cuda)
    args.size = args.size or (64 if tiny else 512)
    args.steps = args.steps or (4 if tiny else 30)
    args.runs = args.runs or (3 if tiny else 5)
    dtype = DTYPES[args.dtype or ("fp16" if on_cuda else "fp32")]

    # Random weights can overflow to NaN; the image conversion then warns on every call.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    threads = configure_cpu_threads(device, args.threads)
    model_name = "sd15-random-tiny" if tiny else "sd15-random"
    build_model(args.model_dir / model_name, tiny)

    bench = Bench(args, device)
    bench.peak_tflops, peak_label = detect_peak(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if on_cuda else f"CPU, {threads} torch threads"

    # The worker path: catalog + registry, exactly as the worker loads a model.
    log("loading through ModelCatalog + ModelRegistry")
    registry = ModelRegistry(ModelCatalog(ModelFolder(args.model_dir)), device=str(device))
    model = asyncio.run(registry.acquire(model_name))
    # The bare path: diffusers' defaults on the same directory and dtype.
    log("loading the bare pipeline")
    bare: Any = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
        model.info.path, dtype=registry.dtype
    ).to(device)
    bare.set_progress_bar_config(disable=True)

    dtype_name = {value: key for key, value in DTYPES.items()}
    print(
        f"gpu throughput: {model_name} ({'tiny configs' if tiny else 'SD1.5 architecture'}, random weights)"
        f" on {device_name}\n"
        f"  {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}, median of {args.runs} runs"
        f" of {args.calls} calls back to back, after {args.warmup} warm-up; torch {torch.__version__}",
        flush=True,
    )

    # 1. Worker path against the bare call, same model, dtype and settings, runs alternating.
    print(
        f"\n1. worker path vs bare diffusers call ({dtype_name[registry.dtype]}, the registry's dtype)"
        + ("; peak MiB counts both resident pipelines" if on_cuda else ""),
        flush=True,
    )
    bench.print_header()
    batches = [int(batch) for batch in args.batches.split(",")]
    ratios = {}
    for batch in batches:
        worker_row, bare_row = bench.measure(
            {
                "worker: run_text_to_image_batch (registry model)": (worker_run(model, args, batch), batch),
                "bare pipeline call (diffusers defaults)": (bare_run(bare, device, args, batch), batch),
            }
        )
        bench.print_row(worker_row)
        bench.print_row(bare_row)
        ratios[batch] = (worker_row, bare_row)
    for batch, (worker_row, bare_row) in ratios.items():
        ratio_images = worker_row.images_per_s / bare_row.images_per_s
        ratio_loop = (worker_row.loop_its or 0.0) / bare_row.loop_its if bare_row.loop_its else float("nan")
        print(
            f"  ratio worker/bare at batch {batch}: steady images/s {steady_ratio(worker_row, bare_row):.3f},"
            f" images/s {ratio_images:.3f}, loop it/s {ratio_loop:.3f}   (target >= {TARGET_WORKER_OVER_BARE:.1f})",
            flush=True,
        )
    worker, bare_1 = ratios[batches[0]]
    for batch in batches[1:]:
        print(
            f"  batching: worker images/s at batch {batch} / batch {batches[0]} ="
            f" {ratios[batch][0].images_per_s / worker.images_per_s:.2f}x",
            flush=True,
        )
    worker_rows = [worker_row for worker_row, _ in ratios.values()]

    # 2. One setting at a time, from the registry's configuration, on the bare pipeline. The
    # worker's model stays loaded for the compiled worker-path rows.
    if bare.unet.dtype != dtype:
        bare.to(dtype=dtype)
    set_attention(bare, AttnProcessor2_0)
    registry_channels_last = on_cuda  # What ModelRegistry._load_pipeline does.
    bare.unet.to(memory_format=torch.channels_last if registry_channels_last else torch.contiguous_format)
    run_1 = bare_run(bare, device, args, 1)
    print(
        f"\n2. settings, each alone from the registry's (SDPA, channels_last "
        f"{'on' if registry_channels_last else 'off'}, eager, AutoencoderKL); bare call, batch 1, "
        f"{dtype_name[dtype]}",
        flush=True,
    )
    bench.print_header()
    (baseline,) = bench.measure({"registry configuration (AttnProcessor2_0)": (run_1, 1)})
    bench.print_row(baseline)
    rows = [*(row for pair in ratios.values() for row in pair), baseline]
    if args.no_settings:
        bench.print_skipped("the one-setting rows", "skipped (--no-settings)")
    else:
        rows += measure_settings(bench, bare, run_1, baseline, registry_channels_last, device, dtype)

    if args.no_compile:
        bench.print_skipped("torch.compile(unet)", "skipped (--no-compile)")
    elif not on_cuda and not args.compile_on_cpu:
        bench.print_skipped("torch.compile(unet)", "skipped on CPU (--compile-on-cpu to smoke-test it)")
    else:
        for mode in args.compile_modes.split(","):
            try:
                rows += measure_compiled(bench, bare, run_1, baseline, mode, args, model_name, batches)
            except KeyboardInterrupt:  # `timeout -s INT` bounding a long compile: keep what was timed.
                bench.print_skipped(
                    f'torch.compile(unet, "{mode}")', "interrupted (SIGINT); later modes skipped"
                )
                break

    # 3. Share of the GPU's peak.
    tiny_note = "  (not meaningful at tiny size)" if tiny else ""
    print(f"\n3. share of peak: peak {peak_label}{tiny_note}")
    print(
        f"  FLOP per step = {SD15_TFLOP_PER_CFG_STEP} TFLOP x ({args.size}x{args.size})/(512x512) x batch"
        f" = {SD15_TFLOP_PER_CFG_STEP * args.size**2 / 512**2:.4f} TFLOP at batch 1"
    )
    for row in (*worker_rows, max(rows, key=lambda row: bench.tflops(row) or 0.0)):
        tflops = bench.tflops(row)
        share = (
            f"{100 * tflops / bench.peak_tflops:.1f}% of peak"
            if tflops is not None and bench.peak_tflops is not None
            else "share n/a"
        )
        print(
            f"  {row.name} (batch {row.batch}): {tflops or float('nan'):.2f} TFLOP/s, {share}{tiny_note}",
            flush=True,
        )

    # 4. Targets.
    print("\n4. targets")
    pairs = [("eager (the registry's default)", worker, bare_1)]
    by_name = {(row.name, row.batch): row for row in rows}
    for mode in args.compile_modes.split(",") if not args.no_compile else []:
        compiled_worker = by_name.get((compiled_worker_name(mode), 1))
        compiled_bare = by_name.get((compiled_bare_name(mode), 1))
        if compiled_worker is not None and compiled_bare is not None:
            pairs.append((f'compile_mode "{mode}"', compiled_worker, compiled_bare))
    is_h100 = on_cuda and "H100" in torch.cuda.get_device_name(device)
    applies = "" if is_h100 and not tiny else "  (the target is for SD1.5 512x512 on an H100; not this run)"
    for label, worker_row, bare_row in pairs:
        ratio = steady_ratio(worker_row, bare_row)
        its = worker_row.loop_its or 0.0
        print(
            f"  {label}: worker/bare steady images/s at batch 1 {ratio:.3f} vs >= {TARGET_WORKER_OVER_BARE:.1f}:"
            f" {'met' if ratio >= TARGET_WORKER_OVER_BARE else 'NOT met'}"
            f" (whole runs of {args.calls} calls: {worker_row.images_per_s / bare_row.images_per_s:.3f});"
            f" worker loop it/s {its:.2f}"
            f" vs >= {TARGET_ITS_H100:.0f} (best published {BEST_PUBLISHED_ITS_H100}):"
            f" {'met' if its >= TARGET_ITS_H100 else 'NOT met'}{applies}"
        )
    best = max((row for row in rows if row.batch == 1 and row.loop_its), key=lambda row: row.loop_its or 0.0)
    print(f"  best batch-1 row: {best.name}, {best.loop_its or 0.0:.2f} loop it/s{applies}", flush=True)

    # 5. Architectures and LoRAs.
    if args.no_architectures:
        bench.print_skipped("\n5. architectures", "skipped (--no-architectures)")
    else:
        del bare
        gc.collect()
        measure_architectures(bench, args, device)


if __name__ == "__main__":
    main()
