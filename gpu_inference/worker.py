"""The GPU worker's job loop: claim jobs, run them on a registry pipeline, record the outcomes.

The loop never loads weights (the ModelRegistry does) and never imports a servicer: it drives
the same generation domain the service uses, so state changes, fencing and ledger entries have
one implementation.

A job leaves its run early, at a step boundary, for one of three reasons: the user cancelled
it, the worker lost its lease (another worker now owns the job, so this one walks away without
a word), or the worker is shutting down and the job would not finish within the grace budget
(it is handed back to the queue at once).

Jobs that share model, size, steps, guidance, sampler, mode and LoRA set (the batch key) may be
claimed together and run as one batch, one pipeline call (`max_batch`; off on CPU, where a batch
is no faster than its members in turn). Each member keeps its own seed, progress stream, lease,
cancellation and bill. Members whose prompt conditioning is longer or shorter than the first's
are handed back: one call pads every member to the longest, which would change their images.

A call's images are encoded, stored and recorded while the GPU runs the next call, so the GPU
does not wait for PNG compression, the image store or PostgreSQL between jobs.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation
from PIL import Image

from gpu_inference.inference import (
    BatchStep,
    PromptSyntaxError,
    StepUpdate,
    TextToImageRequest,
    TextToImageResult,
    conditioning_length,
    run_text_to_image_batch,
)
from gpu_inference.registry import (
    LoadedModel,
    LoraFamilyMismatch,
    ModelRegistry,
    UnknownLoraError,
    UnknownModelError,
)
from gpu_inference.samplers import SamplerNotAllowedError
from services.common.cancellation import cancellation_requested
from services.common.failpoints import Failpoint, Failpoints
from services.common.storage import (
    PNG_CONTENT_TYPE,
    THUMBNAIL_CONTENT_TYPE,
    ImageStore,
    ObjectMissing,
    ObjectStoreUnavailable,
)
from services.common.telemetry import job_link, span_without_statements, trace_context
from services.gallery.recipe import recipe_json
from services.gallery.repository import StoredImage
from services.generation.failures import Failure, FailureCode
from services.generation.model_store import ModelDownloadFailed
from services.generation.modes import GenerationMode
from services.generation.queue import Claim, ClaimCycle, SchedulingPolicy, TierQueue
from services.generation.repository import GenerationRecord
from services.generation.runs import Runs, WorkResult

T = TypeVar("T")

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)

# How often a running batch looks for cancel requests: a cancel stops its job within this and one
# denoising step.
CANCEL_POLL_SECONDS = 0.05


def _run_labels(records: Iterable[GenerationRecord]) -> str:
    return ", ".join(record.run_label for record in records)


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class RunInterrupted(Exception):
    """Raised from the step callback to stop a run at a step boundary."""


class GenerationCancelled(RunInterrupted):
    """The user cancelled the generation."""


class LeaseLost(RunInterrupted):
    """The lease lapsed: another worker owns the job now."""


class HandedBack(RunInterrupted):
    """The worker is shutting down and gives the job back to the queue."""


class EveryMemberLeft(RunInterrupted):
    """Every member of a batch left it (cancelled, or its lease lost): nothing to compute for."""


class InputImageUnreadable(Exception):
    """A job's init image or mask is not in the images bucket, or does not decode: no attempt
    reads it better."""


class ProgressRelay:
    """Carries one job's step updates from the inference thread to Redis, without making the
    denoising loop wait on the network.

    The step callback only hands the update over; a task on the event loop appends the progress
    events in order. Any interruption requested (cancel, lost lease, hand-back) raises in the
    callback at the next step boundary, so a run stops within one step of it.
    """

    _DONE = None

    def __init__(self, runs: Runs, record: GenerationRecord) -> None:
        self.runs = runs
        self.record = record
        self.updates: asyncio.Queue[StepUpdate | None] = asyncio.Queue()
        self._interruption: type[RunInterrupted] | None = None
        self._lock = threading.Lock()
        # Set with the interruption, for what waits on the event loop (a parked failpoint).
        self.interrupted = asyncio.Event()
        self._publisher = asyncio.create_task(self._publish())
        self._closed = False
        # The steps after which a test's failpoint parks this job; none (always, in production)
        # when it runs through.
        self.park_after_steps: frozenset[int] = frozenset()

    def interrupt(self, reason: type[RunInterrupted]) -> None:
        """Runs on the event loop."""
        with self._lock:
            self._interruption = self._interruption or reason
        self.interrupted.set()

    def raise_if_interrupted(self) -> None:
        """Runs on the inference thread."""
        with self._lock:
            interruption = self._interruption
        if interruption is not None:
            raise interruption

    def hand_over(self, update: StepUpdate, loop: asyncio.AbstractEventLoop) -> None:
        """Runs on the inference thread."""
        loop.call_soon_threadsafe(self.updates.put_nowait, update)

    async def _publish(self) -> None:
        # Untraced: the denoise span's step events stand for the progress events, and a span per
        # step would be most of a traced job's cost.
        with suppress_instrumentation():
            await self._publish_updates()

    async def _publish_updates(self) -> None:
        while (update := await self.updates.get()) is not self._DONE:
            # Encoded off the event loop: on CUDA it first waits for the step's pixels.
            preview_jpeg = await asyncio.to_thread(lambda: update.preview_jpeg)
            await self.runs.report_progress(self.record, update.step, update.total_steps, preview_jpeg)
            self.updates.task_done()

    async def flushed(self) -> None:
        """Wait until every update handed over so far is stored (or publishing failed)."""
        stored = asyncio.create_task(self.updates.join())
        await asyncio.wait([stored, self._publisher], return_when=asyncio.FIRST_COMPLETED)
        stored.cancel()

    async def close(self) -> None:
        """Wait until every progress event is stored: the terminal event must come after them."""
        if not self._closed:
            self._closed = True
            self.updates.put_nowait(self._DONE)
        await self._publisher


class BatchRun:
    """The members of one pipeline call, as the inference thread's step callback sees them.

    A member interrupted on its own (cancelled, or its lease lost) leaves the batch at that
    step: `on_leave` starts its terminal handling on the event loop at once, while its slot
    keeps computing until the call ends (diffusers' schedulers keep per-batch state, so a
    member cannot be taken out mid-loop). The call stops when every member has left, or on
    hand-back, which sends the whole batch back to the queue.
    """

    def __init__(
        self,
        relays: Sequence[ProgressRelay],
        total_steps: int,
        loop: asyncio.AbstractEventLoop,
        on_leave: Callable[[ProgressRelay, type[RunInterrupted]], Coroutine[Any, Any, None]],
        park: Callable[[ProgressRelay, int], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.relays = relays
        self.total_steps = total_steps
        self.loop = loop
        self.on_leave = on_leave
        self.park = park
        self.left: set[int] = set()
        self._departures: list[Future[None]] = []
        self._started = time.monotonic()
        self._steps_done = 0

    @property
    def staying(self) -> list[ProgressRelay]:
        return [relay for index, relay in enumerate(self.relays) if index not in self.left]

    def interrupt_all(self, reason: type[RunInterrupted]) -> None:
        for relay in self.relays:
            relay.interrupt(reason)

    def expected_remaining_seconds(self) -> float:
        """From the pace so far; unknown (infinite) before the first step."""
        if self._steps_done == 0:
            return float("inf")
        elapsed = time.monotonic() - self._started
        return elapsed / self._steps_done * max(0, self.total_steps - self._steps_done)

    def on_step(self, batch_step: BatchStep) -> None:
        """Runs on the inference thread."""
        self._steps_done = batch_step.step
        for index, relay in enumerate(self.relays):
            if index in self.left:
                continue
            try:
                relay.raise_if_interrupted()
            except HandedBack:
                raise
            except RunInterrupted as interruption:
                self.left.add(index)
                departure = self.on_leave(relay, type(interruption))
                self._departures.append(asyncio.run_coroutine_threadsafe(departure, self.loop))
                continue
            relay.hand_over(batch_step.update_for(index), self.loop)
            if batch_step.step in relay.park_after_steps and self.park is not None:
                # A test's failpoint: the whole call waits here, its leases renewed meanwhile.
                asyncio.run_coroutine_threadsafe(self.park(relay, batch_step.step), self.loop).result()
        if len(self.left) == len(self.relays):
            raise EveryMemberLeft

    async def settle(self) -> None:
        """Wait for the departed members' terminal handling."""
        for departure in self._departures:
            await asyncio.wrap_future(departure)


