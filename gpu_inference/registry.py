"""The one owner of model weights in a worker: loading, single-flight, pinning, LRU eviction and
memory accounting.

The job loop asks `ModelRegistry.acquire(name)` for a ready pipeline and never loads weights itself,
so two jobs for the same cold model cause one load, and a new model pushes out the least recently
used ones instead of running the GPU out of memory.

LoRAs are PEFT adapters on a loaded pipeline (`ModelRegistry.apply_loras`): each is loaded into a
pipeline once and kept there while the budget allows, so switching a pipeline between LoRA sets
never reloads the base model; an adapter's bytes count toward the budget like a model's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import (
    AutoPipelineForText2Image,
    FluxPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from opentelemetry import trace

from services.generation.catalog import (
    LORA_WEIGHTS_NAME,
    SINGLE_FILE_CONFIG_DIR,
    ModelCatalog,
    ModelFormat,
    ModelInfo,
    ModelKind,
    single_file_checkpoints,
)
from services.generation.samplers import ModelFamily

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class UnknownModelError(LookupError):
    """The catalog has no model by this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name


class UnknownLoraError(LookupError):
    """The catalog has no LoRA by this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown LoRA {name!r}")
        self.name = name


class LoraFamilyMismatch(ValueError):
    """A LoRA made for another architecture than the pipeline's."""

    def __init__(self, lora: ModelInfo, model: ModelInfo) -> None:
        super().__init__(f"LoRA {lora.name!r} is for {lora.family}, model {model.name!r} is {model.family}")
        self.lora = lora.name


