"""A generation's events as typed values, one class per kind of `WatchGenerationResponse`.

The contract's order: `Queued` (again when the queue position changes, with the same
`sequence`), `Started`, one `Progress` per denoising step, then exactly one terminal event
(`Succeeded`, `Failed` or `Cancelled`). Match on the class:

    for event in client.generations.watch(generation_id):
        match event:
            case pingvas.Progress(step=step, total_steps=total):
                print(f"{step}/{total}")
            case pingvas.Succeeded(image_url=url):
                print(url)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pingvas.generation.v1 import generation_service_pb2


@dataclass(frozen=True)
class Event:
    """What every event carries: its place in the generation's log (from 1), the generation's
    id, and when it happened."""

    sequence: int
    generation_id: str
    time: datetime

    @property
    def is_terminal(self) -> bool:
        """Whether this event ends the generation (and its watch)."""
        return False


@dataclass(frozen=True)
class Queued(Event):
    """The generation waits for a worker; `position` is 1 when it is next in line."""

    position: int


@dataclass(frozen=True)
class Started(Event):
    """A worker started the generation; `attempt` is 1 unless a worker was lost before."""

    attempt: int


@dataclass(frozen=True)
class Progress(Event):
    """A denoising step finished; `preview` is a small JPEG of the current latents."""

    step: int
    total_steps: int
    preview: bytes
    preview_mime_type: str


@dataclass(frozen=True)
class Succeeded(Event):
    """Terminal: the image is stored; `image_url` is a presigned URL of the PNG."""

    image_url: str
    thumbnail_url: str
    seed: int
    gpu_seconds: float
    credits_charged: int

    @property
    def is_terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class Failed(Event):
    """Terminal: the generation failed; `code` is stable (e.g. INFERENCE_FAILED), `reason` is
    for people and ends with `incident_id`. Nothing was charged."""

    reason: str
    code: str
    incident_id: str

    @property
    def is_terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class Cancelled(Event):
    """Terminal: the generation was cancelled; `was_running` says whether a worker had it."""

    was_running: bool

    @property
    def is_terminal(self) -> bool:
        return True


def event_from_response(response: generation_service_pb2.WatchGenerationResponse) -> Event:
    """The typed event one `WatchGenerationResponse` carries."""
    common = Event(
        sequence=response.sequence,
        generation_id=response.generation_id,
        time=response.time.ToDatetime(tzinfo=timezone.utc),
    )
    kind = response.WhichOneof("event")
    if kind == "queued":
        return Queued(**vars(common), position=response.queued.position)
    if kind == "started":
        return Started(**vars(common), attempt=response.started.attempt)
    if kind == "progress":
        progress = response.progress
        return Progress(
            **vars(common),
            step=progress.step,
            total_steps=progress.total_steps,
            preview=progress.preview,
            preview_mime_type=progress.preview_mime_type,
        )
    if kind == "succeeded":
        succeeded = response.succeeded
        return Succeeded(
            **vars(common),
            image_url=succeeded.image_url,
            thumbnail_url=succeeded.thumbnail_url,
            seed=succeeded.seed,
            gpu_seconds=succeeded.gpu_seconds,
            credits_charged=succeeded.credits_charged,
        )
    if kind == "failed":
        failed = response.failed
        return Failed(**vars(common), reason=failed.reason, code=failed.code, incident_id=failed.incident_id)
    if kind == "cancelled":
        return Cancelled(**vars(common), was_running=response.cancelled.was_running)
    # A kind added to the contract after this SDK was built: still ordered, never terminal.
    return common