class StepEvents:
    """The denoise span's step events. The inference thread only notes each step and when it
    ended; the event loop adds the events, with those times, once the call returns. So the SDK's
    span work (its lock, its attribute checks) never runs on the thread that runs the pipeline:
    tracing's only work there is a list append a step."""

    def __init__(self) -> None:
        self._ended: list[tuple[int, int]] = []  # (step, time in ns since the epoch)

    def note(self, step: int) -> None:
        """Runs on the inference thread: a list append, atomic under the GIL."""
        self._ended.append((step, time.time_ns()))

    def add_to(self, span: trace.Span, total_steps: int) -> None:
        for step, ended_ns in self._ended:
            span.add_event("step", {"step": step, "total_steps": total_steps}, timestamp=ended_ns)


@dataclass(frozen=True)
class Member:
    record: GenerationRecord
    claim: Claim

    @property
    def trace(self) -> Context:
        """The trace of the request that queued the job: the worker's spans for it join it."""
        return trace_context(self.claim.trace_context)


class WorkerMetrics:
    """What a worker counts for OpenTelemetry (no-ops while telemetry is off): the queue wait it
    found per band, the GPU time it spent, its denoising speed, and its model cache."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.queue_wait = meter.create_histogram(
            "pingvas.queue.wait",
            unit="s",
            description="How long a job waited in its band before a worker claimed it.",
        )
        self.gpu_seconds = meter.create_counter(
            "pingvas.worker.gpu_seconds", unit="s", description="GPU time spent on succeeded jobs."
        )
        self.iterations_per_second = meter.create_histogram(
            "pingvas.worker.iterations_per_second",
            unit="{it}/s",
            description="Denoising steps per second of each pipeline call (all members of a batch).",
        )

        def cache(counter: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _options: [Observation(getattr(registry.metrics, counter))]

        for counter in ("hits", "misses", "evictions"):
            meter.create_observable_counter(
                f"pingvas.model_cache.{counter}",
                callbacks=[cache(counter)],
                description=f"Model registry {counter} since the worker started.",
            )


class Worker:
    def __init__(
        self,
        *,
        worker_id: str,
        runs: Runs,
        queue: TierQueue,
        registry: ModelRegistry,
        store: ImageStore,
        policy: SchedulingPolicy,
        lease_seconds: float,
        shutdown_grace_seconds: float,
        max_batch: int = 1,
        idle_wait_seconds: float = 1.0,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.runs = runs
        self.queue = queue
        self.registry = registry
        self.store = store
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.max_batch = max_batch
        self.idle_wait_seconds = idle_wait_seconds
        self.failpoints = failpoints
        self.metrics = WorkerMetrics(registry)
        self._advertised_state: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._advertised_at = 0.0
        # Every pipeline call runs on this one thread: one GPU runs one call at a time anyway, and
        # compiled CUDA graphs are recorded per thread, so a pool's changing threads would record
        # them again.
        self._inference_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def run(self, stop: asyncio.Event) -> None:
        """Pull jobs until `stop` is set (SIGTERM): then nothing new is claimed, and the jobs in
        hand are finished if they fit the grace budget, or handed back."""
        log.info("worker %s pulling jobs", self.worker_id)
        # Leases of jobs that ended here end in the same round trip as the next claim.
        finished: list[uuid.UUID] = []
        # The previous call's images are encoded, stored and recorded while the GPU runs the
        # next call; their leases end when that is done.
        storing: asyncio.Task[None] | None = None
        # Each claim takes any job whose aging bound would pass before this worker claims again.
        cycle = ClaimCycle()
        while not stop.is_set():
            try:
                # Asking for work is no job's step: a job's trace starts at its claim span, which
                # covers the claim's round trip. Untraced, as the event hub's reads are: the
                # sampler would drop these parentless spans, but only after the instrumentation
                # had done its work for each, about once a second all day.
                with suppress_instrumentation():
                    await self.advertise()
                    claimed_from = time.time_ns()
                    claims = await self.queue.claim_batch(
                        self.worker_id,
                        self.lease_seconds,
                        self.policy,
                        warm_models=self.registry.loaded(),
                        max_batch=self.max_batch,
                        release=finished,
                        horizon_seconds=cycle.horizon(),
                    )
                finished = []
                if claims:
                    cycle.got_work()
                else:
                    if storing is not None:
                        # Its leases may be what holds a capped user's next job back: claim again
                        # once they have ended.
                        await storing
                        storing = None
                        continue
                    with suppress_instrumentation():
                        await self.queue.wait_for_work(self.idle_wait_seconds)
                    continue
            except Exception:
                # Redis restarting, a dropped connection, a process resumed after a pause: the
                # loop survives it and tries again.
                log.exception("claiming failed; retrying")
                await asyncio.sleep(self.idle_wait_seconds)
                continue
            succeeded: list[tuple[Member, TextToImageResult]] = []
            try:
                succeeded = await self.run_claims(claims, stop, claimed_from=claimed_from)
            except Exception:
                # PostgreSQL or Redis trouble mid-job: the leases lapse and the jobs are redelivered.
                log.exception("jobs %s abandoned", ", ".join(str(claim.generation_id) for claim in claims))
            finally:
                to_store = {member.record.id for member, _ in succeeded}
                finished = [claim.generation_id for claim in claims if claim.generation_id not in to_store]
            if storing is not None:
                await storing
            storing = asyncio.create_task(self._store_results(succeeded)) if succeeded else None
        if storing is not None:
            await storing
        for generation_id in finished:
            await self.queue.release_lease(generation_id, self.worker_id)
        self._inference_thread.shutdown(wait=False)
        log.info("worker %s stopped pulling jobs", self.worker_id)

    async def advertise(self) -> None:
        """Say which models this worker has warm and which it is loading, with its counters:
        at most once a second, or at once when the warm set changed (two round trips per job
        would cost a busy worker more than its claim)."""
        state = (tuple(self.registry.loaded()), tuple(self.registry.loading()))
        now = time.monotonic()
        if state == self._advertised_state and now - self._advertised_at < 1.0:
            return
        self._advertised_state, self._advertised_at = state, now
        metrics = self.registry.metrics
        await self.queue.advertise_worker(
            self.worker_id,
            loaded=self.registry.loaded(),
            loading=self.registry.loading(),
            metrics={
                "loads": metrics.loads,
                "hits": metrics.hits,
                "misses": metrics.misses,
                "evictions": metrics.evictions,
                "load_seconds": round(metrics.load_seconds, 3),
                "adapter_loads": metrics.adapter_loads,
            },
            ttl_seconds=max(10.0, self.idle_wait_seconds * 5),
        )

    async def run_claims(
        self, claims: Sequence[Claim], stop: asyncio.Event, *, claimed_from: int | None = None
    ) -> list[tuple[Member, TextToImageResult]]:
        """Run claimed jobs as one batch and return the images made, for `_store_results`. Every
        other outcome is recorded here; the caller ends the leases. `claimed_from` (ns since the
        epoch) is when the claim was asked for: each job's claim span starts there."""
        members = []
        for claim in claims:
            self.metrics.queue_wait.record(claim.waited_seconds, {"band": claim.tier})
            # The claim joins the trace of the request that queued the job, from the claim's
            # round trip to the job's fenced start.
            with span_without_statements(
                tracer,
                "claim",
                context=trace_context(claim.trace_context),
                start_time=claimed_from,
                attributes={
                    "pingvas.generation_id": str(claim.generation_id),
                    "pingvas.band": claim.tier,
                    "pingvas.claim_reason": claim.reason,
                    "pingvas.queue_wait_seconds": claim.waited_seconds,
                    "pingvas.worker_id": self.worker_id,
                },
            ) as span:
                record = await self.runs.start(claim.user_id, claim.generation_id, self.worker_id)
                if record is None:
                    span.set_attribute("pingvas.skipped", True)
                    log.info("job %s is no longer queued; skipped", claim.generation_id)
                    continue
                span.set_attribute("pingvas.attempt", record.attempt)
            log.info("claimed %s (%s band, %s)", record.id, claim.tier, claim.reason)
            members.append(Member(record, claim))
        return await self._execute(members, stop) if members else []

    async def _keep_lease(self, generation_id: uuid.UUID, on_loss: Callable[[], None] = lambda: None) -> None:
        """Renew a job's lease until cancelled; call `on_loss` once if another worker has it now.
        While Redis is away the renewals fail and the lease may lapse: the job is then
        redelivered, and this attempt's fenced finish is refused."""
        # Untraced: a poll every few seconds is no step of the job, and its spans would only
        # cost CPU.
        with suppress_instrumentation():
            await self._renew_lease(generation_id, on_loss)

    async def _renew_lease(self, generation_id: uuid.UUID, on_loss: Callable[[], None]) -> None:
        while not cancellation_requested():
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                renewed = await self.queue.renew_lease(generation_id, self.worker_id, self.lease_seconds)
            except Exception:
                # A cancel that lands mid-command can also surface as a client error.
                if cancellation_requested():
                    return
                log.warning("renewing the lease on %s failed", generation_id, exc_info=True)
                continue
            if not renewed:
                log.warning("lost the lease on %s", generation_id)
                on_loss()
                return

    async def _watch_cancels(self, batch: BatchRun) -> None:
        """Interrupt the members whose cancel was requested. Polled on its own clock, not after
        each progress event: a progress stream that lags behind a fast GPU (or a busy CPU) must
        not delay a cancel, and one round trip serves the whole batch."""
        # Untraced: twenty polls a second would be most of a traced job's spans.
        with suppress_instrumentation():
            await self._poll_cancels(batch)

    async def _poll_cancels(self, batch: BatchRun) -> None:
        while not cancellation_requested():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            staying = batch.staying
            try:
                requested = await self.queue.cancels_requested([relay.record.id for relay in staying])
            except Exception:
                if cancellation_requested():
                    return
                log.warning("checking for cancels failed; retrying", exc_info=True)
                continue
            for relay in staying:
                if relay.record.id in requested:
                    relay.interrupt(GenerationCancelled)

    async def _hand_back_on_shutdown(self, stop: asyncio.Event, batch: BatchRun) -> None:
        await stop.wait()
        remaining = batch.expected_remaining_seconds()
        jobs = ", ".join(str(relay.record.id) for relay in batch.staying)
        if remaining > self.shutdown_grace_seconds:
            log.info("shutting down: %s needs ~%.0fs more; handing it back", jobs, remaining)
            batch.interrupt_all(HandedBack)
        else:
            log.info("shutting down: finishing %s (~%.1fs left)", jobs, remaining)

    async def _park(self, relay: ProgressRelay, step: int) -> None:
        """Hold a job at the PARK_AFTER_STEP failpoint, its progress so far stored, until the
        test releases it or its run is interrupted."""
        assert self.failpoints is not None
        await relay.flushed()
        log.info("failpoint %s: %s parked after step %d", Failpoint.PARK_AFTER_STEP, relay.record.id, step)
        await self.failpoints.park(Failpoint.PARK_AFTER_STEP, str(relay.record.id), step, relay.interrupted)
        log.info("failpoint %s: %s released", Failpoint.PARK_AFTER_STEP, relay.record.id)

    async def _park_in_store(
        self, failpoint: Failpoint, record: GenerationRecord, lease_lost: asyncio.Event
    ) -> None:
        """Hold a job at one of the store's failpoints, when a test armed it for this prompt."""
        if self.failpoints is None or not await self.failpoints.parks(failpoint, record.prompt):
            return
        log.info("failpoint %s: %s parked", failpoint, record.id)
        await self.failpoints.park(failpoint, str(record.id), 0, lease_lost)
        log.info("failpoint %s: %s released", failpoint, record.id)

    async def _leave(self, relay: ProgressRelay, reason: type[RunInterrupted]) -> None:
        """A member's own end while its batch runs on."""
        await relay.close()
        record = relay.record
        if reason is GenerationCancelled:
            await self.runs.finish_cancelled(record)
            log.info("cancelled %s", record.id)
        else:
            log.warning(
                "abandoned %s attempt %d: its lease went to another worker", record.id, record.attempt
            )

    async def _execute(
        self, members: Sequence[Member], stop: asyncio.Event
    ) -> list[tuple[Member, TextToImageResult]]:
        """Run a batch under its spans: one call serves every member, so its model and denoise
        spans belong to the first member's trace and link to each member's."""
        links = [link for member in members if (link := job_link(member.claim.trace_context))]
        with tracer.start_as_current_span(
            "run batch",
            context=members[0].trace,
            links=links,
            attributes={
                "pingvas.generation_ids": [str(member.record.id) for member in members],
                "pingvas.batch_size": len(members),
            },
        ):
            return await self._execute_batch(members, stop, links)

    async def _execute_batch(
        self, members: Sequence[Member], stop: asyncio.Event, links: Sequence[trace.Link]
    ) -> list[tuple[Member, TextToImageResult]]:
        readable = await self._readable(members)
        if not readable:
            return []
        members = [member for member, _ in readable]
        requests = [request for _, request in readable]
        records = [member.record for member in members]
        first = records[0]
        # A batch shares its model, mode, sampler and LoRA set (the batch key), so its first
        # member's say for all.
        total_steps = requests[0].denoising_steps
        log.info(
            "running %s: model %s %dx%d %d steps (%s, %s)",
            _run_labels(records),
            first.model,
            first.width,
            first.height,
            total_steps,
            first.mode,
            first.sampler,
        )
        try:
            model = await self._holding_leases(members, self._ready_model(first))
        except (UnknownModelError, UnknownLoraError) as error:
            missing = Failure.report(
                FailureCode.MODEL_NOT_INSTALLED,
                _run_labels(records),
                f"{error} is not installed on this worker",
                logger=log,
            )
            for record in records:
                await self.runs.finish_failed(record, missing)
            return []
        except (LoraFamilyMismatch, SamplerNotAllowedError) as error:
            # Acceptance refuses these; a catalog changed since can still bring one here.
            refused = Failure.report(
                FailureCode.INFERENCE_FAILED, _run_labels(records), str(error), logger=log
            )
            for record in records:
                await self.runs.finish_failed(record, refused)
            return []
        except ModelDownloadFailed as error:
            undownloadable = Failure.report(
                FailureCode.MODEL_DOWNLOAD_FAILED, _run_labels(records), str(error), logger=log
            )
            await self._requeue(records, undownloadable)
            return []
        except Exception:
            unloadable = Failure.report(
                FailureCode.MODEL_LOAD_FAILED,
                _run_labels(records),
                f"loading model {first.model!r} (LoRAs {first.loras}) failed",
                logger=log,
                exc_info=True,
            )
            await self._requeue(records, unloadable)
            return []
        if len(members) > 1:
            members, requests = await self._one_conditioning_length(model, members, requests)
        relays = [ProgressRelay(self.runs, member.record) for member in members]
        if self.failpoints is not None:
            for relay in relays:
                relay.park_after_steps = await self.failpoints.park_steps(
                    Failpoint.PARK_AFTER_STEP, relay.record.prompt
                )
        batch = BatchRun(
            relays,
            total_steps,
            asyncio.get_running_loop(),
            self._leave,
            park=self._park if self.failpoints is not None else None,
        )
        watchers = [
            *(
                asyncio.create_task(
                    self._keep_lease(
                        member.claim.generation_id, functools.partial(relay.interrupt, LeaseLost)
                    )
                )
                for member, relay in zip(members, relays, strict=True)
            ),
            asyncio.create_task(self._hand_back_on_shutdown(stop, batch)),
            asyncio.create_task(self._watch_cancels(batch)),
        ]
        denoise = tracer.start_span(
            "denoise",
            links=links,
            attributes={
                "pingvas.model": model.info.name,
                "pingvas.mode": str(first.mode),
                "pingvas.sampler": first.sampler,
                "pingvas.steps": total_steps,
                "pingvas.width": first.width,
                "pingvas.height": first.height,
                "pingvas.batch_size": len(members),
            },
        )

        step_events = StepEvents()

        def on_traced_step(batch_step: BatchStep) -> None:
            step_events.note(batch_step.step)
            batch.on_step(batch_step)

        on_step = on_traced_step if denoise.is_recording() else batch.on_step
        started = time.perf_counter()
        try:
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._inference_thread, run_text_to_image_batch, model, requests, on_step
                )
                self.metrics.iterations_per_second.record(
                    total_steps / (time.perf_counter() - started), {"model": model.info.name}
                )
            except Exception as error:
                denoise.record_exception(error)
                denoise.set_status(trace.StatusCode.ERROR, type(error).__name__)
                raise
            finally:
                step_events.add_to(denoise, total_steps)
                denoise.end()
                for watcher in watchers:
                    watcher.cancel()
                # A Redis error a watcher met as it was cancelled is of no interest any more.
                await asyncio.gather(*watchers, return_exceptions=True)
                for relay in relays:
                    await relay.close()
                await batch.settle()
        except EveryMemberLeft:
            return []
        except HandedBack:
            await self._requeue([relay.record for relay in batch.staying], None)
            return []
        except Exception:
            staying = [relay.record for relay in batch.staying]
            crashed = Failure.report(
                FailureCode.INFERENCE_FAILED,
                _run_labels(staying),
                "inference failed",
                logger=log,
                exc_info=True,
            )
            await self._requeue(staying, crashed)
            return []
        return [(member, results[index]) for index, member in enumerate(members) if index not in batch.left]

    async def _one_conditioning_length(
        self, model: LoadedModel, members: Sequence[Member], requests: Sequence[TextToImageRequest]
    ) -> tuple[list[Member], list[TextToImageRequest]]:
        """The members whose prompt conditioning is as long as the first's; the others are handed
        back (no attempt counted) for a later call, since one call pads its members' conditioning
        to the longest and would change their images. Every call runs at least its first member."""
        try:
            lengths = await asyncio.get_running_loop().run_in_executor(
                self._inference_thread, lambda: [conditioning_length(model, request) for request in requests]
            )
        except Exception:
            # The run meets the same error where its failures are handled.
            log.warning(
                "measuring the prompts of %s failed", _run_labels([member.record for member in members])
            )
            return list(members), list(requests)
        kept = [index for index, length in enumerate(lengths) if length == lengths[0]]
        handed_back = [member.record for index, member in enumerate(members) if index not in kept]
        if handed_back:
            log.info(
                "handing back %s: their prompts condition at other lengths than %s's",
                _run_labels(handed_back),
                members[0].record.id,
            )
            await self._requeue(handed_back, None)
        return [members[index] for index in kept], [requests[index] for index in kept]

    async def _readable(self, members: Sequence[Member]) -> list[tuple[Member, TextToImageRequest]]:
        """Each member with its inference request, its input images read from the images bucket.
        A member whose prompt compel cannot read, or whose input image is gone or does not
        decode, fails for good, alone: no retry reads it better, and its batch runs without it.
        One whose images the bucket cannot serve now goes back to the queue."""
        readable = []
        for member in members:
            record = member.record
            try:
                request = await self._request(record)
            except PromptSyntaxError as error:
                unreadable = Failure.report(
                    FailureCode.INFERENCE_FAILED, _run_labels([record]), f"unreadable {error}", logger=log
                )
                await self.runs.finish_failed(record, unreadable)
                continue
            except InputImageUnreadable as error:
                unreadable = Failure.report(
                    FailureCode.INPUT_IMAGE_UNAVAILABLE, _run_labels([record]), str(error), logger=log
                )
                await self.runs.finish_failed(record, unreadable)
                continue
            except ObjectStoreUnavailable as error:
                unavailable = Failure.report(
                    FailureCode.INPUT_IMAGE_UNAVAILABLE, _run_labels([record]), str(error), logger=log
                )
                await self.runs.requeue(record, unavailable)
                continue
            readable.append((member, request))
        return readable

    async def _request(self, record: GenerationRecord) -> TextToImageRequest:
        """The inference request a stored generation asks for."""
        init_image = mask_image = None
        if record.mode is not GenerationMode.TEXT_TO_IMAGE:
            init_image = await self._input_image(record.init_image_key, "init image")
        if record.mode is GenerationMode.INPAINTING:
            mask_image = await self._input_image(record.mask_image_key, "mask")
        return TextToImageRequest(
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            width=record.width,
            height=record.height,
            steps=record.steps,
            seed=record.seed,
            guidance=record.guidance,
            sampler=record.sampler,
            strength=record.strength,
            init_image=init_image,
            mask_image=mask_image,
            loras=record.loras,
            # What GetImage will show for the image, so the PNG carries its recipe.
            recipe=recipe_json(record, record.loras),
        )

    async def _input_image(self, key: str | None, what: str) -> Image.Image:
        """An input image from the images bucket, decoded off the event loop."""
        if key is None:
            raise InputImageUnreadable(f"the generation names no {what} object")
        try:
            data = await self.store.get(key)
        except ObjectMissing:
            raise InputImageUnreadable(f"{what} {key} is not in the images bucket") from None
        try:
            return await asyncio.to_thread(_decoded, data)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise InputImageUnreadable(f"{what} {key} does not decode: {error}") from None

    async def _ready_model(self, record: GenerationRecord) -> LoadedModel:
        """The pipeline a batch like `record` runs on, carrying exactly its LoRAs: the model's
        inpainting variant for inpainting when it has one, else the model itself."""
        name = record.model
        if record.mode is GenerationMode.INPAINTING:
            name = (await self.registry.info(record.model)).inpainting_variant or name
        model = await self.registry.acquire(name)
        if record.sampler not in model.info.samplers:
            raise SamplerNotAllowedError(record.sampler, model.info.family)
        await self.registry.apply_loras(model, record.loras)
        return model

    async def _holding_leases(self, members: Sequence[Member], work: Awaitable[T]) -> T:
        """`work` awaited with the members' leases renewed meanwhile: a model's first use on
        this machine may download it into the cache and load it (a LoRA too), which can take
        far longer than a lease, and the jobs must not be redelivered to workers that would
        only wait for the same download."""
        keeping = [asyncio.create_task(self._keep_lease(member.claim.generation_id)) for member in members]
        try:
            # Cancelled, only this wait ends: the registry's load goes on for its other waiters.
            return await work
        finally:
            for task in keeping:
                task.cancel()
            await asyncio.gather(*keeping, return_exceptions=True)

    async def _requeue(self, records: Sequence[GenerationRecord], failure: Failure | None) -> None:
        """Give the jobs back to the queue; a `failure` counts the attempt towards dead-lettering,
        a hand-back (None) does not."""
        for record in records:
            await self.runs.requeue(record, failure)

    async def _store_results(self, succeeded: Sequence[tuple[Member, TextToImageResult]]) -> None:
        """Encode, store and record a call's images, then end their leases."""
        try:
            await asyncio.gather(*(self._store_result(member, result) for member, result in succeeded))
        except Exception:
            # The leases end below all the same: the reconciler gives the jobs another attempt.
            log.exception(
                "storing the results of %s failed",
                ", ".join(str(member.record.id) for member, _ in succeeded),
            )
        finally:
            for member, _ in succeeded:
                await self.queue.release_lease(member.record.id, self.worker_id)

    async def _store_result(self, member: Member, result: TextToImageResult) -> None:
        """Store and record one image, its job's lease renewed meanwhile: a store that takes
        its time (S3 retrying, a test's failpoint) must not hand the job to another worker."""
        record = member.record
        lease_lost = asyncio.Event()
        keeping = asyncio.create_task(self._keep_lease(record.id, lease_lost.set))
        try:
            with tracer.start_as_current_span(
                "store", context=member.trace, attributes={"pingvas.generation_id": str(record.id)}
            ):
                await self._store_leased_result(record, result, lease_lost)
        finally:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)

    async def _store_leased_result(
        self, record: GenerationRecord, result: TextToImageResult, lease_lost: asyncio.Event
    ) -> None:
        """Store the PNG and its thumbnail, then record the success with its image row: objects
        first, so a row never names a missing object. S3 down fails the attempt (counted toward
        dead-lettering, which releases the hold), never a success without its image. A lost
        lease needs no check here: the fenced finish refuses this attempt's result."""
        began = time.perf_counter()
        png, thumbnail = await asyncio.to_thread(lambda: (result.png, result.thumbnail_webp))
        encoded = time.perf_counter()
        keys = record.image_keys
        await self._park_in_store(Failpoint.PARK_BEFORE_STORE, record, lease_lost)
        try:
            await asyncio.gather(
                self.store.put(keys.png, png, content_type=PNG_CONTENT_TYPE),
                self.store.put(keys.thumbnail, thumbnail, content_type=THUMBNAIL_CONTENT_TYPE),
            )
        except ObjectStoreUnavailable as error:
            unstored = Failure.report(
                FailureCode.IMAGE_STORE_UNAVAILABLE, record.run_label, str(error), logger=log
            )
            await self.runs.requeue(record, unstored)
            return
        image = StoredImage(
            id=record.id,
            user_id=record.user_id,
            object_key=keys.png,
            thumbnail_key=keys.thumbnail,
            size_bytes=len(png),
            thumbnail_size_bytes=len(thumbnail),
            width=result.image.width,
            height=result.image.height,
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            seed=result.seed,
            model=record.model,
            steps=record.steps,
            guidance=record.guidance,
        )
        uploaded = time.perf_counter()
        await self._park_in_store(Failpoint.PARK_BEFORE_RECORD, record, lease_lost)
        if await self.runs.finish_succeeded(record, image, WorkResult(result.seed, result.gpu_seconds)):
            recorded = time.perf_counter()
            self.metrics.gpu_seconds.add(result.gpu_seconds, {"model": record.model})
            # The store's cost per image, off the GPU's path (bench/mesh_overhead.py reads it).
            log.info(
                "succeeded %s in %.2f GPU seconds; stored in %.1f ms "
                "(encode %.1f ms, upload %.1f ms, record %.1f ms)",
                record.id,
                result.gpu_seconds,
                (recorded - began) * 1000,
                (encoded - began) * 1000,
                (uploaded - encoded) * 1000,
                (recorded - uploaded) * 1000,
            )
        else:
            log.warning(
                "result of %s attempt %d discarded: another attempt owns the job", record.id, record.attempt
            )
