"""A generation as the contract shows it (the `Generation` resource): what the API returns, and
the `data` of its webhook deliveries."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pingvas.generation.v1 import generation_resources_pb2 as resources

from services.common.storage import ImageUrls
from services.generation.inputs import Upload
from services.generation.repository import GenerationRecord


def _timestamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def generation_to_proto(record: GenerationRecord, urls: ImageUrls | None) -> resources.Generation:
    failure = record.failure
    return resources.Generation(
        name=f"users/{record.user_id}/generations/{record.id}",
        id=str(record.id),
        state=resources.GenerationState.Value(f"GENERATION_STATE_{record.state}"),
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        model=record.model,
        width=record.width,
        height=record.height,
        steps=record.steps,
        seed=record.seed,
        guidance=record.guidance,
        create_time=_timestamp(record.created_at),
        start_time=_timestamp(record.started_at),
        end_time=_timestamp(record.finished_at),
        image_url=urls.image if urls else "",
        thumbnail_url=urls.thumbnail if urls else "",
        image=f"users/{record.user_id}/images/{record.id}" if urls else "",
        gpu_seconds=record.gpu_seconds,
        credits_held=record.credits_held,
        credits_charged=record.credits_charged,
        failure_reason=failure.sentence if failure else "",
        failure_code=failure.code if failure else "",
        incident_id=failure.incident_id if failure else "",
        attempt=record.attempt,
        sampler=record.sampler,
        strength=record.strength,
        init_image_id=record.init_image_id or "",
        mask_image_id=record.mask_image_id or "",
        loras=[resources.LoraWeight(name=lora.name, weight=lora.weight) for lora in record.loras],
        mode=resources.GenerationMode.Value(f"GENERATION_MODE_{record.mode.upper()}"),
    )


def upload_to_proto(upload: Upload) -> resources.Upload:
    return resources.Upload(
        name=f"users/{upload.user_id}/uploads/{upload.id}",
        id=str(upload.id),
        upload_url=upload.url,
        content_type=upload.content_type,
        size_bytes=upload.size_bytes,
        upload_expire_time=_timestamp(upload.url_expires_at),
        expire_time=_timestamp(upload.expires_at),
    )
