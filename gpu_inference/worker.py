"""The GPU worker's job loop: claim a job, run it on a registry pipeline, record the outcome.

The loop never loads weights (the ModelRegistry does) and never imports a servicer: it drives
the same generation domain the service uses, so state changes, fencing and ledger entries have
one implementation.

A run stops early, at a step boundary, for one of three reasons: the user cancelled it, the
worker lost its lease (another worker now owns the job, so this one walks away without a
word), or the worker is shutting down and the job would not finish within the grace budget
(it is handed back to the queue at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid

from gpu_inference.inference import StepUpdate, TextToImageRequest, run_text_to_image
from gpu_inference.registry import ModelRegistry, UnknownModelError
from services.common.storage import ImageStore, image_key
from services.generation.jobs import GenerationJobs, WorkResult
from services.generation.queue import Claim, SchedulingPolicy, TierQueue
from services.generation.repository import GenerationRecord

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """Raised from the step callback to stop a run at a step boundary."""


class GenerationCancelled(RunInterrupted):
    """The user cancelled the generation."""


class LeaseLost(RunInterrupted):
    """The lease lapsed: another worker owns the job now."""


class HandedBack(RunInterrupted):
    """The worker is shutting down and gives the job back to the queue."""


class ProgressRelay:
    """Carries one run's step updates from the inference thread to Redis, without making the
    denoising loop wait on the network.

    The step callback only hands the update over; a task on the event loop appends the progress
    events in order and checks for a cancel request after each one. Any interruption requested
    (cancel, lost lease, hand-back) raises in the callback at the next step boundary, so a run
    stops within one step.
    """

    _DONE = None

    def __init__(
        self,
        jobs: GenerationJobs,
        queue: TierQueue,
        record: GenerationRecord,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.jobs = jobs
        self.queue = queue
        self.record = record
        self.loop = loop
        self.updates: asyncio.Queue[StepUpdate | None] = asyncio.Queue()
        self._interruption: type[RunInterrupted] | None = None
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._steps_done = 0

    def interrupt(self, reason: type[RunInterrupted]) -> None:
        with self._lock:
            self._interruption = self._interruption or reason

    def expected_remaining_seconds(self) -> float:
        """From the pace so far; unknown (infinite) before the first step."""
        if self._steps_done == 0:
            return float("inf")
        elapsed = time.monotonic() - self._started
        return elapsed / self._steps_done * max(0, self.record.steps - self._steps_done)

    def on_step(self, update: StepUpdate) -> None:
        """Runs on the inference thread."""
        with self._lock:
            interruption = self._interruption
        if interruption is not None:
            raise interruption
        self._steps_done = update.step
        self.loop.call_soon_threadsafe(self.updates.put_nowait, update)

    async def run(self) -> None:
        while (update := await self.updates.get()) is not self._DONE:
            await self.jobs.report_progress(self.record, update.step, update.total_steps, update.preview_jpeg)
            if await self.queue.cancel_requested(self.record.id):
                self.interrupt(GenerationCancelled)

    async def drain(self, relay: asyncio.Task[None]) -> None:
        """Wait until every progress event is stored: the terminal event must come after them."""
        self.updates.put_nowait(self._DONE)
        await relay


class Worker:
    def __init__(
        self,
        *,
        worker_id: str,
        jobs: GenerationJobs,
        queue: TierQueue,
        registry: ModelRegistry,
        store: ImageStore,
        policy: SchedulingPolicy,
        lease_seconds: float,
        shutdown_grace_seconds: float,
        idle_wait_seconds: float = 1.0,
    ) -> None:
        self.worker_id = worker_id
        self.jobs = jobs
        self.queue = queue
        self.registry = registry
        self.store = store
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.idle_wait_seconds = idle_wait_seconds
        self._advertised_state: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._advertised_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Pull jobs until `stop` is set (SIGTERM): then no new job is claimed, and the job in
        hand is finished if it fits the grace budget, or handed back."""
        log.info("worker %s pulling jobs", self.worker_id)
        # A finished job's lease ends in the same round trip as the next claim.
        finished: uuid.UUID | None = None
        while not stop.is_set():
            try:
                await self.advertise()
                claim = await self.queue.claim(
                    self.worker_id,
                    self.lease_seconds,
                    self.policy,
                    warm_models=self.registry.loaded(),
                    release=finished,
                )
                finished = None
                if claim is None:
                    await self.queue.wait_for_work(self.idle_wait_seconds)
                    continue
            except Exception:
                # Redis restarting, a dropped connection, a process resumed after a pause: the
                # loop survives it and tries again.
                log.exception("claiming failed; retrying")
                await asyncio.sleep(self.idle_wait_seconds)
                continue
            try:
                await self.run_claim(claim, stop)
            except Exception:
                # PostgreSQL or Redis trouble mid-job: the lease lapses and the job is redelivered.
                log.exception("job %s abandoned", claim.generation_id)
            finally:
                finished = claim.generation_id
        if finished is not None:
            await self.queue.release_lease(finished, self.worker_id)
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
            },
            ttl_seconds=max(10.0, self.idle_wait_seconds * 5),
        )

    async def run_claim(self, claim: Claim, stop: asyncio.Event) -> None:
        """Run one claimed job; the caller ends its lease."""
        record = await self.jobs.start(claim.user_id, claim.generation_id, self.worker_id)
        if record is None:
            log.info("job %s is no longer queued; skipped", claim.generation_id)
            return
        log.info("claimed %s (%s band, %s)", record.id, claim.tier, claim.reason)
        await self._execute(record, claim, stop)

    async def _renew_lease(self, claim: Claim, relay: ProgressRelay) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not await self.queue.renew_lease(claim.generation_id, self.worker_id, self.lease_seconds):
                log.warning("lost the lease on %s; stopping the run", claim.generation_id)
                relay.interrupt(LeaseLost)
                return

    async def _hand_back_on_shutdown(self, stop: asyncio.Event, relay: ProgressRelay) -> None:
        await stop.wait()
        remaining = relay.expected_remaining_seconds()
        if remaining > self.shutdown_grace_seconds:
            log.info("shutting down: %s needs ~%.0fs more; handing it back", relay.record.id, remaining)
            relay.interrupt(HandedBack)
        else:
            log.info("shutting down: finishing %s (~%.1fs left)", relay.record.id, remaining)

    async def _execute(self, record: GenerationRecord, claim: Claim, stop: asyncio.Event) -> None:
        log.info(
            "running %s attempt %d: model %s %dx%d %d steps",
            record.id,
            record.attempt,
            record.model,
            record.width,
            record.height,
            record.steps,
        )
        try:
            model = await self.registry.acquire(record.model)
        except UnknownModelError:
            await self.jobs.finish_failed(
                record, f"model {record.model!r} is not installed on the GPU workers"
            )
            return
        except Exception as error:
            log.exception("loading model %s failed", record.model)
            await self.jobs.requeue(
                record, f"model {record.model!r} could not be loaded: {error}", failed=True
            )
            return
        relay = ProgressRelay(self.jobs, self.queue, record, asyncio.get_running_loop())
        request = TextToImageRequest(
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            width=record.width,
            height=record.height,
            steps=record.steps,
            seed=record.seed,
            guidance=record.guidance,
        )
        publisher = asyncio.create_task(relay.run())
        watchers = [
            asyncio.create_task(self._renew_lease(claim, relay)),
            asyncio.create_task(self._hand_back_on_shutdown(stop, relay)),
        ]
        try:
            try:
                result = await asyncio.to_thread(run_text_to_image, model, request, relay.on_step)
            finally:
                for watcher in watchers:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                await relay.drain(publisher)
        except GenerationCancelled:
            await self.jobs.finish_cancelled(record)
            log.info("cancelled %s", record.id)
            return
        except LeaseLost:
            log.warning(
                "abandoned %s attempt %d: its lease went to another worker", record.id, record.attempt
            )
            return
        except HandedBack:
            await self.jobs.requeue(record, "its worker shut down", failed=False)
            return
        except Exception as error:
            log.exception("inference of %s failed", record.id)
            await self.jobs.requeue(record, f"inference failed: {type(error).__name__}: {error}", failed=True)
            return
        key = image_key(record.user_id, record.id, record.created_at)
        await self.store.put(key, result.png)
        if await self.jobs.finish_succeeded(
            record, key, WorkResult(result.png, result.seed, result.gpu_seconds)
        ):
            log.info("succeeded %s in %.2f GPU seconds", record.id, result.gpu_seconds)
        else:
            log.warning(
                "result of %s attempt %d discarded: another attempt owns the job", record.id, record.attempt
            )
