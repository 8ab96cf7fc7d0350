"""The GPU worker's job loop: claim a job, run it on a registry pipeline, record the outcome.

The loop never loads weights (the ModelRegistry does) and never imports a servicer: it drives
the same generation domain the service uses, so state changes, fencing and ledger entries have
one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from gpu_inference.inference import StepUpdate, TextToImageRequest, run_text_to_image
from gpu_inference.registry import ModelRegistry, UnknownModelError
from services.common.storage import ImageStore, image_key
from services.generation.jobs import GenerationJobs, WorkResult
from services.generation.queue import Claim, TierQueue
from services.generation.repository import GenerationRecord

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """Raised from the step callback to stop a run whose cancel was requested."""


class ProgressRelay:
    """Carries one run's step updates from the inference thread to Redis, without making the
    denoising loop wait on the network.

    The step callback only hands the update over; a task on the event loop appends the progress
    events in order and checks for a cancel request after each one. A requested cancel raises in
    the callback at the next step boundary, so a run stops within one step.
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
        self.cancel_requested = threading.Event()

    def on_step(self, update: StepUpdate) -> None:
        """Runs on the inference thread."""
        if self.cancel_requested.is_set():
            raise GenerationCancelled
        self.loop.call_soon_threadsafe(self.updates.put_nowait, update)

    async def run(self) -> None:
        while (update := await self.updates.get()) is not self._DONE:
            await self.jobs.report_progress(self.record, update.step, update.total_steps, update.preview_jpeg)
            if await self.queue.cancel_requested(self.record.id):
                self.cancel_requested.set()

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
        lease_seconds: float,
        idle_wait_seconds: float = 1.0,
    ) -> None:
        self.worker_id = worker_id
        self.jobs = jobs
        self.queue = queue
        self.registry = registry
        self.store = store
        self.lease_seconds = lease_seconds
        self.idle_wait_seconds = idle_wait_seconds
        self.busy = False

    async def run(self, stop: asyncio.Event) -> None:
        """Pull jobs until `stop` is set; the job in hand is finished first."""
        log.info("worker %s pulling jobs", self.worker_id)
        while not stop.is_set():
            claim = await self.queue.claim(self.worker_id, self.lease_seconds)
            if claim is None:
                await self.queue.wait_for_work(self.idle_wait_seconds)
                continue
            self.busy = True
            try:
                await self.run_claim(claim)
            except Exception:
                # PostgreSQL or Redis trouble mid-job: the lease lapses and the job is redelivered.
                log.exception("job %s abandoned", claim.generation_id)
            finally:
                self.busy = False
        log.info("worker %s stopped pulling jobs", self.worker_id)

    async def run_claim(self, claim: Claim) -> None:
        try:
            record = await self.jobs.start(claim.user_id, claim.generation_id, self.worker_id)
            if record is None:
                log.info("job %s is no longer queued; skipped", claim.generation_id)
                return
            heartbeat = asyncio.create_task(self._renew_lease(claim))
            try:
                await self._execute(record)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        finally:
            await self.queue.release_lease(claim.generation_id, self.worker_id)

    async def _renew_lease(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not await self.queue.renew_lease(claim.generation_id, self.worker_id, self.lease_seconds):
                log.warning("lost the lease on %s; its result will be fenced out", claim.generation_id)
                return

    async def _execute(self, record: GenerationRecord) -> None:
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
            # A damaged model directory fails every attempt the same way: fail the job, not the worker.
            log.exception("loading model %s failed", record.model)
            await self.jobs.finish_failed(record, f"model {record.model!r} could not be loaded: {error}")
            return
        progress = ProgressRelay(self.jobs, self.queue, record, asyncio.get_running_loop())
        request = TextToImageRequest(
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            width=record.width,
            height=record.height,
            steps=record.steps,
            seed=record.seed,
            guidance=record.guidance,
        )
        relay = asyncio.create_task(progress.run())
        try:
            try:
                result = await asyncio.to_thread(run_text_to_image, model, request, progress.on_step)
            finally:
                await progress.drain(relay)
        except GenerationCancelled:
            await self.jobs.finish_cancelled(record)
            log.info("cancelled %s", record.id)
            return
        except Exception as error:
            log.exception("inference of %s failed", record.id)
            await self.jobs.finish_failed(record, f"inference failed: {type(error).__name__}: {error}")
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