class LoraChoice(Protocol):
    """A LoRA a run applies, and its weight (`services.generation.modes.LoraWeight` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


# The pipeline class of each family, for single-file checkpoints (whose configs hold no class).
_SINGLE_FILE_PIPELINES: dict[ModelFamily, Any] = {
    ModelFamily.SD15: StableDiffusionPipeline,
    ModelFamily.SDXL: StableDiffusionXLPipeline,
    ModelFamily.FLUX: FluxPipeline,
}


@dataclass
class LoadedModel:
    """A pipeline resident on the worker's device, ready to run."""

    info: ModelInfo
    pipeline: Any  # A diffusers DiffusionPipeline; diffusers ships no type information.
    device: torch.device
    dtype: torch.dtype
    memory_bytes: int
    last_used: float  # time.monotonic() of the last acquire; orders eviction.
    # A pipeline's scheduler keeps per-run state, so runs on one pipeline must not overlap; nor
    # may adapters be loaded, switched or deleted during a run.
    run_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # The LoRAs the pipeline runs with now, as (name, weight), in the order applied.
    active_loras: tuple[tuple[str, float], ...] = ()
    # The PEFT adapter name of each LoRA loaded into the pipeline, by LoRA name (PEFT's names may
    # not hold the dots a LoRA's name may).
    adapters: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The pipeline a kind of run uses, by (pipeline class, sampler): built around `pipeline`'s
    # modules on the first such run and reused under `run_lock` (gpu_inference.inference).
    run_pipelines: dict[tuple[type, str], Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class LoadedAdapter:
    """A LoRA loaded into one resident pipeline."""

    lora: ModelInfo
    model: LoadedModel
    adapter_name: str
    memory_bytes: int
    last_used: float


@dataclass
class RegistryMetrics:
    """Counters since the registry was created.

    An acquire is a hit when the model was resident and a miss otherwise; misses that join a load
    already in flight do not add a load, so `loads <= misses`.
    """

    loads: int = 0  # Pipeline loads.
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_seconds: float = 0.0
    adapter_loads: int = 0  # LoRAs loaded into a pipeline.
    adapter_evictions: int = 0  # LoRAs deleted from a pipeline to make room.


class ModelRegistry:
    """Loads pipelines from a `ModelCatalog` onto one device and keeps them within a memory budget.

    Device, dtype and attention backend are chosen once here, at construction and load time: CUDA
    gets float16, channels-last UNet and PyTorch SDPA attention (diffusers' default processor);
    CPU gets float32. The rest of the worker runs the same code on either.

    All methods must be called from one event loop; loads run in worker threads.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        device: str | None = None,
        memory_budget_bytes: int | None = None,
        pinned: Sequence[str] = (),
        on_load: Callable[[str, float], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
        compile_mode: str | None = None,
        ensure_cached: Callable[[ModelInfo], Awaitable[None]] | None = None,
    ) -> None:
        self._catalog = catalog
        # Makes a model's files present at its path before it loads (the model store's fetch
        # into the cache); None when the catalog reads a folder that already holds them.
        self._ensure_cached = ensure_cached
        # torch.compile mode for each loaded UNet, or None for eager. "reduce-overhead" (CUDA
        # graphs) removes the kernel-launch cost that bounds SD1.5 at batch 1 on a big GPU, but
        # compiles each new shape (batch size, resolution) on first use, tens of seconds each.
        self._compile_mode = compile_mode
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._dtype = torch.float16 if self._device.type == "cuda" else torch.float32
        self._memory_budget_bytes = memory_budget_bytes
        self._pinned = frozenset(pinned)
        self._on_load = on_load
        self._on_evict = on_evict
        # Least recently used first.
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        # Adapters on resident pipelines, by (model name, LoRA name), least recently used first.
        self._adapters: OrderedDict[tuple[str, str], LoadedAdapter] = OrderedDict()
        self._adapter_ids = 0
        # Single-flight: one task per model being loaded, shared by every acquire that wants it.
        self._loads: dict[str, asyncio.Task[LoadedModel]] = {}
        # Loads run one at a time, so eviction decisions see settled memory and CUDA's
        # before/after measurement is not polluted by a second load.
        self._load_lock = asyncio.Lock()
        self._metrics = RegistryMetrics()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def metrics(self) -> RegistryMetrics:
        """A snapshot of the counters."""
        return dataclasses.replace(self._metrics)

    def loaded(self) -> list[str]:
        """Resident models, least recently used first."""
        return list(self._models)

    def loading(self) -> list[str]:
        """Models whose load is in flight."""
        return sorted(self._loads)

    def loaded_adapters(self) -> list[tuple[str, str]]:
        """Resident adapters as (model, LoRA), least recently used first."""
        return list(self._adapters)

    def resident_bytes(self) -> int:
        return sum(model.memory_bytes for model in self._models.values()) + sum(
            adapter.memory_bytes for adapter in self._adapters.values()
        )

    async def info(self, name: str) -> ModelInfo:
        """The catalog's entry for the model `name`, loaded or not; `UnknownModelError` if none."""
        info = await self._catalog.get(name)
        if info is None or info.kind != ModelKind.PIPELINE:
            raise UnknownModelError(name)
        return info

    async def acquire(self, name: str) -> LoadedModel:
        """The model `name`, loading it first if it is not resident.

        Raises `UnknownModelError` when the catalog has no such model. Cancelling the caller does not
        cancel a load other callers may be waiting for; the model still becomes resident.
        """
        model = self._models.get(name)
        if model is not None:
            self._metrics.hits += 1
            self._touch(model)
            # A span of its own all the same: a trace shows which runs paid for a load.
            with tracer.start_as_current_span("model cache hit", attributes={"pingvas.model": name}):
                logger.info("model %s already loaded", name)
            return model
        self._metrics.misses += 1
        with tracer.start_as_current_span(
            "model load", attributes={"pingvas.model": name, "pingvas.joined_load": name in self._loads}
        ):
            task = self._loads.get(name)
            if task is None:
                task = asyncio.create_task(self._load(name), name=f"load model {name}")
                self._loads[name] = task
                task.add_done_callback(self._load_done)
            return await asyncio.shield(task)

    async def preload(self, names: Iterable[str]) -> None:
        """Load `names` (typically the pinned models) before the worker reports ready."""
        for name in names:
            await self.acquire(name)

    def _load_done(self, task: asyncio.Task[LoadedModel]) -> None:
        # `_load` unlists itself as it finishes; this covers a task cancelled before it started.
        name = next((n for n, t in self._loads.items() if t is task), None)
        if name is not None:
            del self._loads[name]
        # The outcome belongs to the waiters; if all were cancelled nobody reads a failure, and
        # asyncio would log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _touch(self, model: LoadedModel) -> None:
        model.last_used = time.monotonic()
        self._models.move_to_end(model.info.name)

    async def _load(self, name: str) -> LoadedModel:
        try:
            info = await self.info(name)
            if self._ensure_cached is not None:
                # Before the load lock: a download must not hold up loads of cached models.
                await self._ensure_cached(info)
            async with self._load_lock:
                expected_bytes = await asyncio.to_thread(estimate_weight_bytes, info.path, self._dtype)
                await self._evict_to_fit(expected_bytes)
                started = time.perf_counter()
                try:
                    pipeline, memory_bytes = await asyncio.to_thread(self._load_pipeline, info)
                except Exception:
                    logger.exception("failed to load model %s from %s", name, info.path)
                    raise
                seconds = time.perf_counter() - started
                model = LoadedModel(
                    info=info,
                    pipeline=pipeline,
                    device=self._device,
                    dtype=self._dtype,
                    memory_bytes=memory_bytes,
                    last_used=time.monotonic(),
                )
                self._models[name] = model
                self._metrics.loads += 1
                self._metrics.load_seconds += seconds
                logger.info("loaded model %s in %.2fs", name, seconds)
                # The estimate can be off (buffers, allocator rounding); settle against the truth.
                await self._evict_to_fit(0, keep=name)
            if self._on_load is not None:
                _notify(self._on_load, name, seconds)
            return model
        finally:
            # Unlist before the waiters resume, so none of them finds a finished load in flight.
            if self._loads.get(name) is asyncio.current_task():
                del self._loads[name]

    def _load_pipeline(self, info: ModelInfo) -> tuple[Any, int]:
        """Runs in a worker thread: read weights, move them to the device, measure them."""
        on_cuda = self._device.type == "cuda"
        allocated_before = torch.cuda.memory_allocated(self._device) if on_cuda else 0
        pipeline: Any
        if info.format == ModelFormat.SINGLE_FILE:
            pipeline = self._load_single_file(info)
        else:
            # The auto pipeline picks the text-to-image class from model_index.json, so SD1.5,
            # SDXL, Flux and the tiny test models share this path.
            pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
                info.path, dtype=self._dtype
            )
        # Device only: casting here would override the modules a model keeps in float32.
        pipeline.to(self._device)
        pipeline.set_progress_bar_config(disable=True)
        unet = getattr(pipeline, "unet", None)
        if on_cuda and unet is not None:
            # Channels-last convolutions are markedly faster on tensor cores.
            unet.to(memory_format=torch.channels_last)
        if self._compile_mode is not None and unet is not None:
            # Lazy: the first run of each shape compiles, on the worker's one inference thread.
            pipeline.unet = torch.compile(unet, mode=self._compile_mode)
        tensor_bytes = _pipeline_tensor_bytes(pipeline)
        if on_cuda:
            torch.cuda.synchronize(self._device)
            measured = torch.cuda.memory_allocated(self._device) - allocated_before
            # A job running meanwhile can free activations and make the delta too small; the
            # weights themselves are a floor.
            return pipeline, max(measured, tensor_bytes)
        return pipeline, tensor_bytes

    def _load_single_file(self, info: ModelInfo) -> Any:
        """A single-file checkpoint through its family's `from_single_file`. With the diffusers
        configs beside it (`config/`) nothing is fetched; without, diffusers fetches its
        architecture's stock configs from the Hugging Face hub (or its local cache)."""
        checkpoints = single_file_checkpoints(info.path)
        if len(checkpoints) != 1:
            raise FileNotFoundError(f"{info.path} holds {len(checkpoints)} .safetensors checkpoints, not one")
        config_dir = info.path / SINGLE_FILE_CONFIG_DIR
        offline = (config_dir / "model_index.json").is_file()
        return _SINGLE_FILE_PIPELINES[info.family].from_single_file(
            str(checkpoints[0]),
            config=str(config_dir) if offline else None,
            local_files_only=offline,
            torch_dtype=self._dtype,
        )

    async def apply_loras(self, model: LoadedModel, loras: Sequence[LoraChoice]) -> None:
        """Make `model`'s pipeline run with exactly `loras`, each at its weight, and none else.

        A LoRA not yet loaded into this pipeline is loaded once as a PEFT adapter (fetched into
        the cache first), least recently used adapters making room under the memory budget;
        switching among loaded ones only sets their weights, and an empty `loras` disables
        every adapter, so the pipeline computes exactly what it did before any was loaded. The
        base pipeline is never reloaded.

        Call it just before running a batch on the model: the pipeline carries one LoRA set at a
        time. Raises `UnknownLoraError` for a name that is not a LoRA of the catalog and
        `LoraFamilyMismatch` for one of another architecture, before changing anything.
        """
        wanted = tuple((lora.name, float(lora.weight)) for lora in loras)
        if len({name for name, _ in wanted}) != len(wanted):
            raise ValueError(f"a LoRA is named twice in {[name for name, _ in wanted]}")
        infos = []
        for name, _ in wanted:
            info = await self._catalog.get(name)
            if info is None or info.kind != ModelKind.LORA:
                raise UnknownLoraError(name)
            if info.family != model.info.family:
                raise LoraFamilyMismatch(info, model.info)
            infos.append(info)
        for info in infos:
            key = (model.info.name, info.name)
            adapter = self._adapters.get(key)
            if adapter is None or adapter.model is not model:
                adapter = await self._load_adapter(model, info, keep={i.name for i in infos})
            adapter.last_used = time.monotonic()
            self._adapters.move_to_end(key)
        if wanted != model.active_loras:
            await asyncio.to_thread(self._activate, model, wanted)

    async def _load_adapter(self, model: LoadedModel, info: ModelInfo, *, keep: set[str]) -> LoadedAdapter:
        if self._ensure_cached is not None:
            await self._ensure_cached(info)
        async with self._load_lock:
            key = (model.info.name, info.name)
            adapter = self._adapters.get(key)
            if adapter is not None and adapter.model is model:
                return adapter  # Loaded by another caller while this one waited.
            weights = info.path / LORA_WEIGHTS_NAME
            memory_bytes = await asyncio.to_thread(_safetensors_bytes, weights, self._dtype.itemsize)
            await self._evict_to_fit(memory_bytes, keep=model.info.name, keep_adapters=keep)
            self._adapter_ids += 1
            adapter_name = f"lora{self._adapter_ids}"
            started = time.perf_counter()
            await asyncio.to_thread(self._load_adapter_weights, model, weights, adapter_name)
            adapter = LoadedAdapter(info, model, adapter_name, memory_bytes, time.monotonic())
            model.adapters[info.name] = adapter_name
            self._adapters[key] = adapter
            self._metrics.adapter_loads += 1
            logger.info(
                "loaded LoRA %s into %s in %.2fs", info.name, model.info.name, time.perf_counter() - started
            )
            return adapter

    def _load_adapter_weights(self, model: LoadedModel, weights: Path, adapter_name: str) -> None:
        with model.run_lock:
            model.pipeline.load_lora_weights(str(weights), adapter_name=adapter_name)
            # Loading activates the new adapter; the pipeline keeps running its current set
            # until `_activate` says otherwise.
            self._set_adapters(model, model.active_loras)

    def _activate(self, model: LoadedModel, loras: tuple[tuple[str, float], ...]) -> None:
        with model.run_lock:
            self._set_adapters(model, loras)
            model.active_loras = loras

    @staticmethod
    def _set_adapters(model: LoadedModel, loras: tuple[tuple[str, float], ...]) -> None:
        pipeline = model.pipeline
        if not loras:
            # PEFT's disabled adapters leave every layer computing exactly its base weights.
            pipeline.disable_lora()
            return
        pipeline.enable_lora()
        pipeline.set_adapters(
            [model.adapters[name] for name, _ in loras], adapter_weights=[weight for _, weight in loras]
        )

    async def _evict_to_fit(
        self, incoming_bytes: int, *, keep: str | None = None, keep_adapters: AbstractSet[str] = frozenset()
    ) -> None:
        """Make `incoming_bytes` more fit the budget: least recently used adapters go first (not
        those other pipelines run with now, nor those of `keep` named in `keep_adapters`), then
        least recently used unpinned models, with their adapters.

        If only pinned models (and `keep`) remain, stop: a model larger than the budget still loads.
        """
        budget = self._memory_budget_bytes
        if budget is None:
            return
        while self.resident_bytes() + incoming_bytes > budget:
            victim_adapter = next(
                (
                    adapter
                    for (model_name, lora_name), adapter in self._adapters.items()
                    if (model_name != keep and (model_name, lora_name) not in self._active_adapters())
                    # `keep` is being given a new set: of its adapters, only that set must stay.
                    or (model_name == keep and lora_name not in keep_adapters)
                ),
                None,
            )
            if victim_adapter is None:
                break
            await self._evict_adapter(victim_adapter)
        evicted = False
        while self.resident_bytes() + incoming_bytes > budget:
            victim = next(
                (n for n in self._models if n not in self._pinned and n != keep),
                None,
            )
            if victim is None:
                break
            self._evict(victim)
            evicted = True
        if evicted and self._device.type == "cuda":
            # Hand the freed blocks back so the coming load (and other processes) can use them.
            # A job still running on an evicted pipeline keeps its memory until it finishes.
            gc.collect()
            torch.cuda.empty_cache()

    def _active_adapters(self) -> set[tuple[str, str]]:
        """Adapters a pipeline runs with now: deleting one would change its set under it."""
        return {(name, lora) for name, model in self._models.items() for lora, _ in model.active_loras}

    async def _evict_adapter(self, adapter: LoadedAdapter) -> None:
        model = adapter.model
        del self._adapters[(model.info.name, adapter.lora.name)]
        del model.adapters[adapter.lora.name]
        self._metrics.adapter_evictions += 1
        await asyncio.to_thread(self._delete_adapter, model, adapter.lora.name, adapter.adapter_name)
        logger.info(
            "evicted LoRA %s from %s (%.1f KiB)",
            adapter.lora.name,
            model.info.name,
            adapter.memory_bytes / 2**10,
        )

    def _delete_adapter(self, model: LoadedModel, lora_name: str, adapter_name: str) -> None:
        with model.run_lock:
            model.pipeline.delete_adapters(adapter_name)
            # Only the pipeline being given a new set loses an active adapter; it runs the rest
            # until that set is applied.
            model.active_loras = tuple(lora for lora in model.active_loras if lora[0] != lora_name)
            self._set_adapters(model, model.active_loras)

    def _evict(self, name: str) -> None:
        model = self._models.pop(name)
        # Its adapters go with the pipeline they were loaded into.
        for key in [key for key, adapter in self._adapters.items() if adapter.model is model]:
            del self._adapters[key]
        self._metrics.evictions += 1
        logger.info("evicted model %s (%.1f MiB)", name, model.memory_bytes / 2**20)
        if self._on_evict is not None:
            _notify(self._on_evict, name)


def _notify(callback: Callable[..., None], *args: object) -> None:
    # Hooks feed metrics and heartbeats; a broken hook must not fail a load or a job.
    try:
        callback(*args)
    except Exception:
        logger.exception("model registry hook %r failed", callback)


def _pipeline_tensor_bytes(pipeline: Any) -> int:
    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


# safetensors dtype tags that `from_pretrained(dtype=...)` casts; other tensors keep their size.
_FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16"})
_TAG_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}


def estimate_weight_bytes(model_path: Path, dtype: torch.dtype) -> int:
    """How many bytes the model's weights will take once loaded in `dtype`, before loading them.

    Reads only the safetensors headers (tensor shapes and types), so it costs a few small reads.
    Variant files (`*.fp16.safetensors`) are ignored, as `from_pretrained` without a variant does;
    pickled weights fall back to their file size. A single-file checkpoint is the `.safetensors`
    file at the top (its `config/` holds no weights).
    """
    target_bytes = torch.empty((), dtype=dtype).element_size()
    total = sum(_safetensors_bytes(path, target_bytes) for path in single_file_checkpoints(model_path))
    for component_dir in sorted(path for path in model_path.iterdir() if path.is_dir()):
        weights = [path for path in component_dir.iterdir() if "." not in path.stem]
        safetensors = [path for path in weights if path.suffix == ".safetensors"]
        if safetensors:
            for path in safetensors:
                total += _safetensors_bytes(path, target_bytes)
        else:
            total += sum(path.stat().st_size for path in weights if path.suffix in {".bin", ".pt", ".pth"})
    return total


_MAX_SAFETENSORS_HEADER = 100 * 2**20  # The format's own limit.


def _safetensors_bytes(path: Path, float_bytes: int) -> int:
    # Format: an 8-byte little-endian header length, then a JSON header mapping each tensor name to
    # its dtype, shape and byte offsets.
    try:
        with path.open("rb") as file:
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > _MAX_SAFETENSORS_HEADER:
                raise ValueError("header too large")
            header: dict[str, Any] = json.loads(file.read(header_length))
        total = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            tag: str = entry["dtype"]
            numel = 1
            for dim in entry["shape"]:
                numel *= int(dim)
            total += numel * (float_bytes if tag in _FLOAT_TAGS else _TAG_BYTES.get(tag, 1))
        return total
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        # A damaged file: estimate by size and let the load itself report what is wrong.
        return path.stat().st_size
